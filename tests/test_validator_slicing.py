"""Slicing: discriminators value, pattern, type, exists and profile; rules open, closed and
openAtEnd; ordered slices; slice cardinality; slice members checked against their slice."""

from __future__ import annotations

from test_validator__kit import TEST, errors, paths, patient, profile, validator

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
LOCAL = "http://ekd.test/id/local"


def _identifier_profile(rules: str = "open", ordered: bool = False,
                        name: str = "slices") -> dict:
    return profile("Patient", [
        {"id": "Patient.identifier", "path": "Patient.identifier",
         "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": rules,
                     "ordered": ordered}},
        {"id": "Patient.identifier:bsn", "path": "Patient.identifier", "sliceName": "bsn",
         "min": 1, "max": "1"},
        {"id": "Patient.identifier:bsn.system", "path": "Patient.identifier.system",
         "fixedUri": BSN},
        {"id": "Patient.identifier:bsn.value", "path": "Patient.identifier.value", "min": 1},
        {"id": "Patient.identifier:local", "path": "Patient.identifier", "sliceName": "local",
         "max": "1"},
        {"id": "Patient.identifier:local.system", "path": "Patient.identifier.system",
         "fixedUri": LOCAL},
    ], name=name)


def _check(resource: dict, sd: dict) -> list:
    return errors(validator(sd).validate(resource, [sd["url"]]))


def test_value_discriminator_and_slice_cardinality() -> None:
    sd = _identifier_profile()
    ok = patient(identifier=[{"system": BSN, "value": "1"}, {"system": "http://other"}])
    assert _check(ok, sd) == []
    missing = patient(identifier=[{"system": LOCAL, "value": "1"}])
    issues = _check(missing, sd)
    assert paths(issues) == ["Patient.identifier"] and "Patient.identifier:bsn" in \
        issues[0].diagnostics
    twice = patient(identifier=[{"system": BSN, "value": "1"}, {"system": BSN, "value": "2"}])
    assert "max allowed = 1, but found 2" in _check(twice, sd)[0].diagnostics


def test_members_are_checked_against_their_slice() -> None:
    sd = _identifier_profile()
    res = patient(identifier=[{"system": BSN}])  # the bsn slice needs a value
    assert paths(_check(res, sd)) == ["Patient.identifier[0].value"]
    other = patient(identifier=[{"system": BSN, "value": "1"}, {"system": "http://x"}])
    assert _check(other, sd) == []  # the unsliced element does not need a value


def test_closed_slicing_rejects_unmatched() -> None:
    sd = _identifier_profile(rules="closed", name="closed")
    res = patient(identifier=[{"system": BSN, "value": "1"}, {"system": "http://other"}])
    assert paths(_check(res, sd)) == ["Patient.identifier[1]"]


def test_open_at_end() -> None:
    sd = _identifier_profile(rules="openAtEnd", name="atend")
    good = patient(identifier=[{"system": BSN, "value": "1"}, {"system": "http://other"}])
    assert _check(good, sd) == []
    bad = patient(identifier=[{"system": "http://other"}, {"system": BSN, "value": "1"}])
    assert paths(_check(bad, sd)) == ["Patient.identifier[1]"]


def test_ordered_slices() -> None:
    sd = _identifier_profile(ordered=True, name="ordered")
    good = patient(identifier=[{"system": BSN, "value": "1"}, {"system": LOCAL}])
    assert _check(good, sd) == []
    bad = patient(identifier=[{"system": LOCAL}, {"system": BSN, "value": "1"}])
    assert paths(_check(bad, sd)) == ["Patient.identifier[1]"]


def test_pattern_discriminator_on_this() -> None:
    vital = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": "vital-signs"}]}
    sd = profile("Observation", [
        {"id": "Observation.category", "path": "Observation.category",
         "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}],
                     "rules": "open"}},
        {"id": "Observation.category:VSCat", "path": "Observation.category",
         "sliceName": "VSCat", "min": 1, "max": "1", "patternCodeableConcept": vital},
    ], name="pattern")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert _check({**obs, "category": [{"text": "lab"}, vital]}, sd) == []
    assert paths(_check({**obs, "category": [{"text": "lab"}]}, sd)) == ["Observation.category"]


def test_type_discriminator_on_a_choice() -> None:
    sd = profile("Observation", [
        {"id": "Observation.effective[x]", "path": "Observation.effective[x]",
         "slicing": {"discriminator": [{"type": "type", "path": "$this"}], "rules": "open"}},
        {"id": "Observation.effective[x]:effectivePeriod", "path": "Observation.effective[x]",
         "sliceName": "effectivePeriod", "type": [{"code": "Period"}]},
        {"id": "Observation.effective[x]:effectivePeriod.start",
         "path": "Observation.effective[x].start", "min": 1},
    ], name="typeslice")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert _check({**obs, "effectiveDateTime": "2020"}, sd) == []
    assert _check({**obs, "effectivePeriod": {"start": "2020"}}, sd) == []
    issues = _check({**obs, "effectivePeriod": {"end": "2020"}}, sd)
    assert paths(issues) == ["Observation.effective.ofType(Period).start"]


def test_exists_discriminator() -> None:
    sd = profile("Patient", [
        {"id": "Patient.contact", "path": "Patient.contact",
         "slicing": {"discriminator": [{"type": "exists", "path": "organization"}],
                     "rules": "open"}},
        {"id": "Patient.contact:org", "path": "Patient.contact", "sliceName": "org",
         "max": "1"},
        {"id": "Patient.contact:org.organization", "path": "Patient.contact.organization",
         "min": 1},
        {"id": "Patient.contact:person", "path": "Patient.contact", "sliceName": "person",
         "min": 1},
        {"id": "Patient.contact:person.name", "path": "Patient.contact.name", "min": 1},
        {"id": "Patient.contact:person.organization", "path": "Patient.contact.organization",
         "max": "0"},
    ], name="exists")
    org = {"organization": {"display": "GGD"}}
    person = {"name": {"family": "Jansen"}}
    assert _check(patient(contact=[org, person]), sd) == []
    assert paths(_check(patient(contact=[org, org]), sd)) == ["Patient.contact",
                                                               "Patient.contact"]
    # a contact without organization is a person: needs a name
    issues = _check(patient(contact=[{"telecom": [{"system": "phone", "value": "1"}]}]), sd)
    assert paths(issues) == ["Patient.contact[0].name"]


def test_profile_discriminator_in_a_bundle() -> None:
    child = profile("Patient", [
        {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}], name="child")
    bundle = profile("Bundle", [
        {"id": "Bundle.entry", "path": "Bundle.entry",
         "slicing": {"discriminator": [{"type": "profile", "path": "resource"}],
                     "rules": "open"}},
        {"id": "Bundle.entry:child", "path": "Bundle.entry", "sliceName": "child", "min": 1},
        {"id": "Bundle.entry:child.resource", "path": "Bundle.entry.resource",
         "type": [{"code": "Patient", "profile": [TEST + "child"]}]},
    ], name="bundle")
    v = validator(child, bundle)

    def entry(res: dict) -> dict:
        return {"fullUrl": f"http://x/fhir/Patient/{res['id']}", "resource": res}

    good = {"resourceType": "Bundle", "type": "collection",
            "entry": [entry(patient(id="a")), entry(patient(id="b", birthDate="2020"))]}
    assert errors(v.validate(good, [bundle["url"]])) == []
    bad = {"resourceType": "Bundle", "type": "collection", "entry": [entry(patient(id="a"))]}
    assert paths(errors(v.validate(bad, [bundle["url"]]))) == ["Bundle.entry"]


def test_extension_slices_by_url() -> None:
    ext = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
           "valueAddress": {"city": "Utrecht"}}
    sd = profile("Patient", [
        {"id": "Patient.extension", "path": "Patient.extension",
         "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
        {"id": "Patient.extension:birthPlace", "path": "Patient.extension",
         "sliceName": "birthPlace", "min": 1, "max": "1",
         "type": [{"code": "Extension", "profile": [ext["url"]]}]},
    ], name="extslice")
    v = validator(sd, package=True)
    assert errors(v.validate(patient(extension=[ext]), [sd["url"]])) == []
    issues = errors(v.validate(patient(), [sd["url"]]))
    assert issues and "birthPlace" in issues[0].diagnostics
    wrong = {**ext, "valueString": "Utrecht"}
    del wrong["valueAddress"]
    assert errors(v.validate(patient(extension=[wrong]), [sd["url"]]))
