"""Request, response and service objects shared by every interaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ekd.config import Settings
from ekd.definitions.registry import Registry
from ekd.errors import InvalidRequest, Issue, NotFound, ParseError
from ekd.fhir.resource_types import is_resource_type, is_valid_id
from ekd.search.execute import SearchService
from ekd.search.index import Indexer
from ekd.search.parameters import SearchParameters
from ekd.security import policy
from ekd.security.principal import Principal
from ekd.store.database import Database
from ekd.store.resources import ResourceStore, Stored
from ekd.terminology.service import TerminologyService
from ekd.validation import Validator

if TYPE_CHECKING:
    from ekd.transfer.context import Exchange


@dataclass(frozen=True, slots=True)
class Services:
    """What interactions need from the outside world; built once per server."""

    db: Database
    settings: Settings
    validator: Validator
    definitions: Registry
    terminology: TerminologyService
    #: Profiles a resource must meet because of what it is (the JGZ rules); None: no such rules.
    profile_selector: Callable[[dict], list[str]] | None = None
    #: Checks that need stored data (the child of a measurement); they only ever warn.
    checks: tuple[Callable[[ResourceStore, dict], list[Issue]], ...] = ()
    #: Search parameters in force and the queries over their index tables.
    search: SearchService = field(default_factory=lambda: SearchService(SearchParameters()))
    #: This organisation's place in the dossier exchange (`ekd.transfer`); None: not configured.
    exchange: Exchange | None = None
    #: The current validation stamp (`ekd.validation.stamp`); None: versions are not stamped,
    #: so nothing skips validation on the strength of an earlier one.
    validation_stamp: Callable[[], str] | None = None

    def store(self, conn, org: str | None = None) -> ResourceStore:
        """A store on `conn`, scoped to `org` (None: the server's own, unscoped work)."""
        return ResourceStore(conn, indexer=Indexer(self.search.parameters), org=org)


@dataclass
class FhirRequest:
    method: str
    base: str
    type: str | None = None
    id: str | None = None
    version: str | None = None
    #: "_history", "_search" or None
    path_op: str | None = None
    #: An extended operation's name without the `$` (http://hl7.org/fhir/R4/operations.html).
    operation: str | None = None
    params: list[tuple[str, str]] = field(default_factory=list)
    body: dict | None = None
    #: For PATCH: the JSON Patch document (a list of operations).
    patch: list | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_none_exist: str | None = None
    if_modified_since: datetime | None = None
    prefer_return: str | None = None
    prefer_strict: bool = False
    #: Server-chosen id for a create inside a transaction (its urn:uuid is already mapped to it).
    assigned_id: str | None = None
    #: Who asks. None only for the server's own work (seeding, command-line tools): such
    #: requests are neither scoped to an organisation nor audited.
    principal: Principal | None = None

    @property
    def org(self) -> str | None:
        return self.principal.org if self.principal is not None else None

    def may_read(self, rtype: str) -> bool:
        """Whether results of this type may be shown (`_include`, `$everything`, history)."""
        return self.principal is None or policy.allows(self.principal, rtype, "r")

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass
class FhirResponse:
    status: int
    body: dict | None = None
    #: The version the response is about: drives ETag, Last-Modified and Location.
    stored: Stored | None = None
    #: Send a Location header (201 Created).
    location: str | None = None
    #: Informational/warning issues, shown for `Prefer: return=OperationOutcome`.
    issues: list[Issue] = field(default_factory=list)
    #: The response of a write (create/update/patch/delete): `Prefer: return=` applies.
    write: bool = False
    #: Resources the interaction showed or changed, for the audit log (search matches and
    #: includes, history versions, a deleted resource's last content).
    touched: list[Stored] = field(default_factory=list)


def require_type(rtype: str | None) -> str:
    if rtype is None or not is_resource_type(rtype):
        raise NotFound(f"Unknown resource type '{rtype}'")
    return rtype


def require_id(rid: str | None) -> str:
    if not is_valid_id(rid):
        raise InvalidRequest(
            "Invalid resource id: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"
        )
    assert rid is not None
    return rid


def parse_version(raw: str | None) -> int:
    try:
        return int(raw or "")
    except ValueError:
        raise NotFound(f"Unknown version '{raw}'") from None


def require_body(req: FhirRequest) -> dict:
    body = req.body
    if not isinstance(body, dict):
        raise ParseError("The request needs a FHIR resource as its body")
    rtype = body.get("resourceType")
    if not isinstance(rtype, str):
        raise ParseError("The body has no resourceType", expression="resourceType")
    if req.type is not None and rtype != req.type:
        raise InvalidRequest(
            f"The body is a {rtype}, but the URL names {req.type}", expression="resourceType"
        )
    return body


def etag_version(value: str | None) -> int | None:
    """The version in an ETag-style header: `W/"3"` or `"3"` (or a bare 3)."""
    if value is None:
        return None
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"Cannot read a version from '{value}'") from None


def full_url(base: str, stored: Stored) -> str:
    return f"{base}/{stored.type}/{stored.id}"


def versioned_url(base: str, stored: Stored) -> str:
    return f"{base}/{stored.type}/{stored.id}/_history/{stored.version}"
