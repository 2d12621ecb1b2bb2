"""Base-definition validation as the server runs it on a plain install (no FHIR package)."""

from __future__ import annotations

from ekd.api.app import build_registry, build_validator
from ekd.config import Settings
from ekd.errors import Issue
from ekd.terminology.service import TerminologyService

_registry = build_registry(Settings())
_validator = build_validator(_registry, TerminologyService(_registry))


def validate(resource: dict) -> list[Issue]:
    return [i for i in _validator.validate(resource) if i.severity in ("error", "fatal")]


def test_primitive_extension_on_extension_value_is_allowed_and_checked() -> None:
    ok = {"resourceType": "Patient", "extension": [{
        "url": "http://example.org/x", "valueString": "a",
        "_valueString": {"id": "v", "extension": [{"url": "http://example.org/t",
                                                   "valueCode": "nl"}]}}]}
    assert validate(ok) == []
    bad = {"resourceType": "Patient", "extension": [{
        "url": "http://example.org/x", "valueString": "a", "_valueString": {"colour": 1}}]}
    issues = validate(bad)
    # choice elements are named the FHIRPath way, as the Java validator does
    assert [i.expression for i in issues] == [("Patient.extension[0].value.ofType(string).colour",)]
    assert "_valueString" in bad["extension"][0]  # the caller's resource is left alone


def test_code_whitespace_follows_xml_schema_not_unicode() -> None:
    nbsp = {"resourceType": "Patient",
            "identifier": [{"type": {"coding": [{"code": "CHEST\u00a0"}]}}]}
    assert validate(nbsp) == []
    double_space = {"resourceType": "Patient",
                    "identifier": [{"type": {"coding": [{"code": "A  B"}]}}]}
    assert validate(double_space)[0].expression == ("Patient.identifier[0].type.coding[0].code",)


def test_messages_never_contain_the_value() -> None:
    issues = validate({"resourceType": "Patient", "birthDate": "999901795"})
    assert issues and all("999901795" not in i.diagnostics for i in issues)


def test_required_code_bindings_hold_without_a_terminology_package() -> None:
    issues = validate({"resourceType": "Patient", "gender": "x",
                       "contact": [{"gender": "y", "name": {"text": "oma"}}]})
    assert [i.expression for i in issues] == [("Patient.gender",), ("Patient.contact[0].gender",)]
    assert validate({"resourceType": "Patient", "gender": "female"}) == []


def test_unknown_elements_are_named() -> None:
    issues = validate({"resourceType": "Patient", "colour": "blauw"})
    assert [i.expression for i in issues] == [("Patient.colour",)]


def test_incomplete_model_code_lists_are_not_enforced() -> None:
    # fhir.resources lists only some Observation.status codes (ending in "+"): R4's full value
    # set is not loaded, so the binding is not checked rather than wrongly enforced.
    obs = {"resourceType": "Observation", "status": "entered-in-error", "code": {"text": "x"}}
    assert validate(obs) == []
