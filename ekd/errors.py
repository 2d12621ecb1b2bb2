"""Typed errors of ekd.

Every failure a client can cause is one of these classes. They carry what an OperationOutcome
needs (HTTP status, issue code, element expression) but know nothing about HTTP frameworks: the
API layer maps them to responses in one place (`ekd.api.errors`), and transaction processing maps
them to Bundle entry responses. Messages must never contain a BSN or other clinical values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue (http://hl7.org/fhir/R4/operationoutcome.html)."""

    severity: str  # fatal | error | warning | information
    code: str  # http://hl7.org/fhir/R4/valueset-issue-type.html
    diagnostics: str
    expression: tuple[str, ...] = field(default_factory=tuple)

    def to_fhir(self) -> dict:
        issue: dict = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class FhirError(Exception):
    """Base class: an error that becomes an OperationOutcome with an HTTP status."""

    status: int = 500
    code: str = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | list[str] | None = None,
        issues: list[Issue] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if code is not None:
            self.code = code
        if isinstance(expression, str):
            expression = [expression]
        self.issues: list[Issue] = issues or [
            Issue("error", self.code, diagnostics, tuple(expression or ()))
        ]
        self.headers = headers or {}

    def outcome(self) -> dict:
        return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in self.issues]}


class InvalidRequest(FhirError):
    status, code = 400, "invalid"


class ParseError(FhirError):
    """The body is not well-formed JSON/XML or no FHIR resource; the message names the position."""

    status, code = 400, "structure"


class ResourceInvalid(FhirError):
    """Well-formed, but breaking the rules of its definition (R4 allows 400 or 422; we use 422)."""

    status, code = 422, "invalid"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Gone(FhirError):
    status, code = 410, "deleted"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class NotSupported(FhirError):
    """A valid request for something ekd does not (yet) do."""

    status, code = 501, "not-supported"


class Unauthorized(FhirError):
    """No valid credentials (http://hl7.org/fhir/R4/security.html: 401 with an
    OperationOutcome). The reason is safe to show: it never echoes the token."""

    status, code = 401, "login"

    def __init__(self, diagnostics: str, *, error: str | None = "invalid_token",
                 **kwargs: object) -> None:
        """`error`: the RFC 6750 §3.1 code of the challenge; None when the request carried
        no credentials at all (then the challenge names none)."""
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        challenge = 'Bearer realm="ekd"' + (f', error="{error}"' if error else "")
        headers.setdefault("WWW-Authenticate", challenge)
        super().__init__(diagnostics, headers=headers, **kwargs)  # type: ignore[arg-type]


class Forbidden(FhirError):
    """Authenticated, but the role or the token's scopes do not allow this."""

    status, code = 403, "forbidden"


class TooManyRequests(FhirError):
    status, code = 429, "throttled"
