"""Snapshot generation from differentials, also for a profile derived from a profile."""

from __future__ import annotations

import pytest
from test_validator__kit import TEST, errors, paths, patient, profile, registry, validator

from ekd.validation.snapshot import SnapshotError, SnapshotGenerator

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"

PARENT = profile("Patient", [
    {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1,
     "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}},
    {"id": "Patient.identifier:bsn", "path": "Patient.identifier", "sliceName": "bsn",
     "max": "1"},
    {"id": "Patient.identifier:bsn.system", "path": "Patient.identifier.system",
     "fixedUri": BSN},
    {"id": "Patient.name.family", "path": "Patient.name.family", "min": 1},
], name="parent")

CHILD = profile("Patient", [
    {"id": "Patient.identifier:bsn", "path": "Patient.identifier", "sliceName": "bsn",
     "min": 1},
    {"id": "Patient.identifier:bsn.value", "path": "Patient.identifier.value", "min": 1},
    {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1},
], name="child", base=TEST + "parent")


def _elements(*sds: dict) -> dict[str, dict]:
    gen = SnapshotGenerator(registry(*sds))
    return {e["id"]: e for e in gen.elements(sds[-1])}


def test_differential_is_merged_into_the_base_snapshot() -> None:
    els = _elements(PARENT)
    assert els["Patient.identifier"]["min"] == 1
    assert els["Patient.identifier"]["slicing"]["rules"] == "open"
    assert els["Patient.identifier:bsn.system"]["fixedUri"] == BSN
    # the data type was expanded where the differential dives into it
    assert els["Patient.name.family"]["min"] == 1 and "Patient.name.given" in els
    # untouched base elements and their constraints are kept
    assert els["Patient.gender"]["binding"]["strength"] == "required"
    assert any(c["key"] == "dom-2" for c in els["Patient"]["constraint"])


def test_derived_profile_inherits_from_its_parent() -> None:
    els = _elements(PARENT, CHILD)
    assert els["Patient.identifier"]["min"] == 1  # from the parent
    assert els["Patient.identifier:bsn"]["max"] == "1"  # from the parent
    assert els["Patient.identifier:bsn"]["min"] == 1  # from the child
    assert els["Patient.identifier:bsn.system"]["fixedUri"] == BSN
    assert els["Patient.identifier:bsn.value"]["min"] == 1
    assert els["Patient.name.family"]["min"] == 1


def test_derived_profile_is_enforced() -> None:
    v = validator(PARENT, CHILD)
    good = patient(identifier=[{"system": BSN, "value": "1"}], name=[{"family": "x"}],
                   birthDate="2020")
    assert errors(v.validate(good, [CHILD["url"]])) == []
    bad = patient(identifier=[{"system": BSN}], name=[{"given": ["x"]}])
    assert sorted(paths(errors(v.validate(bad, [CHILD["url"]])))) == [
        "Patient.birthDate", "Patient.identifier[0].value", "Patient.name[0].family"]


def test_choice_type_specific_path_and_content_reference() -> None:
    q = profile("Questionnaire", [
        {"id": "Questionnaire.item", "path": "Questionnaire.item", "min": 1},
        {"id": "Questionnaire.item.item.text", "path": "Questionnaire.item.item.text",
         "min": 1},
    ], name="q")
    els = _elements(q)
    assert els["Questionnaire.item.item.text"]["min"] == 1
    assert els["Questionnaire.item.item.linkId"]["min"] == 1
    obs = profile("Observation", [
        {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity", "min": 1}],
        name="vq")
    els = _elements(obs)
    assert [t["code"] for t in els["Observation.value[x]"]["type"]] == ["Quantity"]


def test_differential_errors() -> None:
    gen = SnapshotGenerator(registry())
    out_of_order = profile("Patient", [
        {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1},
        {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1}], name="order")
    with pytest.raises(SnapshotError, match="including order"):
        gen.elements(out_of_order)
    unknown = profile("Patient", [{"id": "Patient.colour", "path": "Patient.colour"}],
                      name="unknown")
    with pytest.raises(SnapshotError, match="No match"):
        gen.elements(unknown)
    bad_type = profile("Observation", [
        {"id": "Observation.valueBla", "path": "Observation.valueBla"}], name="bla")
    with pytest.raises(SnapshotError, match=r"value\[x\]"):
        gen.elements(bad_type)
    circle = profile("Patient", [], name="circle", base=TEST + "circle")
    with pytest.raises(SnapshotError, match="Circular"):
        SnapshotGenerator(registry(circle)).elements(circle)


def test_profile_that_cannot_be_generated_is_reported_when_validated() -> None:
    broken = profile("Patient", [{"id": "Patient.colour", "path": "Patient.colour"}],
                     name="broken")
    v = validator(broken)
    issues = errors(v.validate(broken))  # the StructureDefinition itself
    assert issues and "snapshot" in issues[0].diagnostics
    issues = errors(v.validate(patient(), [broken["url"]]))  # used as a profile
    assert issues and "cannot be used" in issues[0].diagnostics


def test_snapshot_cache_is_dropped_when_the_registry_changes() -> None:
    r = registry(PARENT)
    gen = SnapshotGenerator(r)
    first = gen.elements(PARENT)
    assert gen.elements(PARENT) is first
    r.add(CHILD)
    assert gen.elements(PARENT) is not first
