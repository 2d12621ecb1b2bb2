"""Tables of the resource store (SQLAlchemy Core), shared by PostgreSQL and SQLite.

- `resource`: one row per logical resource, pointing at its current version. Small and hot:
  it is what reads, conditional operations and (later) search results join against.
- `resource_version`: every version ever written, content included (JSONB on PostgreSQL, JSON
  text on SQLite). `seq` orders all writes globally, which gives system-level history and
  stable history paging without relying on clock resolution.
- `search_*`: one index table per search parameter type (token, string, date, number,
  quantity, reference, uri, composite). Rows hang off `resource.pk`, describe the current
  version only and are rewritten in the same transaction as the resource, so deleted and
  superseded versions never match.

`org` on `resource`, `resource_version` and index rows is the organisation that holds the
dossier (NULL for the shared conformance resources), so scoped reads and searches need no
join.
The schema is created by Alembic migrations (`ekd/store/migrations`), never by `create_all`
in production code.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

#: BIGINT on PostgreSQL; INTEGER on SQLite so that it aliases the rowid (autoincrement).
PK = BigInteger().with_variant(Integer(), "sqlite")
CONTENT = JSON().with_variant(JSONB(), "postgresql")

resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("org", String(64), nullable=True),
    UniqueConstraint("type", "id", name="uq_resource_type_id"),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("resource_pk", PK, ForeignKey("resource.pk"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    #: The interaction that produced the version: POST, PUT, PATCH or DELETE.
    Column("method", String(8), nullable=False),
    #: NULL for the version written by a delete.
    Column("content", CONTENT, nullable=True),
    Column("org", String(64), nullable=True),
    #: The validation stamp (`ekd.validation.stamp`) the content passed validation under;
    #: NULL when unknown (written without validation, or before migration 0005).
    Column("validated", String(32), nullable=True),
    UniqueConstraint("resource_pk", "version", name="uq_resource_version"),
    Index("ix_resource_version_type_seq", "type", "seq"),
    Index("ix_resource_version_type_id", "type", "id", "version"),
    Index("ix_resource_version_last_updated", "last_updated"),
)

#: Text compared by prefix (`norm >= 'abc' AND norm < 'abc\uffff'`) or as uri prefixes: binary
#: collation on PostgreSQL ("C"), so that ranges follow code points as SQLite's do.
ORDERED_TEXT = String(255).with_variant(String(255, collation="C"), "postgresql")
TIME = DateTime(timezone=True)


def _index_table(name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...]) -> Table:
    """An index table: rows hang off `resource.pk`, one per (parameter, indexed value)."""
    return Table(
        name,
        metadata,
        Column("resource_pk", PK, ForeignKey("resource.pk"), nullable=False),
        Column("type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Column("org", String(64), nullable=True),
        Index(f"ix_{name}_resource", "resource_pk"),
        *(Index(f"ix_{name}_{'_'.join(cols)}", *cols) for cols in indexes),
    )


#: token: Coding, CodeableConcept, Identifier, ContactPoint, code, boolean, id, string-as-code.
#: `text` is the normalised display/text, for `:text`.
search_token = _index_table(
    "search_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("text", ORDERED_TEXT, nullable=True),
    indexes=(("type", "param", "code", "system"),),
)
#: string: `norm` is lower-cased with accents removed (prefix and :contains); `exact` as written.
search_string = _index_table(
    "search_string",
    Column("norm", ORDERED_TEXT, nullable=False),
    Column("exact", String(255), nullable=False),
    indexes=(("type", "param", "norm"),),
)
#: date: every value is the half-open range [low, high) it stands for (a date is a whole day).
search_date = _index_table(
    "search_date",
    Column("low", TIME, nullable=False),
    Column("high", TIME, nullable=False),
    indexes=(("type", "param", "low"), ("type", "param", "high")),
)
search_number = _index_table(
    "search_number",
    Column("value", Float, nullable=False),
    indexes=(("type", "param", "value"),),
)
#: quantity: `canon_*` is the value in the unit ekd compares in (m, g, s, ...), when known.
search_quantity = _index_table(
    "search_quantity",
    Column("system", String(255), nullable=True),
    Column("code", String(64), nullable=True),
    Column("value", Float, nullable=False),
    Column("canon_code", String(64), nullable=True),
    Column("canon_value", Float, nullable=True),
    indexes=(("type", "param", "canon_code", "canon_value"), ("type", "param", "value")),
)
#: reference: `target_type`/`target_id` for relative (and parseable absolute) references,
#: `url` for absolute and canonical ones.
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", String(255), nullable=True),
    indexes=(("target_id", "target_type", "type", "param"), ("type", "param", "url")),
)
search_uri = _index_table(
    "search_uri",
    Column("uri", ORDERED_TEXT, nullable=False),
    indexes=(("type", "param", "uri"),),
)
#: composite: a token first component paired with a second component from the same element.
search_composite = _index_table(
    "search_composite",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("c2_system", String(255), nullable=True),
    Column("c2_code", String(255), nullable=True),
    Column("c2_value", Float, nullable=True),
    Column("c2_low", TIME, nullable=True),
    Column("c2_high", TIME, nullable=True),
    Column("c2_text", ORDERED_TEXT, nullable=True),
    indexes=(("type", "param", "code"),),
)

#: table name -> table, for code that writes or deletes all index rows of a resource.
INDEX_TABLES: dict[str, Table] = {
    t.name: t
    for t in (search_token, search_string, search_date, search_number, search_quantity,
              search_reference, search_uri, search_composite)
}

#: Progress of `ekd reindex` runs, so an interrupted run resumes where it stopped.
reindex_job = Table(
    "reindex_job",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("last_pk", PK, nullable=False),
    Column("total", PK, nullable=False),
    Column("done", Boolean, nullable=False),
    Column("started", TIME, nullable=False),
    Column("finished", TIME, nullable=True),
)

# -- authentication (ekd.security) ------------------------------------------------------------

#: Registered clients (SMART Backend Services): the organisation they act for, the public keys
#: their client assertions are signed with, the scopes and roles they may ask for. A client
#: with `mtls` set is also accepted by organisation certificate (URA in the subjectAltName).
auth_client = Table(
    "auth_client",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("org", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("jwks", CONTENT, nullable=True),
    #: Space-separated SMART scopes the client may be granted.
    Column("scope", String(2000), nullable=False),
    #: Space-separated roles its users may act in.
    Column("roles", String(255), nullable=False),
    Column("mtls", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", TIME, nullable=False),
    Index("ix_auth_client_org", "org"),
)

#: `jti` of client assertions seen, kept until they expire: a replayed assertion is refused.
auth_jti = Table(
    "auth_jti",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires", TIME, nullable=False),
    Index("ix_auth_jti_expires", "expires"),
)

# -- audit (ekd.audit) --------------------------------------------------------------------------

#: NEN 7513 audit records. Append-only: ekd never updates or deletes a row. Each record's
#: `hash` covers its content and the previous record's hash of the same organisation
#: (`prev_hash`), so an edited or removed record breaks the chain (`ekd audit verify`).
audit_event = Table(
    "audit_event",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: The FHIR id of the AuditEvent.
    Column("id", String(64), nullable=False),
    Column("org", String(64), nullable=False),
    Column("recorded", TIME, nullable=False),
    Column("action", String(1), nullable=False),
    Column("subtype", String(64), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("user_id", String(128), nullable=True),
    Column("client_id", String(128), nullable=False),
    Column("content", CONTENT, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("id", name="uq_audit_event_id"),
    Index("ix_audit_event_org_recorded", "org", "recorded"),
    Index("ix_audit_event_org_user", "org", "user_id", "recorded"),
)

#: The patients an audit record is about. The BSN is kept here only (never in the AuditEvent
#: shown over FHIR, never in logs); it is part of the hashed record.
audit_patient = Table(
    "audit_patient",
    metadata,
    Column("audit_pk", PK, ForeignKey("audit_event.pk"), nullable=False),
    Column("org", String(64), nullable=False),
    Column("patient", String(128), nullable=False),
    Column("bsn", String(16), nullable=True),
    Index("ix_audit_patient_org_patient", "org", "patient"),
    Index("ix_audit_patient_audit", "audit_pk"),
)

#: The newest record of each organisation's chain. Appending locks this row, which puts the
#: organisation's records in one order; `ekd audit verify` also checks that no record after
#: the head is missing.
audit_head = Table(
    "audit_head",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("last_pk", PK, nullable=False),
    Column("hash", String(64), nullable=False),
)

# -- dossier transfer (ekd.transfer) ---------------------------------------------------------------

#: One row per dossier transfer this organisation sends: its state machine
#: (`ekd.transfer.states`). The sealed package is kept, so a retry resends identical bytes under
#: the same transfer id.
transfer = Table(
    "transfer",
    metadata,
    Column("id", String(36), primary_key=True),
    #: Sender: this organisation's URA.
    Column("org", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    #: age4 | move | other
    Column("reason", String(16), nullable=False),
    Column("state", String(24), nullable=False),
    Column("job_id", String(36), nullable=True),
    Column("created", TIME, nullable=False),
    Column("updated", TIME, nullable=False),
    #: Who asked (user or client id), for the audit trail of later steps.
    Column("requested_by", String(128), nullable=False),
    #: The JWE as sent to the relay, and the SHA-256 of it (what receipts name).
    Column("package", Text, nullable=True),
    Column("package_hash", String(64), nullable=True),
    Column("resources", Integer, nullable=True),
    Column("technical_receipt", Text, nullable=True),
    Column("application_receipt", Text, nullable=True),
    #: Why it was cancelled, rejected or failed: a list of {code, element?, message}.
    Column("problems", CONTENT, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    #: A worker's lease on a row it is working on (bulk preparation); NULL when free.
    Column("claimed_until", TIME, nullable=True),
    Index("ix_transfer_org_state", "org", "state"),
    Index("ix_transfer_job", "job_id", "state"),
    Index("ix_transfer_patient", "org", "patient_id"),
)

#: Messages waiting to go to the relay, written in the same transaction as the state change
#: that needs them (transactional outbox). Sent at least once; the relay and the receiver
#: deduplicate on `message_id`.
transfer_outbox = Table(
    "transfer_outbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("message_id", String(36), nullable=False),
    #: package | receipt
    Column("kind", String(16), nullable=False),
    Column("transfer_id", String(36), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("body", Text, nullable=False),
    #: pending | sent | failed
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt", TIME, nullable=False),
    Column("claimed_until", TIME, nullable=True),
    Column("last_error", String(2000), nullable=True),
    Column("created", TIME, nullable=False),
    UniqueConstraint("message_id", name="uq_transfer_outbox_message"),
    Index("ix_transfer_outbox_due", "state", "next_attempt"),
)

#: Packages received from other organisations. The unique (org, sender, transfer id) makes a
#: second delivery of the same transfer find the first: same payload hash, the stored receipt;
#: another payload, a refusal. The import and the state change commit together.
transfer_inbox = Table(
    "transfer_inbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("org", String(64), nullable=False),
    Column("sender", String(64), nullable=False),
    Column("transfer_id", String(36), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("body", Text, nullable=False),
    #: received | imported | rejected | review
    Column("state", String(16), nullable=False),
    Column("received", TIME, nullable=False),
    Column("processed", TIME, nullable=True),
    Column("technical_receipt", Text, nullable=False),
    Column("application_receipt", Text, nullable=True),
    Column("problems", CONTENT, nullable=True),
    #: The local Patient id the dossier was imported into.
    Column("patient_id", String(64), nullable=True),
    Column("claimed_until", TIME, nullable=True),
    UniqueConstraint("org", "sender", "transfer_id", name="uq_transfer_inbox_transfer"),
    Index("ix_transfer_inbox_state", "org", "state"),
)

#: Which local resource each imported resource became, per sending organisation: a second
#: transfer of the same child updates these instead of duplicating them.
transfer_origin = Table(
    "transfer_origin",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("sender", String(64), primary_key=True),
    #: "Type/id" at the sender.
    Column("source", String(140), primary_key=True),
    #: "Type/id" here.
    Column("local", String(140), nullable=False),
)

#: Bulk transfer runs (`ekd transfer bulk`): the cohort as asked; the children are `transfer`
#: rows with this `job_id`, so the run resumes after a crash and reports per state.
transfer_job = Table(
    "transfer_job",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org", String(64), nullable=False),
    Column("criteria", CONTENT, nullable=False),
    Column("created", TIME, nullable=False),
    Column("requested_by", String(128), nullable=False),
)
