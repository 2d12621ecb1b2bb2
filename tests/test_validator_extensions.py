"""Extensions: checked against their own definition by url; unknown ones; modifier extensions;
the extension's context; nested (complex) extensions; primitive extensions."""

from __future__ import annotations

from test_validator__kit import TEST, errors, extension, paths, patient, validator, warnings

NICK = extension("nickname", ["string"], context=["HumanName"])
FLAG = extension("flag", ["boolean"], context=["Patient"], modifier=True)
ANY = extension("any", ["string"], context=["Element"])
V = validator(NICK, FLAG, ANY)


def _name_ext(value: dict) -> dict:
    return patient(name=[{"family": "Jansen", "extension": [{"url": TEST + "nickname",
                                                             **value}]}])


def test_known_extension_is_checked_against_its_definition() -> None:
    assert errors(V.validate(_name_ext({"valueString": "Piet"}))) == []
    issues = errors(V.validate(_name_ext({"valueInteger": 3})))
    assert set(paths(issues)) == {"Patient.name[0].extension[0].value"}
    issues = errors(V.validate(_name_ext({})))  # value[x] is required by the definition
    assert issues


def test_extension_context() -> None:
    wrong_place = patient(extension=[{"url": TEST + "nickname", "valueString": "x"}])
    issues = errors(V.validate(wrong_place))
    assert paths(issues) == ["Patient.extension[0]"] and "not allowed" in issues[0].diagnostics
    anywhere = patient(extension=[{"url": TEST + "any", "valueString": "x"}],
                       _birthDate={"extension": [{"url": TEST + "any", "valueString": "y"}]},
                       birthDate="2020")
    assert errors(V.validate(anywhere)) == []


def test_unknown_extension_severity() -> None:
    res = patient(extension=[{"url": "http://elsewhere.example/x", "valueString": "x"}])
    assert paths(errors(V.validate(res))) == ["Patient.extension[0]"]  # Java's default
    lenient = validator(NICK, unknown_extensions="warning")
    assert errors(lenient.validate(res)) == []
    assert "Patient.extension[0]" in paths(warnings(lenient.validate(res)))


def test_unknown_modifier_extension_is_always_an_error() -> None:
    lenient = validator(FLAG, unknown_extensions="warning")
    res = patient(modifierExtension=[{"url": "http://elsewhere.example/m", "valueBoolean": True}])
    assert paths(errors(lenient.validate(res))) == ["Patient.modifierExtension[0]"]
    known = patient(modifierExtension=[{"url": TEST + "flag", "valueBoolean": True}])
    assert errors(lenient.validate(known)) == []
    misplaced = patient(extension=[{"url": TEST + "flag", "valueBoolean": True}])
    assert paths(errors(lenient.validate(misplaced))) == ["Patient.extension[0]"]


def test_extension_shape_rules() -> None:
    both = patient(extension=[{"url": TEST + "any", "valueString": "x",
                               "extension": [{"url": TEST + "any", "valueString": "y"}]}])
    assert any("ext-1" in i.diagnostics for i in errors(V.validate(both)))
    no_url = patient(extension=[{"valueString": "x"}])
    assert paths(errors(V.validate(no_url))) == ["Patient.extension[0]"]
    versioned = patient(extension=[{"url": TEST + "any|1.0", "valueString": "x"}])
    assert any("version" in i.diagnostics for i in errors(V.validate(versioned)))


def test_complex_extension_from_the_r4_package() -> None:
    v = validator(package=True)
    url = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
    good = patient(extension=[{"url": url, "extension": [
        {"url": "code", "valueCodeableConcept": {"text": "NL"}}]}])
    assert errors(v.validate(good)) == []
    bad = patient(extension=[{"url": url, "extension": [{"url": "code", "valueString": "NL"}]}])
    assert set(paths(errors(v.validate(bad)))) == {"Patient.extension[0].extension[0].value"}
