"""ValueSet/$validate-code (http://hl7.org/fhir/R4/valueset-operation-validate-code.html).

`GET|POST [base]/ValueSet/$validate-code?url=...&system=...&code=...` (or `coding`, or a POSTed
`codeableConcept`; `[base]/ValueSet/[id]/$validate-code` for a stored value set). The answer is
Parameters with `result`, `message` and `display`.

"Not checked" (the code comes from a system the server does not hold, included by a filter,
e.g. SNOMED CT is-a): R4 makes `result` a mandatory boolean, and `true` would claim a
membership nobody verified, so the answer is `result = false` with a `message` that starts
with what was not checked and why, plus an `issues` parameter (as R5 defines it) holding an
OperationOutcome with one *warning* of type `not-supported`. A client can tell "invalid" (no
`issues`, or an error issue) from "not checked" (a not-supported warning) without parsing text.
The validator of this server does not go through this operation: it reads `CodeCheck.valid`,
where not checked is `None`.

An unknown `url` is 404 (the request names something we do not have); a value set that
imports an unknown value set is "not checked".
"""

from __future__ import annotations

from ekd.errors import InvalidRequest
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.operation import Operation, parameters
from ekd.operation.valueset_expand import Params, bool_param, first, target_valueset, text_param
from ekd.store.resources import ResourceStore
from ekd.terminology.service import CodeCheck


def codings(params: Params) -> list[dict]:
    """The codings to test: `coding`, the codings of `codeableConcept`, or system + code."""
    coding = first(params, "coding")
    if isinstance(coding, str):  # GET: coding=system|code
        system, _, code = coding.rpartition("|")
        coding = {"system": system or None, "code": code}
    if isinstance(coding, dict):
        return [coding]
    if coding is not None:
        raise InvalidRequest("The parameter 'coding' must be a Coding", expression="coding")
    concept = first(params, "codeableConcept")
    if concept is not None:
        if not isinstance(concept, dict):
            raise InvalidRequest("The parameter 'codeableConcept' must be a CodeableConcept",
                                 expression="codeableConcept")
        found = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
        if not found:
            raise InvalidRequest("The codeableConcept has no coding",
                                 expression="codeableConcept")
        return found
    code = text_param(params, "code")
    if code is None:
        raise InvalidRequest("Give a code (with system), a coding or a codeableConcept")
    return [{"system": text_param(params, "system"), "code": code,
             "display": text_param(params, "display")}]


def validate_code(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    params = parameters(req)
    target, _ = target_valueset(services, store, req, params)
    abstract_ok = bool(bool_param(params, "abstract"))
    checks: list[CodeCheck] = []
    for coding in codings(params):
        code = coding.get("code")
        if not isinstance(code, str) or not code:
            raise InvalidRequest("A coding to validate has no code")
        system = coding.get("system") if isinstance(coding.get("system"), str) else None
        display = coding.get("display") if isinstance(coding.get("display"), str) else None
        checks.append(services.terminology.validate_code(
            target, system, code, display, abstract_ok=abstract_ok))
    return FhirResponse(200, result_parameters(checks))


def result_parameters(checks: list[CodeCheck]) -> dict:
    """One answer for all codings: valid if any is valid, else not checked if any is."""
    valid = next((c for c in checks if c.valid), None)
    unchecked = [c for c in checks if c.valid is None]
    out: list[dict] = [{"name": "result", "valueBoolean": valid is not None}]
    if valid is not None:
        message, display = valid.message, valid.display
    else:
        message = "; ".join(c.message for c in checks if c.message)
        display = next((c.display for c in checks if c.display), None)
    if message:
        out.append({"name": "message", "valueString": message})
    if display:
        out.append({"name": "display", "valueString": display})
    if valid is None and unchecked:
        out.append({"name": "issues", "resource": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "not-supported",
                       "diagnostics": c.message} for c in unchecked],
        }})
    return {"resourceType": "Parameters", "parameter": out}


OPERATION = Operation(
    name="validate-code",
    handler=validate_code,
    levels=frozenset({"type", "instance"}),
    types=frozenset({"ValueSet"}),
    definition="http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
)
