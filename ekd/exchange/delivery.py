"""The relay's push worker: delivers stored messages to the recipient's ekd over mutual TLS.

Why push with retries (TRANSFER.md, "Exactly-once"): the national switch point forwards a
message and keeps trying until the receiver acknowledges that it stored it safely. That
acknowledgement (200/201/202) ends the relay's responsibility; a busy or briefly broken receiver
(409 "still processing", 429, 5xx, connection errors) is tried again with exponential backoff;
any other refusal (4xx) will not change by resending and fails at once. Delivery is
at-least-once: a relay that dies after the receiver stored the message but before the relay
recorded it delivers it again, and the receiver's inbox deduplicates on (sender, id).

The relay connects with its own organisation certificate and only sends after the TLS peer has
proven to be the recipient: its chain must pass `Trust.verify` (CRL, fail closed) and its leaf
must be the certificate the signed directory lists for the recipient (`channels.pin_peer`).
The relay never decrypts anything: the body is forwarded byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes

from ekd.exchange.channels import PeerMismatch, pin_peer
from ekd.exchange.directory import DirectoryEntry, DirectoryError, DirectoryView
from ekd.exchange.relay_store import Message, NewMessage, RelayStore, receipt_id
from ekd.exchange.trust import Trust

log = logging.getLogger("ekd.exchange.relay")

#: Seconds a delivery connection pool is used before a fresh one (with fresh peer checks).
CLIENT_MAX_AGE = 60.0

#: Largest answer read from a recipient (an acknowledgement with a signed receipt: a few kB).
MAX_ANSWER = 1024 * 1024
DELIVERED_STATUSES = frozenset({200, 201, 202})
#: Compact JWS/JWE: base64url segments separated by dots (what a receipt must look like).
COMPACT = re.compile(r"[A-Za-z0-9_-]*+(?:\.[A-Za-z0-9_-]*+){2,4}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: `base * 2**(n-1)` seconds after the n-th failed attempt, at most
    `cap`; the message fails after `max_attempts` attempts. A receiver's Retry-After is
    honoured up to `cap`."""

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int = 20

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.max_attempts < 1:
            raise ValueError("retry: need 0 < base <= cap and max_attempts >= 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.cap, self.base * 2 ** min(attempt - 1, 62))
        if retry_after is not None:
            wait = min(self.cap, max(wait, retry_after))
        return wait


def _epoch() -> int:
    return int(time.monotonic() // CLIENT_MAX_AGE)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _answer(raw: bytes) -> Any:
    """The recipient's JSON answer, or None when it sent none (or not JSON)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class Deliverer:
    """Claims due messages from the store and pushes them to their recipients."""

    def __init__(self, store: RelayStore, directory: Callable[[], DirectoryView], trust: Trust,
                 context: ssl.SSLContext, *, retry: RetryPolicy | None = None,
                 lease: float = 120.0, timeout: float = 30.0, concurrency: int = 4) -> None:
        """`context`: a client context with the relay's certificate (`channels.client_context`).
        `lease` must exceed `timeout` comfortably: a claim that runs out while the delivery is
        still going lets another worker send the same message concurrently."""
        if lease <= timeout:
            raise ValueError("The claim lease must be longer than the delivery timeout")
        self.store = store
        self.directory = directory
        self.trust = trust
        self.context = context
        self.retry = retry or RetryPolicy()
        self.lease = lease
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.worker = uuid.uuid4().hex
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="relay-delivery")
        self._clients: dict[tuple[str, str, bytes, int], httpx.Client] = {}
        self._clients_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._drop_clients(keep=None)

    # --- connections ------------------------------------------------------------------------

    def _client(self, recipient: DirectoryEntry) -> httpx.Client:
        """A connection pool per (recipient, inbox, certificate), so that deliveries reuse TLS
        connections: the peer check (`pin_peer`) runs when a connection opens, so a pool never
        serves another peer. Pools are renewed every `CLIENT_MAX_AGE` seconds, so a revoked
        certificate is refused within that time even on a busy connection."""
        key = (recipient.ura, recipient.inbox,
               recipient.certificate.fingerprint(hashes.SHA256()), _epoch())
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = httpx.Client(
                    verify=self.context, timeout=self.timeout, trust_env=False)
            return client

    def _drop_clients(self, keep: int | None) -> None:
        """Close the pools of earlier epochs (all with `keep=None`). Called between rounds,
        when no delivery is using them."""
        with self._clients_lock:
            old = [k for k in self._clients if k[3] != keep]
            clients = [self._clients.pop(k) for k in old]
        for client in clients:
            client.close()

    # --- loop -------------------------------------------------------------------------------

    def deliver_once(self) -> int:
        """One round: claim what is due (up to `concurrency` messages), deliver them in
        parallel, return how many were attempted."""
        self._drop_clients(keep=_epoch())
        claimed = self.store.claim_due(self.worker, lease=self.lease, limit=self.concurrency)
        list(self._pool.map(self._attempt, claimed))
        return len(claimed)

    def run(self, stop: threading.Event, wake: threading.Event, poll: float = 1.0) -> None:
        """Deliver until `stop` is set; sleep `poll` seconds when nothing is due, or until
        `wake` is set (a new message was stored)."""
        while not stop.is_set():
            try:
                busy = self.deliver_once()
            except Exception:  # a database hiccup must not end delivery for good
                log.exception("relay delivery round failed; trying again")
                busy = 0
            if not busy:
                wake.wait(poll)
                wake.clear()

    # --- one message ------------------------------------------------------------------------

    def _attempt(self, message: Message) -> None:
        try:
            self.deliver(message)
        except Exception as exc:  # never leave a claim behind because of a bug
            log.exception("delivery of message %s failed unexpectedly", message.id)
            self._retry(message, f"relay error: {type(exc).__name__}")

    def deliver(self, message: Message) -> None:
        """POST the body to the recipient's inbox and record the outcome."""
        try:
            recipient = self.directory().entry(message.recipient)
        except DirectoryError as exc:
            self._retry(message, str(exc))
            return
        headers = {
            "Content-Type": "application/jose",
            "Ekd-Sender-Ura": message.sender,
            "Ekd-Message-Id": message.id,
            "Ekd-Kind": message.kind,
            "Ekd-Transfer-Id": message.transfer,
        }
        assert message.body is not None
        try:
            with self._client(recipient).stream(
                    "POST", recipient.inbox, content=message.body.encode("utf-8"),
                    headers=headers,
                    extensions=pin_peer(self.trust, recipient.certificate)) as response:
                raw = b""
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_ANSWER:
                        raise _AnswerTooLarge()
                status = response.status_code
                retry_after = _retry_after(response.headers.get("retry-after"))
        except PeerMismatch as exc:
            self._retry(message, f"recipient not verified: {exc}")
            return
        except _AnswerTooLarge:
            self._retry(message, "the recipient's answer is too large")
            return
        except httpx.HTTPError as exc:
            self._retry(message, _short(f"connection failed: {type(exc).__name__}: {exc}"))
            return
        answer = _answer(raw)
        if status in DELIVERED_STATUSES:
            receipt = self._receipt(message, answer)
            self.store.delivered(message, self.worker, answer, receipt)
            log.info("delivered %s %s from %s to %s (HTTP %s)%s", message.kind, message.id,
                     message.sender, message.recipient, status,
                     f"; receipt {receipt.id} queued" if receipt else "")
        elif status in (409, 429) or status >= 500:
            self._retry(message, f"HTTP {status}{_code(answer)}", retry_after)
        else:
            self.store.failed(message, self.worker, f"HTTP {status}{_code(answer)}", answer)
            log.warning("message %s refused by %s: HTTP %s", message.id, message.recipient,
                        status)

    def _receipt(self, message: Message, answer: Any) -> NewMessage | None:
        """A package's answer carrying a `receipt` becomes a message back to the sender, with
        an id derived from the package's (so it is created once however often the package
        is delivered)."""
        if message.kind != "package" or not isinstance(answer, dict):
            return None
        receipt = answer.get("receipt")
        if not isinstance(receipt, str) or not COMPACT.fullmatch(receipt):
            if receipt is not None:
                log.warning("answer to %s has a receipt that is not a compact JOSE string",
                            message.id)
            return None
        return NewMessage(sender=message.recipient, id=receipt_id(message.sender, message.id),
                          recipient=message.sender, kind="receipt", transfer=message.transfer,
                          body=receipt)

    def _retry(self, message: Message, error: str, retry_after: float | None = None) -> None:
        attempt = message.attempts + 1
        if attempt >= self.retry.max_attempts:
            self.store.failed(message, self.worker,
                              f"{error} (gave up after {attempt} attempts)")
            log.warning("message %s to %s failed after %s attempts: %s", message.id,
                        message.recipient, attempt, error)
            return
        wait = self.retry.delay(attempt, retry_after)
        self.store.retry_later(message, self.worker, error, time.time() + wait)
        log.info("message %s to %s: %s; retry in %.2f s", message.id, message.recipient,
                 error, wait)


class _AnswerTooLarge(Exception):
    pass


def _code(answer: Any) -> str:
    """The recipient's error code, if its answer has one (`{"error": "..."}`)."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return f" ({_short(answer['error'], 80)})"
    return ""
