"""What happened, as the interaction layer reports it to the audit log.

One record per interaction a caller runs: each entry of a batch or transaction makes its own
(the Bundle itself none), and a transaction that fails makes exactly one (subtype
`transaction`). Requests refused before they name an interaction (unreadable bodies, missing
or bad credentials) make none: nothing was accessed. `ekd.audit.event` turns a record into
a BALP-shaped AuditEvent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ekd.security.principal import Principal


@dataclass(frozen=True, slots=True)
class PatientRef:
    #: "Patient/<id>"
    reference: str
    #: Only when the interaction had the Patient resource at hand; kept in the protected
    #: audit store only.
    bsn: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    #: FHIR interaction code (http://hl7.org/fhir/R4/valueset-type-restful-interaction.html):
    #: read vread update patch delete history-instance history-type history-system create
    #: search-type batch transaction operation capabilities; or "transfer" for transfer steps.
    interaction: str
    #: C R U D E (http://hl7.org/fhir/R4/valueset-audit-event-action.html)
    action: str
    #: HTTP status of the outcome (2xx success; 4xx minor failure; 5xx serious failure).
    status: int
    principal: Principal
    recorded: datetime
    #: The resource type the request was about (None at system level).
    resource_type: str | None = None
    #: Resources touched, "Type/id/_history/version" where a version is known, else "Type/id".
    entities: tuple[str, ...] = ()
    patients: tuple[PatientRef, ...] = ()
    #: The search or operation parameters as sent (protected audit store only).
    query: str | None = None
    #: "$everything", "$validate", ...
    operation: str | None = None
    #: Why it failed, for failures (an OperationOutcome's first diagnostics).
    description: str | None = None
    #: The FHIR base URL of this server (the BALP "server" agent's network address).
    server: str | None = None
    #: X-Request-Id of the HTTP request, to correlate with access logs (BALP transaction entity).
    request_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
