"""What arrives from the relay: packages for this organisation, and receipts for its transfers.

Packages (TRANSFER.md, "Exactly-once"): the inbox row is unique on (organisation, sender,
transfer id) and holds the payload's SHA-256. The signed technical receipt ("stored safely")
is made and committed with the row, so it is only ever given out for a package that is on
disk. A later delivery of the same transfer:

- same payload, already processed: the stored receipt again (no second import);
- same payload, not processed yet: 409, "still processing" (the relay retries later);
- another payload under the same transfer id: 422.

The sender's identity at this point is what the relay vouches for (it authenticated the sender
by mutual TLS); the importer checks later that the signature and the envelope say the same.

Receipts: verified against the trusted root and CRL, from the organisation the transfer went
to, about the exact package sent (hash); only then does the transfer move on.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from ekd.errors import Conflict, InvalidRequest, Unprocessable
from ekd.interaction.base import Services
from ekd.jgz import CANONICAL
from ekd.store.resources import instant, now
from ekd.store.schema import transfer_inbox, transfer_outbox
from ekd.transfer import failpoints, seal, sender
from ekd.transfer.context import Exchange
from ekd.transfer.states import FINAL, IllegalTransition, State


@dataclass(frozen=True, slots=True)
class Delivery:
    sender: str
    message_id: str
    kind: str
    transfer_id: str
    body: bytes


def payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def receipt_claims(*, kind: str, transfer_id: str, sender_ura: str, recipient: str,
                   digest: str, status: str, problems: list[dict] | None = None) -> dict:
    claims = {"kind": kind, "transfer": transfer_id, "sender": sender_ura,
              "recipient": recipient, "hash": digest, "status": status,
              "time": instant(now())}
    if problems:
        claims["problems"] = problems
    return claims


def accept_package(services: Services, exchange: Exchange, delivery: Delivery) -> str:
    """Store a delivered package; the signed technical receipt (compact JWS)."""
    digest = payload_hash(delivery.body)
    with services.db.write() as conn:
        existing = _find(conn, exchange.ura, delivery)
        if existing is not None:
            return _again(existing, digest)
        technical = seal.sign_receipt(receipt_claims(
            kind="technical", transfer_id=delivery.transfer_id, sender_ura=delivery.sender,
            recipient=exchange.ura, digest=digest, status="received"), exchange.creds)
        try:
            with conn.begin_nested():
                conn.execute(insert(transfer_inbox).values(
                    org=exchange.ura, sender=delivery.sender, transfer_id=delivery.transfer_id,
                    payload_hash=digest, body=delivery.body.decode("ascii"), state="received",
                    received=now(), technical_receipt=technical))
            failpoints.hit("receiver-before-stored")
            exchange.work_queued(conn)
        except IntegrityError:
            # A concurrent delivery of the same transfer got in first (PostgreSQL waited for
            # its commit): that one is being processed.
            raise Conflict("This transfer is being received already; retry later") from None
    return technical


def _find(conn: Connection, org: str, delivery: Delivery) -> dict | None:
    row = conn.execute(select(transfer_inbox).where(
        transfer_inbox.c.org == org, transfer_inbox.c.sender == delivery.sender,
        transfer_inbox.c.transfer_id == delivery.transfer_id)).mappings().first()
    return dict(row) if row is not None else None


def _again(existing: dict, digest: str) -> str:
    if existing["payload_hash"] != digest:
        raise Unprocessable("A different package was received earlier under this transfer id",
                            expression="transfer")
    if existing["state"] == "received":
        raise Conflict("This transfer is still being processed; retry later")
    return str(existing["technical_receipt"])


def check_delivery(delivery: Delivery) -> None:
    """What can be told before storing: the shape of the routing facts and the size."""
    if delivery.kind not in ("package", "receipt"):
        raise InvalidRequest("Ekd-Kind must be package or receipt", expression="Ekd-Kind")
    if not (len(delivery.sender) == 8 and delivery.sender.isdigit()):
        raise InvalidRequest("Ekd-Sender-Ura is missing or not a URA", expression="Ekd-Sender-Ura")
    try:
        uuid.UUID(delivery.transfer_id)
    except ValueError:
        raise InvalidRequest("Ekd-Transfer-Id is not a UUID", expression="Ekd-Transfer-Id") \
            from None
    if delivery.body.count(b".") != (4 if delivery.kind == "package" else 2) \
            or not delivery.body.isascii():
        raise InvalidRequest("The body is not a compact JWE/JWS", expression="body")


def apply_receipt(services: Services, exchange: Exchange, delivery: Delivery) -> None:
    """A receipt for one of our transfers: verify, then move the transfer on."""
    try:
        claims, signer = seal.verify_receipt(delivery.body.decode("ascii"), exchange.trust)
    except seal.SealError as exc:
        raise Unprocessable(f"Receipt not accepted: {exc}", expression="body") from None
    with services.db.write() as conn:
        row = sender.load(conn, str(claims.get("transfer")))
        if row is None or row["org"] != exchange.ura:
            raise Unprocessable("The receipt is about no transfer of ours",
                                expression="transfer")
        if signer != row["recipient"] or signer != delivery.sender \
                or claims.get("recipient") != signer or claims.get("sender") != exchange.ura:
            raise Unprocessable("The receipt is not signed by the recipient of the transfer",
                                expression="signature")
        if claims.get("hash") != row["package_hash"]:
            if claims.get("kind") == "application" and claims.get("status") == "rejected":
                # Authentic news (the recipient signed it) that what arrived under our
                # transfer id is not what we sent: altered in transit. Nothing was imported.
                claims = {**claims, "problems": [{
                    "code": "payload-mismatch", "message": "The recipient received another "
                    "payload than was sent under this transfer id (altered in transit)"},
                    *(claims.get("problems") or [])]}
            else:
                raise Unprocessable("The receipt is about another package", expression="hash")
        _record_receipt(services, conn, row, claims, delivery.body.decode("ascii"))


def _record_receipt(services: Services, conn: Connection, row: dict, claims: dict, token: str
                    ) -> None:
    kind, status = claims.get("kind"), claims.get("status")
    if State(row["state"]) in FINAL:
        return  # a duplicate, or an application receipt that overtook the technical one
    if State(row["state"]) in (State.QUEUED, State.FAILED_RETRYABLE):
        # We crashed between the relay storing the package and our commit of `sent`: the
        # signed receipt proves it went. Record that, and stop resending.
        row = sender.move(conn, row, State.SENT)
        conn.execute(update(transfer_outbox).where(
            transfer_outbox.c.transfer_id == row["id"], transfer_outbox.c.kind == "package",
            transfer_outbox.c.org == row["org"]).values(state="sent", claimed_until=None))
    try:
        if kind == "technical":
            if row["state"] == State.SENT:
                sender.move(conn, row, State.ACCEPTED, technical_receipt=token)
            return
        if kind != "application":
            return
        if status == "imported":
            moved = sender.move(conn, row, State.IMPORTED, application_receipt=token)
            mark_transferred(services, conn, row)
            sender.audit(conn, sender.worker_principal(row["org"]), moved, status=200,
                         action="E", step="transfer-imported")
        elif status == "rejected":
            moved = sender.move(conn, row, State.REJECTED, application_receipt=token,
                                problems=claims.get("problems") or [])
            sender.audit(conn, sender.worker_principal(row["org"]), moved, status=422,
                         action="E", step="transfer-rejected",
                         description=_first_message(claims))
        elif status == "review" and row["state"] == State.SENT:
            # Manual review at the receiver: delivered and stored, not imported yet.
            sender.move(conn, row, State.ACCEPTED, application_receipt=token,
                        problems=claims.get("problems") or [])
    except IllegalTransition:
        # Not applicable in the state the transfer is in right now: the relay tries again.
        raise Conflict("The transfer cannot take this receipt yet; retry later") from None


#: The sender keeps its copy of the dossier; its Patient carries this tag once another
#: organisation has imported it (`Patient?_tag=<system>|transferred`).
TRANSFERRED_TAG = {"system": f"{CANONICAL}/CodeSystem/transfer-status", "code": "transferred",
                   "display": "Dossier overgedragen"}


def mark_transferred(services: Services, conn: Connection, row: dict) -> None:
    store = services.store(conn, row["org"])
    patient = store.current("Patient", row["patient_id"], lock=True)
    if patient is None or patient.deleted or patient.content is None:
        return
    meta = dict(patient.content.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if any(t.get("system") == TRANSFERRED_TAG["system"] and t.get("code") == "transferred"
           for t in tags):
        return
    meta["tag"] = [*tags, dict(TRANSFERRED_TAG)]
    store.update(patient, {**patient.content, "meta": meta})


def _first_message(claims: dict) -> str | None:
    problems = claims.get("problems") or []
    return str(problems[0].get("message")) if problems and isinstance(problems[0], dict) \
        else None


def receive(services: Services, exchange: Exchange, delivery: Delivery) -> dict:
    """The inbox endpoint's work: the JSON answer for the relay."""
    check_delivery(delivery)
    if delivery.kind == "package":
        return {"receipt": accept_package(services, exchange, delivery)}
    apply_receipt(services, exchange, delivery)
    return {"status": "applied"}

