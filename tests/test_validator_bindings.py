"""fixed[x]/pattern[x] and terminology bindings (with a fake terminology service)."""

from __future__ import annotations

from test_validator__kit import (
    FakeTerminology,
    errors,
    paths,
    patient,
    profile,
    validator,
    warnings,
)

LOINC = "http://loinc.org"
VS = "http://ekd.test/fhir/ValueSet/lengths"
UCUM = "http://unitsofmeasure.org"


def _obs(**fields: object) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8302-2"}]}, **fields}


FIXED = profile("Observation", [
    {"id": "Observation.status", "path": "Observation.status", "fixedCode": "final"},
    {"id": "Observation.code", "path": "Observation.code",
     "patternCodeableConcept": {"coding": [{"system": LOINC, "code": "8302-2"}]}},
    {"id": "Observation.value[x]", "path": "Observation.value[x]",
     "type": [{"code": "Quantity"}],
     "fixedQuantity": {"system": UCUM, "code": "cm", "value": 50}},
], name="fixed")


def test_fixed_primitive() -> None:
    v = validator(FIXED)
    res = _obs(status="amended")
    issues = errors(v.validate(res, [FIXED["url"]]))
    assert paths(issues) == ["Observation.status"]
    assert "amended" not in issues[0].diagnostics


def test_pattern_allows_extra_content_but_needs_the_pattern() -> None:
    v = validator(FIXED)
    extra = _obs(code={"coding": [{"system": "http://snomed.info/sct", "code": "1"},
                                  {"system": LOINC, "code": "8302-2", "display": "Body height"}],
                       "text": "lengte"})
    assert errors(v.validate(extra, [FIXED["url"]])) == []
    wrong = _obs(code={"coding": [{"system": LOINC, "code": "8867-4"}]})
    assert [p.startswith("Observation.code") for p in
            paths(errors(v.validate(wrong, [FIXED["url"]])))] == [True]


def test_fixed_complex_value_is_exact() -> None:
    v = validator(FIXED)
    ok = _obs(valueQuantity={"system": UCUM, "code": "cm", "value": 50})
    assert errors(v.validate(ok, [FIXED["url"]])) == []
    extra = _obs(valueQuantity={"system": UCUM, "code": "cm", "value": 50, "unit": "cm"})
    issues = errors(v.validate(extra, [FIXED["url"]]))
    assert paths(issues) == ["Observation.value.ofType(Quantity).unit"]
    other = _obs(valueQuantity={"system": UCUM, "code": "cm", "value": 51})
    assert paths(errors(v.validate(other, [FIXED["url"]]))) == [
        "Observation.value.ofType(Quantity).value"]


BOUND = profile("Observation", [
    {"id": "Observation.code", "path": "Observation.code",
     "binding": {"strength": "required", "valueSet": VS}},
    {"id": "Observation.value[x]", "path": "Observation.value[x]",
     "type": [{"code": "Quantity"}],
     "binding": {"strength": "required", "valueSet": VS}},
    {"id": "Observation.interpretation", "path": "Observation.interpretation",
     "binding": {"strength": "extensible", "valueSet": VS}},
    {"id": "Observation.method", "path": "Observation.method",
     "binding": {"strength": "preferred", "valueSet": VS}},
], name="bound")

TX = FakeTerminology({VS: {(LOINC, "8302-2"): "Body height", (UCUM, "cm"): "centimeter"}})


def _check(resource: dict, tx: object = TX) -> list:
    return validator(BOUND, terminology=tx).validate(resource, [BOUND["url"]])


def _element_warnings(issues: list) -> list[str]:
    """Warnings below the root (dom-6 asks every resource for a narrative)."""
    return [p for p in paths(warnings(issues)) if p != "Observation"]


def test_required_binding() -> None:
    assert errors(_check(_obs())) == []
    bad = _obs(code={"coding": [{"system": LOINC, "code": "8867-4"}]})
    issues = errors(_check(bad))
    assert paths(issues) == ["Observation.code"] and issues[0].code == "code-invalid"
    text_only = _obs(code={"text": "lengte"})
    assert paths(errors(_check(text_only))) == ["Observation.code"]


def test_required_binding_on_quantity_units() -> None:
    assert errors(_check(_obs(valueQuantity={"value": 1, "system": UCUM, "code": "cm"}))) == []
    issues = errors(_check(_obs(valueQuantity={"value": 1, "system": UCUM, "code": "m"})))
    assert paths(issues) == ["Observation.value.ofType(Quantity)"]


def test_extensible_is_a_warning_and_preferred_is_nothing() -> None:
    other = {"coding": [{"system": "http://x", "code": "y"}]}
    issues = _check(_obs(interpretation=[other], method=other))
    assert errors(issues) == []
    assert _element_warnings(issues) == ["Observation.interpretation[0]"]


def test_display_mismatch_is_a_warning() -> None:
    res = _obs(code={"coding": [{"system": LOINC, "code": "8302-2", "display": "Lengte"}]})
    issues = _check(res)
    assert errors(issues) == []
    assert _element_warnings(issues) == ["Observation.code.coding[0].display"]
    assert "Lengte" not in warnings(issues)[0].diagnostics


def test_not_checked_is_never_an_error() -> None:
    bad = _obs(code={"coding": [{"system": LOINC, "code": "8867-4"}]})
    assert errors(_check(bad, FakeTerminology({}))) == []  # value set unknown: valid=None
    assert errors(_check(bad, FakeTerminology(raise_not_implemented=True))) == []
    assert errors(_check(bad, None)) == []


def test_base_required_binding_on_code() -> None:
    gender = "http://hl7.org/fhir/ValueSet/administrative-gender"
    tx = FakeTerminology({gender: {(None, "male"): "Male", (None, "female"): "Female"}})
    v = validator(terminology=tx)
    assert errors(v.validate(patient(gender="male"))) == []
    issues = errors(v.validate(patient(gender="man")))
    assert paths(issues) == ["Patient.gender"] and "man" not in issues[0].diagnostics


def test_base_required_binding_without_terminology_uses_the_r4_codes() -> None:
    """With no terminology service, the R4 ValueSet's codes (`enums.required_codes`) decide:
    `Observation.status` lists only some of them in its `short` ("... amended +"), so the
    binding went unchecked and a made-up status was stored."""
    v = validator(terminology=None)
    for status in ("final", "corrected", "entered-in-error", "unknown"):  # not all in `short`
        assert errors(v.validate(_obs(status=status))) == [], status
    issues = errors(v.validate(_obs(status="bogus")))
    assert paths(issues) == ["Observation.status"]
    assert "observation-status" in issues[0].diagnostics


def test_the_r4_code_table_is_what_the_package_gives() -> None:
    """`r4-required-codes.json` is generated from the R4 package; regenerated, it is the same
    (and so neither hand-edited nor stale)."""
    import pytest
    from examples_corpus import EXAMPLES_TGZ

    from ekd.validation import enums

    if not EXAMPLES_TGZ.exists():
        pytest.skip(f"the R4 package is not at {EXAMPLES_TGZ}")
    made = enums.generate(EXAMPLES_TGZ)
    assert {url: frozenset(codes) for url, codes in made["valuesets"].items()} == enums._table()
    assert enums.required_codes("http://hl7.org/fhir/ValueSet/observation-status|4.0.1") == {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown"}
    assert enums.required_codes("http://example.org/ValueSet/unknown") is None
