"""This organisation's place in the exchange: its identity, whom it trusts, the directory and
the relay. Built once from the settings (`EKD_EXCHANGE_*`); transfer is off without them.

The directory is trusted because its entries are signed by the directory's key, which ekd is
configured with; the network that brings them (the relay) is not trusted for their content.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from sqlalchemy import Connection

from ekd.config import Settings
from ekd.errors import Forbidden, NotSupported
from ekd.exchange.channels import PeerMismatch, client_context, pin_peer
from ekd.exchange.directory import DirectoryEntry, DirectoryError, DirectoryView, fetch_directory
from ekd.exchange.trust import Credentials, Trust
from ekd.store.database import after_commit

#: How long fetched directory entries are used before they are fetched again (seconds).
DIRECTORY_TTL = 60.0


class RelayUnavailable(RuntimeError):
    """The relay could not take the message now (network, 5xx, 409, 429): try again later."""


class RelayRefused(RuntimeError):
    """The relay refused the message for good (4xx): retrying the same bytes cannot help."""


@dataclass
class Exchange:
    settings: Settings
    creds: Credentials
    trust: Trust
    roots: list[x509.Certificate]
    _directory: DirectoryView | None = None
    _fetched: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: httpx.Client | None = None
    #: Set when this process queued work for the transfer worker (a package to send, a
    #: package received), so the worker starts on it now instead of at its next poll.
    work: threading.Event = field(default_factory=threading.Event)

    @property
    def ura(self) -> str:
        return self.creds.ura

    def work_queued(self, conn: Connection) -> None:
        """Wake the worker once `conn`'s transaction has committed: before that, another
        connection could not see the new rows yet (PostgreSQL) and the wake-up would be lost."""
        after_commit(conn, self.work.set)

    @classmethod
    def from_settings(cls, settings: Settings) -> Exchange | None:
        """None when transfer is not configured (a server that only stores dossiers)."""
        s = settings
        if not (s.exchange_cert and s.exchange_key and s.exchange_root and s.exchange_crl):
            return None
        creds = Credentials.load(s.exchange_cert, s.exchange_key, s.exchange_chain or None)
        roots = x509.load_pem_x509_certificates(Path(s.exchange_root).read_bytes())
        return cls(settings=s, creds=creds, trust=Trust(roots, s.exchange_crl), roots=roots)

    # -- directory --------------------------------------------------------------------------

    def directory(self) -> DirectoryView:
        with self._lock:
            if self._directory is None or time.monotonic() - self._fetched > DIRECTORY_TTL:
                self._directory = self._load_directory()
                self._fetched = time.monotonic()
            return self._directory

    def _load_directory(self) -> DirectoryView:
        s = self.settings
        if s.exchange_directory:
            return DirectoryView.from_folder(Path(s.exchange_directory))
        if not s.exchange_directory_key:
            raise NotSupported("No directory is configured (EKD_EXCHANGE_DIRECTORY_KEY)")
        return fetch_directory(s.exchange_relay, Path(s.exchange_directory_key),
                               self._context())

    def _context(self) -> ssl.SSLContext:
        s = self.settings
        return client_context(Path(s.exchange_cert), Path(s.exchange_key),
                              Path(s.exchange_chain) if s.exchange_chain else None,
                              Path(s.exchange_root))

    def recipient(self, ura: str) -> DirectoryEntry:
        """The addressed organisation as the directory (signed) knows it."""
        return self.directory().entry(ura)

    # -- relay ------------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        with self._lock:  # the worker's threads share one client
            if self._client is None:
                # One client (connection pool) for the relay only: the pin below is checked
                # when a connection opens.
                self._client = httpx.Client(verify=self._context(),
                                            timeout=httpx.Timeout(30.0, connect=5.0))
            return self._client

    def post_message(self, message: dict) -> dict:
        """Hand one message to the relay; its answer once it has stored the message."""
        s = self.settings
        if not s.exchange_relay:
            raise RelayUnavailable("No relay is configured (EKD_EXCHANGE_RELAY)")
        try:
            relay = self.recipient(s.exchange_relay_ura)
        except DirectoryError as exc:
            raise RelayUnavailable(f"relay not in the directory: {exc}") from None
        try:
            response = self.client().post(f"{s.exchange_relay}/messages", json=message,
                                          extensions=pin_peer(self.trust, relay.certificate))
        except PeerMismatch as exc:
            raise RelayUnavailable(f"relay not trusted: {exc}") from None
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"relay unreachable: {type(exc).__name__}") from None
        if response.status_code in (409, 429) or response.status_code >= 500:
            raise RelayUnavailable(f"relay answered {response.status_code}")
        if response.status_code >= 400:
            raise RelayRefused(f"relay answered {response.status_code}: "
                               f"{_error_text(response)}")
        try:
            answer = response.json()
        except ValueError:
            raise RelayUnavailable("relay answer is not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def require_sender(self, org: str | None) -> None:
        """Only the organisation whose certificate this server holds can send from it."""
        if org != self.ura:
            raise Forbidden(f"This server transfers dossiers for organisation {self.ura} only")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message") or body.get("error") or "")[:300] \
        if isinstance(body, dict) else ""
