"""Invariants: profile constraints with their severity, the base ones (ele-1, dom-*, ext-1,
ref-1, per-1, resource-specific), context variables, choice elements inside backbones."""

from __future__ import annotations

from test_validator__kit import TEST, errors, paths, patient, profile, validator, warnings

INV = profile("Patient", [], name="inv")
INV["differential"]["element"][0]["constraint"] = [
    {"key": "t-1", "severity": "error", "human": "A BSN has 9 digits",
     "expression": "identifier.where(system = 'http://fhir.nl/fhir/NamingSystem/bsn')"
                   ".all(value.matches('^[0-9]{9}$'))"},
    {"key": "t-2", "severity": "warning", "human": "Give a family name",
     "expression": "name.family.exists()"},
]


def test_profile_invariants_with_severity() -> None:
    v = validator(INV)
    bsn = {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}
    good = patient(identifier=[bsn], name=[{"family": "Jansen"}])
    assert v.validate(good, [INV["url"]]) == [] or not errors(v.validate(good, [INV["url"]]))
    bad = patient(identifier=[{**bsn, "value": "12345"}])
    issues = v.validate(bad, [INV["url"]])
    assert [i.diagnostics.split(": ")[1] for i in errors(issues)] == ["Constraint failed"]
    assert "t-1" in errors(issues)[0].diagnostics and "12345" not in errors(issues)[0].diagnostics
    assert any("t-2" in w.diagnostics for w in warnings(issues))


def test_base_resource_invariants() -> None:
    v = validator()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "valueString": "x", "dataAbsentReason": {"text": "unknown"}}
    assert any("obs-6" in i.diagnostics for i in errors(v.validate(obs)))
    contact = patient(contact=[{"gender": "male"}])
    assert paths(errors(v.validate(contact))) == ["Patient.contact[0]"]  # pat-1


def test_data_type_invariants() -> None:
    v = validator()
    period = patient(contact=[{"name": {"family": "x"},
                               "period": {"start": "2020-02-01", "end": "2020-01-01"}}])
    assert paths(errors(v.validate(period))) == ["Patient.contact[0].period"]  # per-1


def test_contained_resources_must_be_referenced() -> None:
    v = validator()
    org = {"resourceType": "Organization", "id": "o1", "name": "GGD"}
    used = patient(contained=[org], managingOrganization={"reference": "#o1"})
    assert errors(v.validate(used)) == []
    unused = patient(contained=[org])
    assert paths(errors(v.validate(unused))) == ["Patient.contained[0]"]  # dom-3
    dangling = patient(managingOrganization={"reference": "#nope"})
    assert errors(v.validate(dangling))  # ref-1
    nested = patient(contained=[{**org, "contained": [{"resourceType": "Basic",
                                                       "code": {"text": "x"}}]}],
                     managingOrganization={"reference": "#o1"})
    assert any("dom-2" in i.diagnostics for i in errors(v.validate(nested)))


def test_choice_elements_inside_backbones_are_seen() -> None:
    # obs-7 on the component level would be wrong if value[x] were invisible to FHIRPath
    sd = profile("Observation", [
        {"id": "Observation.component", "path": "Observation.component",
         "constraint": [{"key": "t-3", "severity": "error", "human": "component has a value",
                         "expression": "value.exists()"}]},
    ], name="comp")
    v = validator(sd)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1}}]}
    assert errors(v.validate(obs, [sd["url"]])) == []
    obs["component"].append({"code": {"text": "b"}})
    assert paths(errors(v.validate(obs, [sd["url"]]))) == ["Observation.component[1]"]


def test_context_variables() -> None:
    sd = profile("Patient", [
        {"id": "Patient.contained", "path": "Patient.contained",
         "constraint": [{"key": "t-4", "severity": "error", "human": "context variables",
                         "expression": "resourceType = 'Organization' and "
                                       "%resource.resourceType = 'Patient' and "
                                       "%rootResource.resourceType = 'Patient'"}]},
    ], name="ctx")
    v = validator(sd)
    res = patient(contained=[{"resourceType": "Organization", "id": "o", "name": "x"}],
                  managingOrganization={"reference": "#o"})
    assert errors(v.validate(res, [TEST + "ctx"])) == []
    res["contained"][0] = {"resourceType": "Location", "id": "o"}
    res["managingOrganization"] = {"reference": "#o"}
    assert "t-4" in " ".join(i.diagnostics for i in errors(v.validate(res, [TEST + "ctx"])))
