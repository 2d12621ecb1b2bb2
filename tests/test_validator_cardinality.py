"""Cardinality (min/max) at every level, JSON shape, unknown elements, message content."""

from __future__ import annotations

from test_validator__kit import TEST, errors, paths, patient, profile, validator

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"

CARD = profile("Patient", [
    {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1, "max": "2"},
    {"id": "Patient.identifier.value", "path": "Patient.identifier.value", "min": 1,
     "mapping": [{"identity": "bds", "map": "7", "comment": "BSN"}]},
    {"id": "Patient.name", "path": "Patient.name", "max": "1"},
    {"id": "Patient.contact", "path": "Patient.contact", "min": 1},
    {"id": "Patient.contact.name", "path": "Patient.contact.name", "min": 1},
    {"id": "Patient.contact.name.family", "path": "Patient.contact.name.family", "min": 1},
], mapping=[{"identity": "bds", "name": "BDS"}])


def _validate(resource: dict) -> list:
    return validator(CARD).validate(resource, profiles=[TEST + "test-Patient"])


def _good() -> dict:
    return patient(identifier=[{"system": BSN, "value": "999911120"}],
                   contact=[{"name": {"family": "Jansen"}}])


def test_conforming_instance_has_no_errors() -> None:
    assert errors(_validate(_good())) == []


def test_minimum_at_the_top() -> None:
    res = _good()
    del res["identifier"]
    issues = errors(_validate(res))
    assert paths(issues) == ["Patient.identifier"]
    assert "minimum required = 1" in issues[0].diagnostics
    assert TEST + "test-Patient" in issues[0].diagnostics


def test_maximum_at_the_top() -> None:
    res = _good()
    res["identifier"] = [{"value": "1"}, {"value": "2"}, {"value": "3"}]
    issues = errors(_validate(res))
    assert paths(issues) == ["Patient.identifier"]
    assert "max allowed = 2, but found 3" in issues[0].diagnostics


def test_minimum_inside_a_data_type_with_index_and_mapping() -> None:
    res = _good()
    res["identifier"].append({"system": BSN})
    issues = errors(_validate(res))
    assert paths(issues) == ["Patient.identifier[1].value"]
    assert issues[0].diagnostics.startswith("BDS 7 (BSN): Patient.identifier[1].value")


def test_minimum_inside_backbone_and_nested_type() -> None:
    res = _good()
    res["contact"] = [{"name": {"given": ["Piet"]}},
                      {"telecom": [{"system": "phone", "value": "1"}]}]
    issues = errors(_validate(res))
    assert sorted(paths(issues)) == ["Patient.contact[0].name.family", "Patient.contact[1].name"]


def test_base_cardinality_applies_without_profile() -> None:
    v = validator()
    issues = errors(v.validate({"resourceType": "Observation", "status": "final"}))
    assert paths(issues) == ["Observation.code"]
    link = patient(link=[{"type": "seealso"}])
    assert paths(errors(v.validate(link))) == ["Patient.link[0].other"]


def test_array_shape_follows_the_base_definition() -> None:
    v = validator()
    res = patient(name={"family": "x"})  # name repeats: must be an array
    assert "must be a JSON Array" in errors(v.validate(res))[0].diagnostics
    res = patient(gender=["male"])  # gender does not repeat
    assert "must be a single value" in errors(v.validate(res))[0].diagnostics
    res = patient(name=[])
    assert "Array cannot be empty" in errors(v.validate(res))[0].diagnostics


def test_profile_max_does_not_change_the_json_shape() -> None:
    # Patient.name is max 1 in the profile but an array in JSON (base max is *).
    res = _good()
    res["name"] = [{"family": "a"}]
    assert errors(_validate(res)) == []
    res["name"] = [{"family": "a"}, {"family": "b"}]
    assert "max allowed = 1" in errors(_validate(res))[0].diagnostics


def test_unknown_property_and_empty_object() -> None:
    v = validator()
    issues = errors(v.validate(patient(colour="blue")))
    assert issues and "Unrecognized property 'colour'" in issues[0].diagnostics
    issues = errors(v.validate(patient(maritalStatus={})))
    assert paths(issues) == ["Patient.maritalStatus"] and "ele-1" in issues[0].diagnostics


def test_values_are_never_echoed() -> None:
    res = _good()
    res["identifier"][0]["value"] = "999911120"
    res["birthDate"] = "999911120"
    res["identifier"].append({"system": "999911120"})
    issues = _validate(res)
    assert issues
    assert all("999911120" not in i.diagnostics for i in issues)


def test_minimum_above_one_counts_the_repetitions() -> None:
    two = profile("Patient", [
        {"id": "Patient.name", "path": "Patient.name", "min": 1},
        {"id": "Patient.name.given", "path": "Patient.name.given", "min": 2}], name="two")
    v = validator(two)
    assert errors(v.validate(patient(name=[{"given": ["a", "b"]}]), [two["url"]])) == []
    issues = errors(v.validate(patient(name=[{"given": ["a"]}]), [two["url"]]))
    assert paths(issues) == ["Patient.name[0].given"]
    assert "minimum required = 2, but only found 1" in issues[0].diagnostics
