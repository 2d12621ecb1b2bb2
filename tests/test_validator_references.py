"""References (format, target types and target profiles for contained and in-Bundle targets)
and Bundles (entries by their own type/profile, fullUrl/id, document and transaction rules)."""

from __future__ import annotations

from test_validator__kit import TEST, errors, paths, patient, profile, validator, warnings

V = validator()
ADULT = profile("Patient", [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}],
                name="with-birthdate")
OBS = profile("Observation", [
    {"id": "Observation.subject", "path": "Observation.subject",
     "type": [{"code": "Reference", "targetProfile": [TEST + "with-birthdate"]}]},
], name="obs-target")


def _obs(**fields: object) -> dict:
    return {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "x"}, **fields}


def test_reference_format() -> None:
    for good in ("Patient/p1", "http://x/fhir/Patient/p1", "Patient/p1/_history/2",
                 "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"):
        assert errors(V.validate(_obs(subject={"reference": good}))) == [], good
    for bad in ("p1", "Patient/p 1", "Chicken/1"):
        issues = errors(V.validate(_obs(subject={"reference": bad})))
        assert paths(issues) == ["Observation.subject.reference"], bad


def test_target_type() -> None:
    issues = errors(V.validate(_obs(subject={"reference": "Medication/m1"})))
    assert paths(issues) == ["Observation.subject"]
    assert "Medication" in issues[0].diagnostics
    typed = _obs(subject={"reference": "Patient/p1", "type": "Group"})
    assert errors(V.validate(typed))


def test_contained_target_type_and_profile() -> None:
    v = validator(ADULT, OBS)
    med = {"resourceType": "Medication", "id": "m"}
    issues = errors(v.validate(_obs(contained=[med], subject={"reference": "#m"})))
    assert "Medication" in issues[0].diagnostics
    young = patient(id="c")
    issues = errors(v.validate(_obs(contained=[young], subject={"reference": "#c"}),
                               [OBS["url"]]))
    assert paths(issues) == ["Observation.subject"]
    grown = patient(id="c", birthDate="1990")
    assert errors(v.validate(_obs(contained=[grown], subject={"reference": "#c"}),
                             [OBS["url"]])) == []


def _bundle(btype: str, *entries: tuple[str | None, dict], **extra: object) -> dict:
    out = []
    for full, res in entries:
        entry: dict = {"resource": res}
        if full is not None:
            entry["fullUrl"] = full
        if btype == "transaction":
            entry["request"] = {"method": "POST", "url": res["resourceType"]}
        out.append(entry)
    return {"resourceType": "Bundle", "type": btype, "entry": out, **extra}


def test_in_bundle_target_profile() -> None:
    v = validator(ADULT, OBS)
    obs = _obs(meta={"profile": [OBS["url"]]}, subject={"reference": "Patient/p1"})
    bad = _bundle("collection", ("http://x/fhir/Patient/p1", patient()),
                  ("http://x/fhir/Observation/o1", obs))
    assert paths(errors(v.validate(bad))) == ["Bundle.entry[1].resource.subject"]
    good = _bundle("collection", ("http://x/fhir/Patient/p1", patient(birthDate="2000")),
                   ("http://x/fhir/Observation/o1", obs))
    assert errors(v.validate(good)) == []


def test_entries_are_validated_by_their_own_type() -> None:
    bundle = _bundle("collection", ("http://x/fhir/Observation/o1",
                                    {"resourceType": "Observation", "id": "o1"}))
    issues = errors(V.validate(bundle))
    assert set(paths(issues)) == {"Bundle.entry[0].resource.status",
                                  "Bundle.entry[0].resource.code"}


def test_full_url_rules() -> None:
    relative = _bundle("collection", ("Patient/p1", patient()))
    assert paths(errors(V.validate(relative))) == ["Bundle.entry[0]"]
    mismatch = _bundle("collection", ("http://x/fhir/Patient/p2", patient()))
    assert paths(errors(V.validate(mismatch))) == ["Bundle.entry[0]"]
    duplicate = _bundle("collection", ("http://x/fhir/Patient/p1", patient()),
                        ("http://x/fhir/Patient/p1", patient()))
    assert errors(V.validate(duplicate))


def test_transaction_rules() -> None:
    uuid = "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"
    good = _bundle("transaction", (uuid, patient(id=None)),
                   ("urn:uuid:1757873d-ec9a-4326-a141-556f43239520",
                    _obs(id=None, subject={"reference": uuid})))
    for e in good["entry"]:
        e["resource"].pop("id")
    assert errors(V.validate(good)) == []
    dangling = _bundle("transaction", ("urn:uuid:1757873d-ec9a-4326-a141-556f43239520",
                                       _obs(subject={"reference": uuid})))
    assert paths(errors(V.validate(dangling))) == ["Bundle.entry[0].resource.subject.reference"]
    no_request = _bundle("transaction", (uuid, patient()))
    del no_request["entry"][0]["request"]
    assert any("bdl-3" in i.diagnostics for i in errors(V.validate(no_request)))


def test_document_rules() -> None:
    comp = {"resourceType": "Composition", "id": "c", "status": "final",
            "type": {"text": "x"}, "date": "2020-01-01", "title": "t",
            "author": [{"reference": "Practitioner/a"}], "subject": {"reference": "Patient/p1"}}
    doc = _bundle("document", ("http://x/fhir/Composition/c", comp),
                  ("http://x/fhir/Patient/p1", patient()),
                  ("http://x/fhir/Practitioner/a", {"resourceType": "Practitioner", "id": "a"}),
                  identifier={"system": "http://x", "value": "1"},
                  timestamp="2020-01-01T00:00:00Z")
    assert errors(V.validate(doc)) == []
    doc["entry"] = doc["entry"][:2]  # the author is no longer in the document
    assert paths(errors(V.validate(doc))) == ["Bundle.entry[0].resource.author[0].reference"]
    doc["entry"].reverse()  # a document starts with its Composition
    assert any("bdl-11" in i.diagnostics for i in errors(V.validate(doc)))


def test_unresolved_urn_in_a_collection_is_a_warning() -> None:
    res = _bundle("collection", ("http://x/fhir/Observation/o1", _obs(
        subject={"reference": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"})))
    issues = V.validate(res)
    assert errors(issues) == []
    assert "Bundle.entry[0].resource.subject.reference" in paths(warnings(issues))
