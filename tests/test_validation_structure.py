"""Structural validation (base definitions) beyond what the fhir.resources models do alone."""

from __future__ import annotations

from ekd.validation.structure import StructureValidator

validate = StructureValidator().validate


def test_primitive_extension_on_extension_value_is_allowed_and_checked() -> None:
    ok = {"resourceType": "Patient", "extension": [{
        "url": "http://example.org/x", "valueString": "a",
        "_valueString": {"id": "v", "extension": [{"url": "http://example.org/t",
                                                   "valueCode": "nl"}]}}]}
    assert validate(ok) == []
    bad = {"resourceType": "Patient", "extension": [{
        "url": "http://example.org/x", "valueString": "a", "_valueString": {"colour": 1}}]}
    issues = validate(bad)
    assert [i.expression for i in issues] == [("Patient.extension[0].valueString.colour",)]
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
