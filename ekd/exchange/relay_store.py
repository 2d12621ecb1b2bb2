"""The relay's durable message store (SQLAlchemy Core; SQLite or PostgreSQL).

Why it looks like this (TRANSFER.md, "Exactly-once"): the relay answers `202 stored` only after
the message is committed, so a sender may forget it from then on, and a relay killed at any
moment loses nothing. Message ids are unique under the *sender's* URA (as HL7v3 message ids on
the national switch point are), so `(sender, message_id)` is unique and a resend is recognised
by it. Delivery is at-least-once: rows are claimed with a lease (`claimed_until`), so two relay
workers never deliver one message at the same time and a crashed worker's claim simply runs
out; receivers deduplicate.

The tables have their own MetaData and the prefix `relay_`, created with `create_all` at start:
the relay has no ekd FHIR database and may share a PostgreSQL database with an ekd without
touching its (Alembic-managed) schema.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

#: One row per message (package or receipt) passing through the relay.
messages = Table(
    "relay_message", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("sender", String(8), nullable=False),
    Column("message_id", String(36), nullable=False),
    Column("recipient", String(8), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("transfer", String(36), nullable=False),
    Column("body", Text, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # stored | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("answer", Text),  # the recipient's JSON answer (delivered, or a permanent refusal)
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("claimed_until", Float),
    Column("claimed_by", String(32)),
    Column("finished_at", Float),
    UniqueConstraint("sender", "message_id", name="relay_message_sender_id"),
    Index("relay_message_due", "status", "next_attempt_at"),
)

STORED, DELIVERED, FAILED = "stored", "delivered", "failed"
KINDS = ("package", "receipt")
#: Receipt message ids are derived from the package they answer (uuid5), so a package that is
#: delivered twice still produces one receipt message.
RECEIPT_NAMESPACE = uuid.UUID("6f1d2f0e-4d51-5a7c-9c1e-0e6b7a3c2d11")


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def receipt_id(sender: str, message_id: str) -> str:
    """The id of the receipt message for package `message_id` of `sender`. The sender's URA
    is part of the name because message ids are only unique per sender."""
    return str(uuid.uuid5(RECEIPT_NAMESPACE, f"{sender}/{message_id}"))


class IdConflict(Exception):
    """The sender used this message id before, for another message (TRANSFER.md: same id
    with another payload → 422)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    hash: str
    created: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message; `body` is only loaded for delivery."""

    seq: int
    sender: str
    id: str
    recipient: str
    kind: str
    transfer: str
    hash: str
    status: str
    attempts: int
    last_error: str | None
    answer: Any
    body: str | None = None

    def status_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "attempts": self.attempts,
                "last_error": self.last_error, "answer": self.answer}


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender: str
    id: str
    recipient: str
    kind: str
    transfer: str
    body: str


_SUMMARY = [messages.c.seq, messages.c.sender, messages.c.message_id, messages.c.recipient,
            messages.c.kind, messages.c.transfer, messages.c.hash, messages.c.status,
            messages.c.attempts, messages.c.last_error, messages.c.answer]


def _message(row: Any, body: str | None = None) -> Message:
    return Message(seq=row.seq, sender=row.sender, id=row.message_id, recipient=row.recipient,
                   kind=row.kind, transfer=row.transfer, hash=row.hash, status=row.status,
                   attempts=row.attempts, last_error=row.last_error,
                   answer=json.loads(row.answer) if row.answer is not None else None,
                   body=body)


def _engine(url: str) -> Engine:
    """SQLite in WAL mode with full fsync (a 202 must survive a power cut) and a generous busy
    timeout (several relay processes may share the file); PostgreSQL as is."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class RelayStore:
    """Messages by (sender URA, message id), with claiming for delivery workers."""

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        self.dialect = self.engine.dialect.name
        metadata.create_all(self.engine)

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise when the database does not answer (the relay's health check)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    # --- accepting --------------------------------------------------------------------------

    def accept(self, message: NewMessage) -> Accepted:
        """Store a message (committed when this returns). The same message again returns the
        first acceptance (`created=False`); the same id with anything else differing raises
        `IdConflict`."""
        digest = body_hash(message.body)
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(messages).values(
                    sender=message.sender, message_id=message.id, recipient=message.recipient,
                    kind=message.kind, transfer=message.transfer, body=message.body,
                    hash=digest, status=STORED, attempts=0, created_at=now,
                    next_attempt_at=now))
            return Accepted(message.id, digest, created=True)
        except IntegrityError:
            pass
        existing = self.get(message.sender, message.id)
        if existing is None:  # pragma: no cover - a unique violation implies the row exists
            raise IdConflict("The message id cannot be stored")
        same = (existing.hash, existing.recipient, existing.kind, existing.transfer) == (
            digest, message.recipient, message.kind, message.transfer)
        if not same:
            raise IdConflict(f"Message id {message.id} was used before for another message")
        return Accepted(existing.id, existing.hash, created=False)

    def get(self, sender: str, message_id: str) -> Message | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_SUMMARY).where(
                messages.c.sender == sender, messages.c.message_id == message_id)).first()
        return _message(row) if row is not None else None

    # --- delivery ---------------------------------------------------------------------------

    def claim_due(self, worker: str, *, lease: float, limit: int,
                  now: float | None = None) -> list[Message]:
        """Claim up to `limit` messages that are due and not claimed by a live lease, for
        `lease` seconds. One statement (`UPDATE … WHERE seq IN (SELECT …) RETURNING`): on
        PostgreSQL the sub-select takes `FOR UPDATE SKIP LOCKED`, so concurrent workers pass
        each other's rows by; SQLite runs the statement under its single write lock."""
        moment = time.time() if now is None else now
        due = (select(messages.c.seq)
               .where(messages.c.status == STORED, messages.c.next_attempt_at <= moment,
                      (messages.c.claimed_until.is_(None))
                      | (messages.c.claimed_until < moment))
               .order_by(messages.c.next_attempt_at, messages.c.seq)
               .limit(limit))
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        statement = (update(messages).where(messages.c.seq.in_(due.scalar_subquery()))
                     .values(claimed_until=moment + lease, claimed_by=worker)
                     .returning(*_SUMMARY, messages.c.body))
        with self.engine.begin() as conn:
            rows = conn.execute(statement).all()
        return sorted((_message(row, row.body) for row in rows), key=lambda m: m.seq)

    def _finish(self, message: Message, worker: str, values: dict[str, Any],
                receipt: NewMessage | None = None) -> bool:
        """Record the outcome of an attempt, only if this worker still holds the claim (a
        worker whose lease ran out must not overwrite its successor's result)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(messages)
                .where(messages.c.seq == message.seq, messages.c.claimed_by == worker,
                       messages.c.status == STORED)
                .values(claimed_until=None, claimed_by=None, **values))
            if result.rowcount != 1:
                return False
            if receipt is not None:
                self._insert_if_absent(conn, receipt)
        return True

    def _insert_if_absent(self, conn: Any, message: NewMessage) -> None:
        """INSERT … ON CONFLICT DO NOTHING (both dialects have it): a receipt created twice,
        even by two workers at once, is one row and no error."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        now = time.time()
        conn.execute(dialect_insert(messages).values(
            sender=message.sender, message_id=message.id, recipient=message.recipient,
            kind=message.kind, transfer=message.transfer, body=message.body,
            hash=body_hash(message.body), status=STORED, attempts=0, created_at=now,
            next_attempt_at=now).on_conflict_do_nothing(
                index_elements=["sender", "message_id"]))

    def delivered(self, message: Message, worker: str, answer: Any,
                  receipt: NewMessage | None = None) -> bool:
        """Delivered; with the receipt message to forward, created in the same transaction
        (so a crash cannot deliver the package and lose its receipt)."""
        now = time.time()
        return self._finish(message, worker, {
            "status": DELIVERED, "attempts": message.attempts + 1, "last_error": None,
            "answer": _dump(answer), "finished_at": now}, receipt)

    def retry_later(self, message: Message, worker: str, error: str, at: float) -> bool:
        return self._finish(message, worker, {
            "attempts": message.attempts + 1, "last_error": error, "next_attempt_at": at})

    def failed(self, message: Message, worker: str, error: str, answer: Any = None) -> bool:
        return self._finish(message, worker, {
            "status": FAILED, "attempts": message.attempts + 1, "last_error": error,
            "answer": _dump(answer), "finished_at": time.time()})


def _dump(answer: Any) -> str | None:
    return None if answer is None else json.dumps(answer, separators=(",", ":"))
