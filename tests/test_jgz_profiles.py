"""The JGZ profiles in `profiles/` (issue #4), enforced through the HTTP API.

Every profile gets a conforming example (201, `meta.profile` kept) and non-conforming ones that
each break a different rule (422, the element in `issue[0].expression`, the BDS element number
in the diagnostics where the element is mapped). Only test BSNs that pass the 11-test are used,
plus 123456789, which fails it and must never be echoed back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ekd.api.app import PROJECT_DEFINITIONS
from ekd.definitions.seed import seed
from ekd.interaction.base import Services
from ekd.jgz import BDS_ELEMENTS, profile_url, value_list_system

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
URA = "http://fhir.nl/fhir/NamingSystem/ura"
AGB = "http://fhir.nl/fhir/NamingSystem/agb-z"
UZI = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers"
BIG = "http://fhir.nl/fhir/NamingSystem/big"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
TEST_BSNS = ["999901795", "111222333", "999900183", "999911880", "999912045"]
FAILING_BSN = "123456789"
#: Subject of every example: made before each test by the `child` fixture.
SUBJECT = "Patient/jgz-child"

#: Binding checks against a BDS value list whose CodeSystem in `terminology/` is a fragment
#: (only the codes seen in transfer messages): an unknown code cannot be reported there, so the
#: test waits for the complete list. Strict: once the list is complete the test passes, the
#: xfail turns into a failure, and the marker must go.
FRAGMENT = pytest.mark.xfail(
    reason="BINDING TEST: the terminology/ CodeSystem of this BDS value list is "
           "content=fragment, so the validator cannot reject an unknown code yet; passes once "
           "the complete value list lands", strict=True)


def vl(n: int) -> str:
    return value_list_system(n)


def meta(profile_id: str) -> dict:
    return {"profile": [profile_url(profile_id)]}


def cc(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# -- conforming examples -----------------------------------------------------------------------


def patient(bsn: str = "999901795") -> dict:
    return {
        "resourceType": "Patient", "meta": meta("jgz-Patient"),
        "identifier": [{"system": BSN, "value": bsn}],
        "name": [{"family": "Jansen", "given": ["Sanne"]}], "gender": "female",
        "birthDate": "2024-03-04",
        "address": [{"city": "Utrecht", "postalCode": "3511AB"}],
    }


def related_person() -> dict:
    return {
        "resourceType": "RelatedPerson", "meta": meta("jgz-RelatedPerson"),
        "identifier": [{"system": BSN, "value": "111222333"}],
        "patient": {"reference": SUBJECT},
        "relationship": [cc("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH")],
        "name": [{"family": "Jansen", "given": ["Anna"]}], "birthDate": "1990-06-01",
    }


def organization() -> dict:
    return {
        "resourceType": "Organization", "meta": meta("jgz-Organization"),
        "identifier": [{"system": URA, "value": "12345678"},
                       {"system": AGB, "value": "07123456"}],
        "name": "GGD Regio Utrecht",
    }


def practitioner() -> dict:
    return {
        "resourceType": "Practitioner", "meta": meta("jgz-Practitioner"),
        "identifier": [{"system": UZI, "value": "123456789"},
                       {"system": BIG, "value": "19012345601"}],
        "name": [{"family": "de Vries"}],
    }


def practitioner_role() -> dict:
    return {
        "resourceType": "PractitionerRole", "meta": meta("jgz-PractitionerRole"),
        "practitioner": {"reference": "Practitioner/jgz-arts"},
        "organization": {"reference": "Organization/jgz-ggd"},
        "code": [cc(SCT, "158973009", "Jeugdarts")],
    }


def episode_of_care() -> dict:
    return {
        "resourceType": "EpisodeOfCare", "meta": meta("jgz-EpisodeOfCare"),
        "identifier": [{"system": "urn:oid:2.16.528.1.1007.3.3.12345678.1", "value": "D-0042"}],
        "status": "active",
        "type": [cc(vl(376), "01", "Regulier")],
        "patient": {"reference": SUBJECT},
        "managingOrganization": {"reference": "Organization/jgz-ggd"},
        "period": {"start": "2024-03-10"},
    }


def encounter() -> dict:
    return {
        "resourceType": "Encounter", "meta": meta("jgz-Encounter"),
        "identifier": [{"system": "urn:oid:2.16.528.1.1007.3.3.12345678.2", "value": "act-1"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [cc(vl(308), "37", "Contact week 2 t/m 6 maanden"),
                 cc(vl(424), "03"), cc(vl(434), "01", "Gerealiseerd")],
        "subject": {"reference": SUBJECT},
        "participant": [{"individual": {"reference": "Practitioner/jgz-arts"}}],
        "period": {"start": "2024-05-01T10:00:00+02:00"},
    }


VITAL = [cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")]


def measurement(profile_id: str, loinc: str | None, bds: str, value: float, unit: str, *,
                vital: bool = True) -> dict:
    coding = [{"system": LOINC, "code": loinc}] if loinc else []
    coding.append({"system": BDS_ELEMENTS, "code": bds})
    resource: dict = {"resourceType": "Observation", "meta": meta(profile_id),
                      "status": "final"}
    if vital:
        resource["category"] = copy.deepcopy(VITAL)
    resource.update({
        "code": {"coding": coding}, "subject": {"reference": SUBJECT},
        "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    })
    return resource


def body_height(value: float = 61.5, unit: str = "cm") -> dict:
    return measurement("jgz-BodyHeight", "8302-2", "235", value, unit)


def body_weight(value: float = 6020, unit: str = "g") -> dict:
    return measurement("jgz-BodyWeight", "29463-7", "245", value, unit)


def head_circumference(value: float = 410, unit: str = "mm") -> dict:
    return measurement("jgz-HeadCircumference", "9843-4", "252", value, unit)


def birth_weight(value: float = 3450, unit: str = "g") -> dict:
    return measurement("jgz-BirthWeight", "8339-4", "110", value, unit, vital=False)


def gestational_age(value: float = 280, unit: str = "d") -> dict:
    return measurement("jgz-GestationalAge", None, "82", value, unit, vital=False)


def coded_observation(profile_id: str, bds: str, value: dict, **extra: object) -> dict:
    resource: dict = {
        "resourceType": "Observation", "meta": meta(profile_id), "status": "final",
        "code": cc(BDS_ELEMENTS, bds), "subject": {"reference": SUBJECT},
        "effectiveDateTime": "2024-05-01", "valueCodeableConcept": value,
    }
    resource.update(extra)
    return resource


def van_wiechen(bds: str = "886", system: str = vl(343), code: str = "3") -> dict:
    """886 '4. Kijkt naar eigen handen (M)': an (M) item, answered from W0438."""
    return coded_observation("jgz-VanWiechen", bds, cc(system, code), component=[
        {"code": cc(BDS_ELEMENTS, "1531"), "valueCodeableConcept": cc(vl(422), "03")}])


def hearing() -> dict:
    return coded_observation("jgz-HearingScreening", "439", cc(vl(325), "1", "Voldoende"),
                             bodySite=cc(SCT, "25577004"), method=cc(vl(386), "01", "OAE"))


def vision() -> dict:
    return coded_observation("jgz-VisionScreening", "841", cc(vl(153), "1", "+"),
                             bodySite=cc(SCT, "8966001"))


def immunization() -> dict:
    return {
        "resourceType": "Immunization", "meta": meta("jgz-Immunization"), "status": "completed",
        "vaccineCode": {"coding": [{"system": vl(76), "code": "01", "display": "DKTP"},
                                   {"system": SCT, "code": "871878002"}]},
        "patient": {"reference": SUBJECT}, "occurrenceDateTime": "2024-05-01",
        "lotNumber": "A123B", "reasonCode": [cc(vl(258), "01", "Rijksvaccinatieprogramma")],
    }


def transfer_consent(objection: bool = False) -> dict:
    code, kind, rule = ("1395", "deny", "OPTOUT") if objection else ("1163", "permit", "OPTIN")
    return {
        "resourceType": "Consent", "meta": meta("jgz-TransferConsent"),
        "extension": [{"url": profile_url("jgz-consent-source"),
                       "valueCodeableConcept": cc(vl(435), "01", "Cliënt/Jeugdige")}],
        "status": "active",
        "scope": cc("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
        "category": [cc(BDS_ELEMENTS, code)],
        "patient": {"reference": SUBJECT}, "dateTime": "2024-05-01",
        "policyRule": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", rule),
        "provision": {"type": kind},
    }


EXAMPLES: dict[str, Callable[[], dict]] = {
    "jgz-Patient": patient, "jgz-RelatedPerson": related_person,
    "jgz-Organization": organization, "jgz-Practitioner": practitioner,
    "jgz-PractitionerRole": practitioner_role, "jgz-EpisodeOfCare": episode_of_care,
    "jgz-Encounter": encounter, "jgz-BodyHeight": body_height, "jgz-BodyWeight": body_weight,
    "jgz-HeadCircumference": head_circumference, "jgz-BirthWeight": birth_weight,
    "jgz-GestationalAge": gestational_age, "jgz-VanWiechen": van_wiechen,
    "jgz-HearingScreening": hearing, "jgz-VisionScreening": vision,
    "jgz-Immunization": immunization, "jgz-TransferConsent": transfer_consent,
}


@pytest.fixture
def child(client: TestClient) -> str:
    r = client.put("/fhir/Patient/jgz-child", json={**patient("999900183"), "id": "jgz-child"})
    assert r.status_code in (200, 201), r.text
    return SUBJECT


def post(client: TestClient, resource: dict):
    return client.post(f"/fhir/{resource['resourceType']}", json=resource)


# -- the profiles as files ---------------------------------------------------------------------


def test_every_profile_file_is_a_differential_constraint_with_bds_mappings() -> None:
    files = sorted(PROFILES.glob("StructureDefinition-*.json"))
    ids = {json.loads(f.read_text(encoding="utf-8"))["id"] for f in files}
    assert set(EXAMPLES) | {"jgz-consent-source"} <= ids
    for f in files:
        sd = json.loads(f.read_text(encoding="utf-8"))
        assert f.name == f"StructureDefinition-{sd['id']}.json"
        assert sd["url"] == profile_url(sd["id"])
        assert (sd["derivation"], sd["fhirVersion"], sd["version"], sd["status"],
                sd["publisher"]) == ("constraint", "4.0.1", "0.1.0", "draft", "ekd")
        assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"
        assert "snapshot" not in sd and sd["description"]
        assert {"identity": "bds", "name": "BDS", "uri": BDS_ELEMENTS}.items() <= \
            sd["mapping"][0].items()
        mapped = [e for e in sd["differential"]["element"]
                  if any(m["identity"] == "bds" for m in e.get("mapping", []))]
        assert mapped, sd["id"]


def test_profiles_are_known_to_the_server(services: Services) -> None:
    for pid in [*EXAMPLES, "jgz-consent-source"]:
        sd = services.definitions.structure_definition(profile_url(pid))
        assert sd is not None and sd["id"] == pid, pid


def test_profiles_are_served(client: TestClient, services: Services) -> None:
    # `ekd serve` stores profiles/ and terminology/ at start; here the test does it.
    assert seed(services, PROJECT_DEFINITIONS).failed == []
    for pid in EXAMPLES:
        r = client.get(f"/fhir/StructureDefinition/{pid}")
        assert r.status_code == 200, pid
        assert r.json()["url"] == profile_url(pid)


# -- conforming examples -----------------------------------------------------------------------


@pytest.mark.parametrize("profile_id", list(EXAMPLES))
def test_conforming_example_is_created(client: TestClient, child: str, profile_id: str) -> None:
    r = post(client, EXAMPLES[profile_id]())
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["profile"] == [profile_url(profile_id)]


@pytest.mark.parametrize("bsn", TEST_BSNS)
def test_test_bsns_pass_the_11_test(client: TestClient, bsn: str) -> None:
    assert post(client, patient(bsn)).status_code == 201


@pytest.mark.parametrize("example", [
    lambda: body_height(615, "mm"),
    lambda: body_weight(6.02, "kg"), lambda: head_circumference(41, "cm"),
    lambda: birth_weight(3.45, "kg"), lambda: gestational_age(40, "wk"),
    lambda: van_wiechen("879", vl(153), "1"), lambda: transfer_consent(objection=True),
], ids=["height-mm", "weight-kg", "head-cm", "birth-weight-kg",
        "gestation-wk", "vw-plain-item", "consent-objection"])
def test_other_units_and_variants(client: TestClient, child: str, example) -> None:
    r = post(client, example())
    assert r.status_code == 201, r.text


# -- non-conforming examples -------------------------------------------------------------------


def _set(path: str, value: object) -> Callable[[dict], None]:
    """`a.0.b` = value (value `...` deletes)."""
    def apply(resource: dict) -> None:
        *parents, last = path.split(".")
        node: object = resource
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]  # type: ignore[index]
        key: int | str = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]  # type: ignore[arg-type, union-attr]
        else:
            node[key] = value  # type: ignore[index]
    return apply


def _do(*steps: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(resource: dict) -> None:
        for step in steps:
            step(resource)
    return apply


# (profile, case id, change, expected issue[0].expression, expected diagnostics prefix or None)
BAD: list = [
    # Patient
    ("jgz-Patient", "bsn-fails-11-test", _set("identifier.0.value", FAILING_BSN),
     "Patient.identifier[0]", "BDS 7 (BSN): "),
    ("jgz-Patient", "no-bsn", _set("identifier.0.system", URA), "Patient.identifier",
     "BDS 7 (BSN): "),
    ("jgz-Patient", "two-bsns",
     _set("identifier", [{"system": BSN, "value": "999901795"},
                         {"system": BSN, "value": "111222333"}]),
     "Patient.identifier", "BDS 7 (BSN): "),
    ("jgz-Patient", "no-family-name", _set("name.0.family", ...), "Patient.name[0].family",
     "BDS 4 (Geslachtsnaam): "),
    ("jgz-Patient", "no-birth-date", _set("birthDate", ...), "Patient.birthDate",
     "BDS 20 (Geboortedatum): "),
    # RelatedPerson
    ("jgz-RelatedPerson", "no-relationship", _set("relationship", ...),
     "RelatedPerson.relationship", "BDS 62 "),
    ("jgz-RelatedPerson", "parent-bsn-fails-11-test", _set("identifier.0.value", FAILING_BSN),
     "RelatedPerson.identifier[0]", "BDS 655 (BSN ouder/verzorger): "),
    # Organization
    ("jgz-Organization", "no-ura-or-agb",
     _set("identifier", [{"system": "urn:oid:1.2.3", "value": "x"}]), "Organization",
     "BDS R005 "),
    ("jgz-Organization", "no-name", _set("name", ...), "Organization.name", "BDS 1506 "),
    ("jgz-Organization", "two-ura",
     _set("identifier", [{"system": URA, "value": "1"}, {"system": URA, "value": "2"}]),
     "Organization.identifier", "BDS 603 "),
    # Practitioner
    ("jgz-Practitioner", "no-uzi-big-agb",
     _set("identifier", [{"system": "urn:oid:1.2.3", "value": "x"}]), "Practitioner",
     "BDS R018 "),
    ("jgz-Practitioner", "uzi-without-value", _set("identifier.0.value", ...),
     "Practitioner.identifier[0].value", "BDS 730 "),
    # PractitionerRole
    ("jgz-PractitionerRole", "no-practitioner", _set("practitioner", ...),
     "PractitionerRole.practitioner", "BDS R018 "),
    ("jgz-PractitionerRole", "no-discipline", _set("code", ...), "PractitionerRole.code",
     "BDS R018 "),
    # EpisodeOfCare
    ("jgz-EpisodeOfCare", "no-dossier-number", _set("identifier", ...),
     "EpisodeOfCare.identifier", "BDS 695 (Dossiernummer): "),
    ("jgz-EpisodeOfCare", "no-status-in-zorg", _set("type", [cc(SCT, "1234")]),
     "EpisodeOfCare.type", "BDS 1197 (Status in zorg): "),
    ("jgz-EpisodeOfCare", "no-start-date", _set("period", {"end": "2030-01-01"}),
     "EpisodeOfCare.period.start", "BDS 1330 (Datum start zorg): "),
    ("jgz-EpisodeOfCare", "no-managing-organisation", _set("managingOrganization", ...),
     "EpisodeOfCare.managingOrganization", "BDS R005 "),
    # Encounter
    ("jgz-Encounter", "no-activity-id", _set("identifier", ...), "Encounter.identifier",
     "BDS 1377 (Activiteit ID): "),
    ("jgz-Encounter", "no-soort", _set("type.0", cc(SCT, "1234")), "Encounter.type",
     "BDS 494 (Soort activiteit): "),
    ("jgz-Encounter", "no-vorm", _set("type.1", cc(SCT, "1234")), "Encounter.type",
     "BDS 1577 (Vorm activiteit): "),
    ("jgz-Encounter", "no-date", _set("period", {"end": "2024-05-01"}),
     "Encounter.period.start", "BDS 724 (Datum activiteit): "),
    ("jgz-Encounter", "bds-status-contradicts-status", _set("status", "cancelled"),
     "Encounter", "BDS R018 (Activiteit): "),
    # growth
    ("jgz-BodyHeight", "zero", _set("valueQuantity.value", 0),
     "Observation.value.ofType(Quantity)", "BDS 235 (Lengte): "),
    ("jgz-BodyHeight", "over-300-cm-in-mm", _do(_set("valueQuantity.value", 3010),
                                                _set("valueQuantity.code", "mm"),
                                                _set("valueQuantity.unit", "mm")),
     "Observation.value.ofType(Quantity)", "BDS 235 (Lengte): "),
    ("jgz-BodyHeight", "over-300-cm", _set("valueQuantity.value", 301),
     "Observation.value.ofType(Quantity)", "BDS 235 (Lengte): "),
    ("jgz-BodyHeight", "weight-unit", _do(_set("valueQuantity.code", "kg"),
                                          _set("valueQuantity.unit", "kg")),
     "Observation.value.ofType(Quantity)", "BDS 235 (Lengte): "),
    ("jgz-BodyHeight", "no-bds-coding", _set("code.coding.1", ...), "Observation.code.coding",
     "BDS 235 (Lengte): "),
    ("jgz-BodyHeight", "no-effective", _set("effectiveDateTime", ...),
     "Observation.effective", "BDS 724 "),
    ("jgz-BodyWeight", "negative", _set("valueQuantity.value", -5),
     "Observation.value.ofType(Quantity)", "BDS 245 (Gewicht): "),
    ("jgz-BodyWeight", "over-500-kg-in-g", _set("valueQuantity.value", 500001),
     "Observation.value.ofType(Quantity)", "BDS 245 (Gewicht): "),
    ("jgz-BodyWeight", "no-loinc", _set("code.coding.0", ...), "Observation.code.coding",
     None),
    ("jgz-HeadCircumference", "over-100-cm-in-mm", _set("valueQuantity.value", 1001),
     "Observation.value.ofType(Quantity)", "BDS 252 (Hoofdomtrek): "),
    ("jgz-HeadCircumference", "no-subject", _set("subject", ...), "Observation.subject",
     None),
    ("jgz-BirthWeight", "zero", _set("valueQuantity.value", 0),
     "Observation.value.ofType(Quantity)", "BDS 110 (Geboortegewicht): "),
    ("jgz-BirthWeight", "no-value", _set("valueQuantity", ...), "Observation.value",
     "BDS 110 (Geboortegewicht): "),
    ("jgz-GestationalAge", "months", _do(_set("valueQuantity.code", "mo"),
                                         _set("valueQuantity.unit", "mo")),
     "Observation.value.ofType(Quantity)", "BDS 82 (Zwangerschapsduur): "),
    ("jgz-GestationalAge", "zero-days", _set("valueQuantity.value", 0),
     "Observation.value.ofType(Quantity)", "BDS 82 (Zwangerschapsduur): "),
    ("jgz-GestationalAge", "other-bds-element", _set("code.coding.0.code", "110"),
     "Observation.code.coding[0].code", "BDS 82 (Zwangerschapsduur): "),
    # Van Wiechen
    # the required binding of the code (ValueSet jgz-vanwiechen-items) names the coding itself
    ("jgz-VanWiechen", "not-a-milestone", _set("code.coding.0.code", "235"),
     "Observation.code.coding[0].code", "BDS R042 "),
    ("jgz-VanWiechen", "plain-item-with-m-list", _set("code.coding.0.code", "879"),
     "Observation", "BDS R042 "),
    ("jgz-VanWiechen", "m-item-with-plain-list",
     _set("valueCodeableConcept", cc(vl(153), "1")), "Observation", "BDS R042 "),
    ("jgz-VanWiechen", "no-value", _set("valueCodeableConcept", ...), "Observation.value",
     "BDS R042 "),
    # hearing / vision
    ("jgz-HearingScreening", "left-ear-for-right-result", _set("bodySite", cc(SCT, "89644007")),
     "Observation", "BDS R040 "),
    ("jgz-HearingScreening", "not-a-hearing-element", _set("code.coding.0.code", "840"),
     "Observation.code.coding[0].code", "BDS R040 "),
    ("jgz-HearingScreening", "no-subject", _set("subject", ...), "Observation.subject", None),
    ("jgz-VisionScreening", "visus-list-for-fundus-reflex",
     _set("valueCodeableConcept", cc(vl(428), "01")), "Observation", "BDS R038 "),
    ("jgz-VisionScreening", "no-side", _set("bodySite", ...), "Observation", "BDS R038 "),
    # Immunization
    ("jgz-Immunization", "no-rivm-vaccine", _set("vaccineCode.coding.0", ...),
     "Immunization.vaccineCode.coding", "BDS 461 (Soort vaccinatie): "),
    ("jgz-Immunization", "date-as-text",
     _do(_set("occurrenceDateTime", ...), _set("occurrenceString", "mei 2024")),
     "Immunization.occurrence", "BDS 1409 (Datum vaccinatie): "),
    ("jgz-Immunization", "objection-on-given-vaccination",
     _set("statusReason", cc(vl(394), "1")), "Immunization", "BDS G076 "),
    # TransferConsent
    ("jgz-TransferConsent", "no-date", _set("dateTime", ...), "Consent.dateTime",
     "BDS 1349 "),
    ("jgz-TransferConsent", "no-source", _set("extension", ...), "Consent.extension",
     "BDS 1164 "),
    ("jgz-TransferConsent", "consent-as-deny", _set("provision.type", "deny"), "Consent",
     "BDS R010 "),
    ("jgz-TransferConsent", "no-consent-or-objection-category",
     _set("category", [cc(LOINC, "59284-0")]), "Consent.category", "BDS G011 "),
]

#: Required bindings to BDS value lists (complete CodeSystems in terminology/): the unknown code
#: is reported first (issue[0], at the coding's code, by the base CodeableConcept check, so
#: without the BDS label), then the binding on the profiled element, with the BDS label.
BAD_BINDINGS: list = [
    ("jgz-Encounter", "status-not-in-bds-list", _set("type.2", cc(vl(434), "99")),
     "Encounter.type[2]", "BDS 1605 (Status activiteit): "),
    ("jgz-HearingScreening", "result-not-in-list",
     _set("valueCodeableConcept", cc(vl(325), "3")),
     "Observation.value.ofType(CodeableConcept)", "BDS R040 "),
    ("jgz-Immunization", "objection-not-in-list",
     _do(_set("status", "not-done"), _set("statusReason", cc(vl(394), "7"))),
     "Immunization.statusReason", "BDS 683 (Bezwaar): "),
    ("jgz-VanWiechen", "m-answer-not-in-w0438", _set("valueCodeableConcept", cc(vl(343), "4")),
     "Observation", "BDS R042 "),
]

#: Binding checks on BDS value lists that are fragments in terminology/ (see FRAGMENT).
BAD_FRAGMENT_BINDINGS: list = [
    ("jgz-EpisodeOfCare", "status-in-zorg-not-in-list", _set("type.0", cc(vl(376), "77")),
     "EpisodeOfCare.type[0]", "BDS 1197 (Status in zorg): "),
    ("jgz-Encounter", "soort-not-in-bds-list", _set("type.0", cc(vl(308), "99")),
     "Encounter.type[0]", "BDS 494 (Soort activiteit): "),
    ("jgz-Immunization", "vaccine-not-in-rivm-list", _set("vaccineCode.coding.0.code", "99"),
     "Immunization.vaccineCode.coding[0]", "BDS 461 (Soort vaccinatie): "),
    ("jgz-VanWiechen", "column-not-in-list",
     _set("component.0.valueCodeableConcept", cc(vl(422), "77")),
     "Observation.component[0].value.ofType(CodeableConcept)", "BDS 1531 "),
    ("jgz-TransferConsent", "source-not-in-list",
     _set("extension.0.valueCodeableConcept", cc(vl(435), "77")),
     "Consent.extension[0].value.ofType(CodeableConcept)", "BDS 1164 "),
]


def _check_rejected(client: TestClient, profile_id: str, change, expression: str,
                    label: str | None) -> None:
    resource = EXAMPLES[profile_id]()
    change(resource)
    r = post(client, resource)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert issue["expression"] == [expression], issue
    if label is not None:
        assert issue["diagnostics"].startswith(label), issue["diagnostics"]
    assert FAILING_BSN not in r.text


@pytest.mark.parametrize(("profile_id", "case", "change", "expression", "label"), BAD,
                         ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_nonconforming_example_is_rejected(client: TestClient, child: str, profile_id: str,
                                           case: str, change, expression: str,
                                           label: str | None) -> None:
    _check_rejected(client, profile_id, change, expression, label)


@pytest.mark.parametrize(
    ("profile_id", "case", "change", "expression", "label"),
    [*BAD_BINDINGS, *(pytest.param(*b, marks=FRAGMENT) for b in BAD_FRAGMENT_BINDINGS)],
    ids=[f"{b[0]}-{b[1]}" for b in [*BAD_BINDINGS, *BAD_FRAGMENT_BINDINGS]])
def test_code_outside_the_bds_value_list_is_rejected(client: TestClient, child: str,
                                                    profile_id: str, case: str, change,
                                                    expression: str, label: str) -> None:
    resource = EXAMPLES[profile_id]()
    change(resource)
    r = post(client, resource)
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    assert issues[0]["severity"] == "error"
    assert issues[0]["expression"][0].startswith(expression.split(".ofType")[0]), issues[0]
    assert any(i["expression"] == [expression] and i["diagnostics"].startswith(label)
               for i in issues if i["severity"] == "error"), issues


def test_every_profile_has_two_different_failing_rules() -> None:
    """Counted over the cases that fail today (not the fragment bindings); each case breaks
    its own rule (another element, invariant or binding)."""
    per_profile: dict[str, set[str]] = {}
    for profile_id, case, _change, _expression, _label in [*BAD, *BAD_BINDINGS]:
        per_profile.setdefault(profile_id, set()).add(case)
    for profile_id in EXAMPLES:
        assert len(per_profile.get(profile_id, ())) >= 2, profile_id


def test_failing_bsn_is_never_echoed(client: TestClient) -> None:
    for path in ("/fhir/Patient", "/fhir/Patient/$validate"):
        r = client.post(path, json=patient(FAILING_BSN))
        assert FAILING_BSN not in r.text
        assert "11-test" in r.text
