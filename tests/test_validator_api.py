"""ProfileValidator as a service: profiles it picks, registry changes, threads, the JGZ test
profiles, QuestionnaireResponses."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from test_validator__kit import (
    JGZ,
    TEST,
    FakeTerminology,
    errors,
    paths,
    patient,
    profile,
    registry,
    validator,
    warnings,
)

from ekd.validation import Validator
from ekd.validation.validator import ProfileValidator

NEEDS_NAME = profile("Patient", [{"id": "Patient.name", "path": "Patient.name", "min": 1}],
                     name="needs-name")


def test_is_a_validator() -> None:
    v: Validator = validator()
    assert v.validate(patient()) == [] or not errors(v.validate(patient()))


def test_meta_profile_and_extra_profiles_are_applied() -> None:
    v = validator(NEEDS_NAME)
    declared = patient(meta={"profile": [NEEDS_NAME["url"]]})
    assert paths(errors(v.validate(declared))) == ["Patient.name"]
    assert errors(v.validate(patient())) == []
    assert paths(errors(v.validate(patient(), profiles=[NEEDS_NAME["url"]]))) == ["Patient.name"]


def test_unknown_declared_profile_is_a_warning_unknown_requested_profile_an_error() -> None:
    v = validator()
    res = patient(meta={"profile": [TEST + "nowhere"]})
    assert errors(v.validate(res)) == []
    assert any("nowhere" in w.diagnostics for w in warnings(v.validate(res)))
    assert errors(v.validate(patient(), profiles=[TEST + "nowhere"]))


def test_profile_for_another_type_is_an_error() -> None:
    v = validator(NEEDS_NAME)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "meta": {"profile": [NEEDS_NAME["url"]]}}
    assert errors(v.validate(obs))


def test_unknown_resource_type() -> None:
    assert errors(validator().validate({"resourceType": "Chicken"}))
    assert errors(validator().validate({"id": "x"}))


def test_registry_changes_invalidate_compiled_profiles() -> None:
    r = registry(NEEDS_NAME)
    v = ProfileValidator(r)
    assert paths(errors(v.validate(patient(), [NEEDS_NAME["url"]]))) == ["Patient.name"]
    relaxed = json.loads(json.dumps(NEEDS_NAME))
    relaxed["differential"]["element"][1] = {"id": "Patient.gender", "path": "Patient.gender",
                                             "min": 1}
    r.add(relaxed)
    assert paths(errors(v.validate(patient(), [NEEDS_NAME["url"]]))) == ["Patient.gender"]


def test_thread_safe() -> None:
    v = validator(NEEDS_NAME)
    good = patient(name=[{"family": "x"}])
    bad = patient()

    def run(i: int) -> int:
        return len(errors(v.validate(good if i % 2 else bad, [NEEDS_NAME["url"]])))

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(run, range(200)))
    assert counts == [0 if i % 2 else 1 for i in range(200)]


def _jgz() -> tuple[ProfileValidator, dict]:
    r = registry(package=True)
    r.load_dir(JGZ)
    from ekd.terminology.service import TerminologyService

    return ProfileValidator(r, TerminologyService(r)), json.loads(
        (JGZ / "examples.json").read_text())


def test_jgz_examples_conform_and_violations_name_bds() -> None:
    v, examples = _jgz()
    for rtype, res in examples.items():
        assert errors(v.validate(res)) == [], rtype
    pat = json.loads(json.dumps(examples["Patient"]))
    del pat["identifier"][0]["value"]
    issues = errors(v.validate(pat))
    assert any(i.diagnostics.startswith("BDS 7 (BSN): Patient.identifier[0].value") for i in
               issues), issues
    imm = json.loads(json.dumps(examples["Immunization"]))
    imm["vaccineCode"]["coding"][0]["code"] = "GRIEP"
    issues = errors(v.validate(imm))
    assert "Immunization.vaccineCode" in paths(issues)
    obs = json.loads(json.dumps(examples["Observation"]))
    obs["valueQuantity"]["value"] = 300
    assert "Observation.value.ofType(Quantity).value" in paths(errors(v.validate(obs)))


def test_questionnaire_response_against_its_questionnaire() -> None:
    q = {"resourceType": "Questionnaire", "url": "http://ekd.test/Questionnaire/q",
         "status": "active", "item": [
             {"linkId": "1", "type": "integer", "required": True},
             {"linkId": "2", "type": "choice", "answerOption": [
                 {"valueCoding": {"system": "http://x", "code": "a"}}]},
         ]}
    v = ProfileValidator(registry(), FakeTerminology(),
                         resolve_canonical=lambda url, t: q if url == q["url"] else None)
    qr = {"resourceType": "QuestionnaireResponse", "status": "completed",
          "questionnaire": q["url"], "item": [
              {"linkId": "1", "answer": [{"valueInteger": 3}]},
              {"linkId": "2", "answer": [{"valueCoding": {"system": "http://x", "code": "a"}}]}]}
    assert errors(v.validate(qr)) == []
    qr["item"][0]["answer"] = [{"valueString": "3"}]
    qr["item"][1]["answer"][0]["valueCoding"]["code"] = "b"
    qr["item"].append({"linkId": "9"})
    assert sorted(paths(errors(v.validate(qr)))) == [
        "QuestionnaireResponse.item[0].answer[0].value.ofType(string)",
        "QuestionnaireResponse.item[1].answer[0]", "QuestionnaireResponse.item[2]"]
    qr["item"] = qr["item"][1:2]
    assert any("required item '1'" in i.diagnostics for i in errors(v.validate(qr)))
