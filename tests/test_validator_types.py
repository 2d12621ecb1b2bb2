"""Data types, choice types, primitive formats, maxLength, minValue/maxValue."""

from __future__ import annotations

import pytest
from test_validator__kit import TEST, errors, paths, patient, profile, validator

V = validator()


def _obs(**fields: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **fields}


@pytest.mark.parametrize(("field", "good", "bad"), [
    ("birthDate", "2020-02-29", "2021-02-29"),        # calendar, not just the regex
    ("birthDate", "2020-02", "2020-13"),
    ("birthDate", "2020", "20"),
    ("active", True, "true"),                          # JSON kind
    ("multipleBirthInteger", 2, 2.5),
    ("multipleBirthInteger", -3, 2**31),               # integer range
    ("implicitRules", "http://x/y", "http://x y"),     # uri: no whitespace
    ("language", "nl-NL", "nl  NL"),                   # code: single spaces only
    ("deceasedDateTime", "2020-01-01T10:00:00+01:00", "2020-01-01T10:00:00"),  # timezone
])
def test_primitive_formats(field: str, good: object, bad: object) -> None:
    assert errors(V.validate(patient(**{field: good}))) == []
    issues = errors(V.validate(patient(**{field: bad})))
    assert paths(issues) == [f"Patient.{field.replace('Integer', '').replace('DateTime', '')}"
                             + (".ofType(integer)" if "Integer" in field else "")
                             + (".ofType(dateTime)" if "DateTime" in field else "")]


def test_more_primitive_types() -> None:
    assert errors(V.validate(_obs(valueTime="10:00:00"))) == []
    assert paths(errors(V.validate(_obs(valueTime="25:00:00")))) == [
        "Observation.value.ofType(time)"]
    assert paths(errors(V.validate(_obs(issued="2020-01-01")))) == ["Observation.issued"]
    assert errors(V.validate(_obs(issued="2020-01-01T10:00:00.123Z"))) == []
    assert paths(errors(V.validate(_obs(valueQuantity={"value": "1"})))) == [
        "Observation.value.ofType(Quantity).value"]
    assert errors(V.validate(_obs(valueQuantity={"value": 1.25}))) == []
    assert paths(errors(V.validate(patient(id="a_b")))) == ["Patient.id"]
    assert paths(errors(V.validate(patient(id="x" * 65)))) == ["Patient.id"]
    media = {"resourceType": "Media", "status": "completed",
             "content": {"contentType": "text/plain", "data": "%%%2@()()"}}
    assert paths(errors(V.validate(media))) == ["Media.content.data"]
    media["content"]["data"] = "SGVsbG8gV29ybGQ="
    assert errors(V.validate(media)) == []
    uuid_ok = {"resourceType": "Basic", "code": {"text": "x"},
               "implicitRules": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}
    assert errors(V.validate(uuid_ok)) == []
    uuid_ok["implicitRules"] += "x"
    assert paths(errors(V.validate(uuid_ok))) == ["Basic.implicitRules"]


def test_choice_types() -> None:
    assert errors(V.validate(_obs(valueString="x"))) == []
    issues = errors(V.validate(_obs(valueString="x", valueBoolean=True)))
    assert issues and "Only one of the choice types" in issues[0].diagnostics
    issues = errors(V.validate(_obs(valueAddress={"city": "x"})))
    assert issues and "'Address' is not allowed" in issues[0].diagnostics


def test_profile_restricts_choice_types() -> None:
    p = profile("Observation", [
        {"id": "Observation.value[x]", "path": "Observation.value[x]",
         "type": [{"code": "Quantity"}, {"code": "CodeableConcept"}]},
    ])
    v = validator(p)
    assert errors(v.validate(_obs(valueQuantity={"value": 1}), [p["url"]])) == []
    issues = errors(v.validate(_obs(valueString="x"), [p["url"]]))
    assert paths(issues) == ["Observation.value"]
    assert "Quantity, CodeableConcept" in issues[0].diagnostics


def test_type_specific_name_in_differential_restricts_the_choice() -> None:
    p = profile("Observation", [
        {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity"},
        {"id": "Observation.valueQuantity.unit", "path": "Observation.valueQuantity.unit",
         "min": 1},
    ], name="vq")
    v = validator(p)
    assert errors(v.validate(_obs(valueQuantity={"value": 1, "unit": "cm"}), [p["url"]])) == []
    issues = errors(v.validate(_obs(valueQuantity={"value": 1}), [p["url"]]))
    assert paths(issues) == ["Observation.value.ofType(Quantity).unit"]


def test_wrong_json_kind_for_complex_type() -> None:
    issues = errors(V.validate(_obs(code="x")))
    assert paths(issues) == ["Observation.code"]


def test_max_length_and_value_ranges() -> None:
    p = profile("Observation", [
        {"id": "Observation.code.text", "path": "Observation.code.text", "maxLength": 5},
        {"id": "Observation.effective[x]", "path": "Observation.effective[x]",
         "type": [{"code": "dateTime"}], "minValueDateTime": "2000-01-01"},
        {"id": "Observation.value[x]", "path": "Observation.value[x]",
         "type": [{"code": "integer"}], "minValueInteger": 20, "maxValueInteger": 250},
    ], name="ranges")
    v = validator(p)
    url = [TEST + "ranges"]
    assert errors(v.validate(_obs(valueInteger=20, effectiveDateTime="2001"), url)) == []
    assert paths(errors(v.validate(_obs(valueInteger=19), url))) == [
        "Observation.value.ofType(integer)"]
    assert paths(errors(v.validate(_obs(valueInteger=251), url))) == [
        "Observation.value.ofType(integer)"]
    assert paths(errors(v.validate(_obs(effectiveDateTime="1999-12-31"), url))) == [
        "Observation.effective.ofType(dateTime)"]
    res = _obs(valueInteger=30)
    res["code"]["text"] = "too long"
    assert paths(errors(v.validate(res, url))) == ["Observation.code.text"]


def test_quantity_limits_with_units() -> None:
    p = profile("Observation", [
        {"id": "Observation.value[x]", "path": "Observation.value[x]",
         "type": [{"code": "Quantity"}],
         "maxValueQuantity": {"value": 10, "system": "http://unitsofmeasure.org", "code": "kg"}},
    ], name="qty")
    v = validator(p)
    ucum = "http://unitsofmeasure.org"
    ok = _obs(valueQuantity={"value": 9000, "system": ucum, "code": "g"})
    assert errors(v.validate(ok, [p["url"]])) == []
    bad = _obs(valueQuantity={"value": 11000, "system": ucum, "code": "g"})
    assert paths(errors(v.validate(bad, [p["url"]]))) == ["Observation.value.ofType(Quantity)"]
