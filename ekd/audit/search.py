"""Reading and searching the audit log as FHIR AuditEvents, within one organisation.

Results are newest first and paged by keyset (`_cursor` holds the last row's recorded time
and pk), so paging through a log that grows while one reads it sees every record once, and a
deep page costs what the first does. No `total`: counting a patient's or an organisation's
whole log would cost more than the page; `_count=0` asks for just the count.

The indexes in use: `patient` (audit_patient org+patient), `date` and the order (audit_event
org+recorded), `agent` (org+user_id+recorded). `entity` has no index of its own: it filters
the JSON of the records the other criteria (or the org's recent log) yield, which is fine
with a patient or date criterion next to it and slow on its own over a long log.

A patient access overview ("who looked at this child's dossier, when, in which role") is one
query: `AuditEvent?patient=Patient/x&action=R`; each AuditEvent carries the user's id, name
and role (`agent[user]`) and the on-behalf-of user when there is one.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    cast,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
)

from ekd.audit.event import EKD_EVENT, RESTFUL_INTERACTION, for_fhir, parse_instant
from ekd.errors import InvalidRequest
from ekd.interaction.bundle import bundle, page_url
from ekd.search.params import parse_date, parse_reference, split_or, unescape, whole_number
from ekd.store.schema import audit_event, audit_patient

PARAMETERS = frozenset({"patient", "date", "agent", "action", "subtype", "outcome", "entity",
                        "_id"})
#: Accepted and without effect: formatting is the API layer's; `_total` is never computed.
_IGNORED = frozenset({"_format", "_pretty", "_total"})
_ACTIONS = frozenset("CRUDE")
_OUTCOMES = frozenset({"0", "4", "8", "12"})
_NEWEST_FIRST = frozenset({"-date", "-_lastUpdated"})


def _bad(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"AuditEvent search parameter '{name}': {why}", expression=name)


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class _Cursor:
    recorded: datetime
    pk: int

    def encode(self) -> str:
        raw = f"{_as_utc(self.recorded).isoformat()}|{self.pk}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> _Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            when, pk = raw.split("|")
            return _Cursor(_as_utc(datetime.fromisoformat(when)), int(pk))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidRequest("_cursor is not a page link of this search (follow the links "
                                 "of the previous page)", expression="_cursor") from None


@dataclass(frozen=True, slots=True)
class Access:
    """One line of a patient access overview."""

    recorded: datetime
    org: str
    user_id: str | None
    user_name: str | None
    role: str | None
    on_behalf_of: str | None
    action: str
    subtype: str
    outcome: str
    client_id: str

    @staticmethod
    def of(org: str, content: dict) -> Access:
        user = behalf = client = None
        for agent in content.get("agent", ()):
            codes = {c.get("code") for c in agent.get("type", {}).get("coding", ())}
            if "UserOauthAgent" in codes:
                user = agent
            elif "RESP" in codes:
                behalf = agent
            elif "110153" in codes:
                client = agent
        actor = user or client or {}
        roles = [c.get("code") for r in actor.get("role", ()) for c in r.get("coding", ())]
        return Access(
            recorded=parse_instant(content["recorded"]),
            org=org,
            user_id=(user or {}).get("who", {}).get("identifier", {}).get("value"),
            user_name=(user or {}).get("name"),
            role=roles[0] if roles else None,
            on_behalf_of=(behalf or {}).get("name")
            or (behalf or {}).get("who", {}).get("identifier", {}).get("value"),
            action=content["action"],
            subtype=content["subtype"][0]["code"],
            outcome=content["outcome"],
            client_id=(client or {}).get("who", {}).get("identifier", {}).get("value", ""),
        )


class AuditSearch:
    """AuditEvent read and search. Every query is confined to the caller's organisation."""

    def read(self, conn: Connection, org: str, id: str) -> dict | None:
        row = conn.execute(select(audit_event.c.content).where(
            audit_event.c.org == org, audit_event.c.id == id)).first()
        return None if row is None else for_fhir(row.content)

    def search(self, conn: Connection, org: str, params: list[tuple[str, str]], base: str,
               default_count: int, max_count: int) -> dict:
        """A searchset Bundle of `org`'s AuditEvents matching `params`.

        Unknown parameters and modifiers are errors, not ignored: a criterion silently
        dropped would widen an audit query, which is worse here than a 400.
        """
        count = default_count
        cursor: _Cursor | None = None
        used: list[tuple[str, str]] = []
        criteria: list[ColumnElement[bool]] = []
        for name, raw in params:
            if name in _IGNORED:
                continue
            if name == "_count":
                count = min(whole_number("_count", raw, 0), max_count)
            elif name == "_cursor":
                cursor = _Cursor.decode(raw)
                continue
            elif name == "_sort":
                if raw not in _NEWEST_FIRST:
                    raise _bad(name, "AuditEvents are returned newest first only (-date)")
            elif name in PARAMETERS:
                criteria.append(self._criterion(conn, org, name, raw))
            else:
                base_name = name.partition(":")[0]
                why = ("modifiers are not supported" if base_name in PARAMETERS
                       else "unknown parameter; supported: " + ", ".join(sorted(PARAMETERS)))
                raise _bad(name, why)
            used.append((name, raw))
        e = audit_event.c
        where = [e.org == org, *criteria]
        if count == 0:
            total = conn.execute(select(func.count()).select_from(audit_event).where(*where))
            return bundle("searchset", [], total=int(total.scalar_one()),
                          links=[("self", page_url(base, "AuditEvent", used))])
        if cursor is not None:
            where.append(or_(e.recorded < cursor.recorded,
                             and_(e.recorded == cursor.recorded, e.pk < cursor.pk)))
        q: Select[Any] = (select(e.pk, e.recorded, e.id, e.content).where(*where)
                          .order_by(e.recorded.desc(), e.pk.desc()).limit(count + 1))
        rows = conn.execute(q).all()
        more = len(rows) > count
        rows = rows[:count]
        entries = [{"fullUrl": f"{base}/AuditEvent/{r.id}", "resource": for_fhir(r.content),
                    "search": {"mode": "match"}} for r in rows]
        self_params = used + ([("_cursor", raw_cursor)] if (raw_cursor := _raw(params)) else [])
        links = [("self", page_url(base, "AuditEvent", self_params))]
        if more:
            last = rows[-1]
            nxt = _Cursor(_as_utc(last.recorded), last.pk).encode()
            links.append(("next", page_url(base, "AuditEvent", [*used, ("_cursor", nxt)])))
        return bundle("searchset", entries, links=links)

    def access_overview(self, conn: Connection, patient: str, org: str | None = None,
                        limit: int | None = None) -> list[Access]:
        """Who touched `patient`'s records, newest first (for `ekd audit show`)."""
        e = audit_event.c
        ref = _patient_reference("patient", patient)
        pks = select(audit_patient.c.audit_pk).where(audit_patient.c.patient == ref)
        if org is not None:
            pks = pks.where(audit_patient.c.org == org)
        q = (select(e.org, e.content).where(e.pk.in_(pks))
             .order_by(e.recorded.desc(), e.pk.desc()))
        if org is not None:
            q = q.where(e.org == org)
        if limit is not None:
            q = q.limit(limit)
        return [Access.of(r.org, r.content) for r in conn.execute(q)]

    # -- criteria ----------------------------------------------------------------------------

    def _criterion(self, conn: Connection, org: str, name: str, raw: str
                   ) -> ColumnElement[bool]:
        e = audit_event.c
        values = [unescape(v) for v in split_or(raw)] if name != "date" else split_or(raw)
        if not raw or any(v == "" for v in values):
            raise _bad(name, "empty value")
        if name == "patient":
            refs = [_patient_reference(name, v) for v in values]
            return e.pk.in_(select(audit_patient.c.audit_pk).where(
                audit_patient.c.org == org, audit_patient.c.patient.in_(refs)))
        if name == "date":
            return or_(*(_date_clause(name, v) for v in values))
        if name == "agent":
            # The acting user (UZI number or local user id); `system|value` is accepted and
            # its system ignored. Not the on-behalf-of user: that is in the JSON only.
            return e.user_id.in_([v.rpartition("|")[2] for v in values])
        if name == "action":
            bad = [v for v in values if v not in _ACTIONS]
            if bad:
                raise _bad(name, "must be C, R, U, D or E")
            return e.action.in_(values)
        if name == "outcome":
            if any(v not in _OUTCOMES for v in values):
                raise _bad(name, "must be 0, 4, 8 or 12")
            return e.outcome.in_(values)
        if name == "subtype":
            codes = []
            for v in values:
                system, bar, code = v.rpartition("|")
                if bar and system not in ("", RESTFUL_INTERACTION, EKD_EVENT):
                    codes.append(None)  # a system that never occurs: matches nothing
                else:
                    codes.append(code)
            wanted = [c for c in codes if c is not None]
            return e.subtype.in_(wanted) if wanted else false()
        if name == "entity":
            return or_(*(_entity_clause(conn, v) for v in values))
        assert name == "_id"
        return e.id.in_(values)


def _raw(params: list[tuple[str, str]]) -> str | None:
    for name, raw in params:
        if name == "_cursor":
            return raw
    return None


def _patient_reference(name: str, value: str) -> str:
    ref = parse_reference(value, None)
    if ref.id is None or ref.type not in (None, "Patient"):
        raise _bad(name, "must be a Patient reference (Patient/<id> or <id>)")
    return f"Patient/{ref.id}"


def _date_clause(name: str, raw: str) -> ColumnElement[bool]:
    value = parse_date(name, raw)
    col = audit_event.c.recorded
    low, high = _as_utc(value.low), _as_utc(value.high)
    match value.prefix:
        case "eq":
            return and_(col >= low, col < high)
        case "ne":
            return not_(and_(col >= low, col < high))
        case "gt" | "sa":
            return col >= high
        case "ge":
            return col >= low
        case "lt" | "eb":
            return col < low
        case "le":
            return col < high
    raise _bad(name, f"prefix '{value.prefix}' is not supported for AuditEvent dates")


_PATH_EXACT = "'$.entity[*].what.reference ? (@ == $r)'::jsonpath"
_PATH_VERSIONS = "'$.entity[*].what.reference ? (@ == $r || @ starts with $p)'::jsonpath"


def _entity_clause(conn: Connection, value: str) -> ColumnElement[bool]:
    """Records whose entity.what.reference is `value`, or a version of it when `value` has
    none (entities are stored as Type/id/_history/version)."""
    versioned = "/_history/" in value
    prefix = value + "/_history/"
    content = audit_event.c.content
    if conn.dialect.name == "postgresql":
        path = literal_column(_PATH_EXACT if versioned else _PATH_VERSIONS)
        return func.jsonb_path_exists(content, path, func.jsonb_build_object(
            "r", cast(value, Text), "p", cast(prefix, Text)))
    each = func.json_each(content, "$.entity").table_valued("value").alias("e")
    ref = func.json_extract(each.c.value, "$.what.reference")
    match = ref == value
    if not versioned:
        match = or_(match, func.substr(ref, 1, len(prefix)) == prefix)
    return exists(select(1).select_from(each).where(match))
