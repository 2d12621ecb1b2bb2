"""FHIR R4 search through the REST API, on both backends (http://hl7.org/fhir/R4/search.html).

Every test loads a small hand-made data set (client-chosen ids through update-as-create, so the
expected ids can be written down) and checks the exact set of matches. Each `expect` call runs
a table of queries and reports every mismatch at once, so one failure names all wrong queries.

The expected results follow the spec's rules, quoted where they decide a case:

- string: "a field matches a string query if the value of the field equals or starts with the
  supplied parameter value, after both have been normalized by case and accent".
- prefixes on ranges (#prefix): eq "the range of the search value fully contains the range of
  the target value"; gt "the range above the search value intersects (i.e. overlaps) with the
  range of the target value"; ge is gt or eq; sa "the range of the search value does not
  overlap with the range of the target value, and the range above the search value contains
  the range of the target value"; eb likewise below; ap "approximately ... 10% of the stated
  value (or for a date, 10% of the gap between now and the date)".
- token :not: "The search parameter returns resources that do not contain a match"
  (search-modifier-code), so resources without a value match too.
- reference (#reference): "A relative reference resolving to the same value as a specified
  absolute URL, or vice versa, qualifies as a match."
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from fastapi.testclient import TestClient

from tests.fhir_helpers import BSN_SYSTEM, JSON

BASE = "http://testserver/fhir"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SUBSETTED = "SUBSETTED"


# -- helpers ---------------------------------------------------------------------------------


def put(client: TestClient, resource: dict) -> dict:
    """Update-as-create with the id the test chose."""
    r = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                   headers={"Content-Type": JSON})
    assert r.status_code in (200, 201), r.text
    return r.json()


def load(client: TestClient, *resources: dict) -> None:
    for resource in resources:
        put(client, resource)


def get(client: TestClient, url: str, **headers: str) -> dict:
    r = client.get(url if url.startswith("http") else f"/fhir/{url}", headers=headers)
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text}"
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def entries(bundle: dict, mode: str = "match") -> list[dict]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in entries(bundle, "match")]


def included(bundle: dict) -> list[str]:
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}"
                  for e in entries(bundle, "include"))


def link(bundle: dict, relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            return item["url"]
    return None


def mismatches(client: TestClient, rtype: str, cases: dict[str, list[str]]) -> list[str]:
    """Run `rtype?query` for every query and compare the matched ids (sorted, so a duplicate
    is a mismatch too); one line per wrong query."""
    wrong = []
    for query, expected in cases.items():
        r = client.get(f"/fhir/{rtype}?{query}")
        if r.status_code != 200:
            wrong.append(f"{rtype}?{query}: HTTP {r.status_code} {r.text[:300]}")
            continue
        got = match_ids(r.json())
        if sorted(got) != sorted(expected):
            wrong.append(f"{rtype}?{query}: expected {sorted(expected)}, got {sorted(got)}")
    return wrong


def expect(client: TestClient, rtype: str, cases: dict[str, list[str]]) -> None:
    wrong = mismatches(client, rtype, cases)
    assert not wrong, "\n" + "\n".join(wrong)


def expect_400(client: TestClient, url: str, parameter: str) -> dict:
    r = client.get(f"/fhir/{url}")
    assert r.status_code == 400, f"{url}: {r.status_code} {r.text}"
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    expressions = [x for issue in outcome["issue"] for x in issue.get("expression", [])]
    assert any(x == parameter or x.startswith(f"{parameter}:") or x.startswith(f"{parameter}.")
               for x in expressions), (url, outcome)
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    return outcome


def patient(pid: str, **fields: object) -> dict:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(oid: str, code: str | None = "8302-2", system: str | None = LOINC,
                **fields: object) -> dict:
    coding: dict = {"code": code}
    if system is not None:
        coding["system"] = system
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [coding]}, **fields}


def qty(value: float, code: str | None, system: str | None = UCUM) -> dict:
    """A Quantity; without a system only the human-readable unit (qty-3)."""
    q: dict = {"value": value}
    if code is not None:
        q["unit"] = code
        if system is not None:
            q.update(system=system, code=code)
    return q


# -- string ----------------------------------------------------------------------------------


def test_string_prefix_case_accent_exact_contains_name_and_address(client: TestClient) -> None:
    load(
        client,
        patient("ozturk", name=[{"family": "Öztürk", "given": ["Ayşe"]}],
                address=[{"line": ["Laan van Meerdervoort 1"], "city": "Den Haag",
                          "postalCode": "2517 AA", "country": "NL"}]),
        patient("jansen", name=[{"family": "Jansen", "given": ["Sophie", "Marie"],
                                 "prefix": ["Dr."]}],
                address=[{"city": "Amsterdam", "postalCode": "1011 AB"}]),
        patient("janssens", name=[{"family": "Janssens", "given": ["Pieter"]}],
                address=[{"city": "Rotterdam"}]),
        patient("noname", gender="unknown"),
        patient("percent", name=[{"family": "Honderd%Zeker", "given": ["Mag_da"]}]),
    )
    expect(client, "Patient", {
        # default: starts-with after case and accent folding
        "name=ozt": ["ozturk"],
        "name=OZTÜRK": ["ozturk"],
        "family=%C3%B6zt%C3%BCrk": ["ozturk"],
        "family=jans": ["jansen", "janssens"],
        "family=Jansen": ["jansen"],
        "family=urk": [],  # not a prefix
        "given=ayse": ["ozturk"],
        "given=mar": ["jansen"],  # second given name
        "name=sophie": ["jansen"],  # name covers the given names
        "name=dr": ["jansen"],  # and the prefix
        "family=jansen,ozt": ["jansen", "ozturk"],  # OR
        "family=jans&given=pie": ["janssens"],  # AND
        # :exact is the whole string, case and accents included
        "family:exact=Jansen": ["jansen"],
        "family:exact=jansen": [],
        "family:exact=Jans": [],
        "family:exact=%C3%96zt%C3%BCrk": ["ozturk"],
        "family:exact=Ozturk": [],
        # :contains anywhere in the string
        "family:contains=ssen": ["janssens"],
        "family:contains=URK": ["ozturk"],
        "name:contains=iete": ["janssens"],
        # Address: any part
        "address=den": ["ozturk"],
        "address=laan%20van": ["ozturk"],
        "address=haag": [],  # "Den Haag" does not start with it
        "address:contains=haag": ["ozturk"],
        "address=amster": ["jansen"],
        "address-city=rotter": ["janssens"],
        "address-city=den%20haag": ["ozturk"],
        "address-postalcode=2517": ["ozturk"],
        "address-country=nl": ["ozturk"],
        "address:contains=meerdervoort": ["ozturk"],
        # LIKE wildcards in a value are plain characters
        "name:contains=%25": ["percent"],
        "given:contains=g_d": ["percent"],
        "given:contains=_": ["percent"],
        "family=honderd%25z": ["percent"],
        "family=j_n": [],
    })


# -- token -----------------------------------------------------------------------------------


def test_token_system_code_not_text(client: TestClient) -> None:
    load(
        client,
        {**observation("height-loinc"), "code": {"coding": [
            {"system": LOINC, "code": "8302-2", "display": "Body height"}]},
         "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}]},
        {**observation("weight-loinc"), "status": "amended", "code": {"coding": [
            {"system": LOINC, "code": "29463-7", "display": "Body weight"}]}},
        {**observation("height-nosystem"), "code": {"coding": [{"code": "8302-2"}],
                                                    "text": "Lengte"}},
        {**observation("height-snomed"), "code": {"coding": [
            {"system": SNOMED, "code": "50373000"}], "text": "Lichaamslengte"}},
    )
    expect(client, "Observation", {
        "code=8302-2": ["height-loinc", "height-nosystem"],
        f"code={LOINC}|8302-2": ["height-loinc"],
        "code=|8302-2": ["height-nosystem"],
        f"code={LOINC}|": ["height-loinc", "weight-loinc"],
        f"code={SNOMED}|50373000,{LOINC}|29463-7": ["height-snomed", "weight-loinc"],
        f"code={SNOMED}|8302-2": [],
        "code=8302": [],  # tokens are not prefixes
        f"code:not={LOINC}|8302-2": ["height-nosystem", "height-snomed", "weight-loinc"],
        # :not includes resources that have no category at all
        "category:not=vital-signs": ["height-nosystem", "height-snomed", "weight-loinc"],
        "category=vital-signs": ["height-loinc"],
        "status=amended": ["weight-loinc"],
        "status:not=final": ["weight-loinc"],
        # :text: Coding.display or CodeableConcept.text
        "code:text=body": ["height-loinc", "weight-loinc"],
        "code:text=BODY%20HEI": ["height-loinc"],
        "code:text=lengte": ["height-nosystem"],
        "code:text=lichaams": ["height-snomed"],
        "code=8302-2&status=final": ["height-loinc", "height-nosystem"],
    })


def test_token_identifier_of_type_telecom_and_boolean(client: TestClient) -> None:
    mr = {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record number"}
    ppn = {"coding": [{"system": V2_0203, "code": "PPN"}]}
    load(
        client,
        patient("mr", active=True, gender="female",
                identifier=[{"type": mr, "system": "http://hospital.example/mrn",
                             "value": "12345"},
                            {"system": BSN_SYSTEM, "value": "999901795"}],
                telecom=[{"system": "phone", "value": "0612345678"},
                         {"system": "email", "value": "mr@example.org"}]),
        patient("ppn", active=False, gender="male",
                identifier=[{"type": ppn, "system": "http://passport.example",
                             "value": "12345"}]),
        patient("plain", gender="other", identifier=[{"value": "12345"}]),
        patient("bare"),
        patient("escaped", identifier=[{"system": "urn:x", "value": "a,b|c$d"}]),
    )
    expect(client, "Patient", {
        "identifier=12345": ["mr", "plain", "ppn"],
        # \, \| and \$ escape the separators inside a value
        "identifier=urn:x|a%5C,b%5C|c%5C$d": ["escaped"],
        "identifier=a%5C,b%5C|c%5C$d": ["escaped"],
        "identifier=a%5C,b%5C|c%5C$d,12345": ["escaped", "mr", "plain", "ppn"],
        "identifier=http://hospital.example/mrn|12345": ["mr"],
        "identifier=|12345": ["plain"],
        f"identifier={BSN_SYSTEM}|": ["mr"],
        f"identifier={BSN_SYSTEM}|999901795": ["mr"],
        f"identifier:of-type={V2_0203}|MR|12345": ["mr"],
        f"identifier:of-type={V2_0203}|PPN|12345": ["ppn"],
        f"identifier:of-type={V2_0203}|MR|99999": [],
        "identifier:text=medical": ["mr"],
        # :not: "do not contain a match"; mr's second identifier does not save it
        "identifier:not=12345": ["bare", "escaped"],
        "telecom=0612345678": ["mr"],
        "telecom=phone|0612345678": ["mr"],
        "telecom=email|0612345678": [],
        "phone=0612345678": ["mr"],
        "email=mr@example.org": ["mr"],
        "active=true": ["mr"],
        "active=false": ["ppn"],
        "active:not=true": ["bare", "escaped", "plain", "ppn"],
        "gender=female,male": ["mr", "ppn"],
        "gender:not=female": ["bare", "escaped", "plain", "ppn"],
    })


def test_token_in_and_not_in_a_stored_valueset(client: TestClient) -> None:
    url = "http://example.org/fhir/ValueSet/lengths"
    r = client.post("/fhir/ValueSet", json={
        "resourceType": "ValueSet", "url": url, "status": "active",
        "compose": {"include": [
            {"system": LOINC, "concept": [{"code": "8302-2"}, {"code": "8306-3"}]},
            {"system": SNOMED, "concept": [{"code": "50373000"}]},
        ]},
    }, headers={"Content-Type": JSON})
    assert r.status_code == 201, r.text
    load(
        client,
        observation("height", "8302-2"),
        observation("lying", "8306-3"),
        observation("weight", "29463-7"),
        observation("snomed", "50373000", SNOMED),
        observation("snomed-other", "27113001", SNOMED),
        observation("nosystem", "8302-2", None),
    )
    expect(client, "Observation", {
        f"code:in={url}": ["height", "lying", "snomed"],
        f"code:not-in={url}": ["nosystem", "snomed-other", "weight"],
        f"code:in={url}&code=8306-3": ["lying"],
    })


# -- date ------------------------------------------------------------------------------------


def test_date_prefixes_on_birthdate_at_each_precision(client: TestClient) -> None:
    load(
        client,
        patient("d2020-01-15", birthDate="2020-01-15"),
        patient("d2020-03-01", birthDate="2020-03-01"),
        patient("d2021-06-30", birthDate="2021-06-30"),
        patient("d2019-12-31", birthDate="2019-12-31"),
        patient("y2020", birthDate="2020"),
        patient("m2020-03", birthDate="2020-03"),
        patient("none"),
    )
    everyone = ["d2019-12-31", "d2020-01-15", "d2020-03-01", "d2021-06-30", "m2020-03", "y2020"]
    expect(client, "Patient", {
        # year precision
        "birthdate=2020": ["d2020-01-15", "d2020-03-01", "m2020-03", "y2020"],
        "birthdate=eq2020": ["d2020-01-15", "d2020-03-01", "m2020-03", "y2020"],
        "birthdate=ne2020": ["d2019-12-31", "d2021-06-30"],
        "birthdate=gt2020": ["d2021-06-30"],
        "birthdate=lt2020": ["d2019-12-31"],
        "birthdate=ge2020": ["d2020-01-15", "d2020-03-01", "d2021-06-30", "m2020-03", "y2020"],
        "birthdate=le2020": ["d2019-12-31", "d2020-01-15", "d2020-03-01", "m2020-03", "y2020"],
        "birthdate=sa2020": ["d2021-06-30"],
        "birthdate=eb2020": ["d2019-12-31"],
        # month precision
        "birthdate=2020-03": ["d2020-03-01", "m2020-03"],
        "birthdate=ne2020-03": ["d2019-12-31", "d2020-01-15", "d2021-06-30", "y2020"],
        "birthdate=gt2020-03": ["d2021-06-30", "y2020"],
        "birthdate=lt2020-03": ["d2019-12-31", "d2020-01-15", "y2020"],
        "birthdate=ge2020-03": ["d2020-03-01", "d2021-06-30", "m2020-03", "y2020"],
        "birthdate=le2020-03": ["d2019-12-31", "d2020-01-15", "d2020-03-01", "m2020-03",
                                "y2020"],
        "birthdate=sa2020-03": ["d2021-06-30"],
        "birthdate=eb2020-03": ["d2019-12-31", "d2020-01-15"],
        # day precision
        "birthdate=2020-03-01": ["d2020-03-01"],
        "birthdate=eq2020-03-01": ["d2020-03-01"],
        "birthdate=ne2020-03-01": ["d2019-12-31", "d2020-01-15", "d2021-06-30", "m2020-03",
                                   "y2020"],
        "birthdate=gt2020-03-01": ["d2021-06-30", "m2020-03", "y2020"],
        "birthdate=lt2020-03-01": ["d2019-12-31", "d2020-01-15", "y2020"],
        "birthdate=ge2020-03-01": ["d2020-03-01", "d2021-06-30", "m2020-03", "y2020"],
        "birthdate=le2020-03-01": ["d2019-12-31", "d2020-01-15", "d2020-03-01", "y2020"],
        "birthdate=sa2020-03-01": ["d2021-06-30"],
        "birthdate=eb2020-03-01": ["d2019-12-31", "d2020-01-15"],
        # ap: 10% of the gap to now (years here) on each side: 2021-06-30 is 16 months
        # off, which only a gap of 13 years would reach
        "birthdate=ap2020-03-01": ["d2019-12-31", "d2020-01-15", "d2020-03-01", "m2020-03",
                                   "y2020"],
        # a range given as two ANDed parameters
        # the year 2020 overlaps both halves of the range, so it is in
        "birthdate=ge2020-01-01&birthdate=lt2020-04-01": ["d2020-01-15", "d2020-03-01",
                                                           "m2020-03", "y2020"],
        "birthdate=sa2019-12-31&birthdate=eb2020-04-01": ["d2020-01-15", "d2020-03-01",
                                                           "m2020-03"],
        "birthdate=2019-12-31,2021-06-30": ["d2019-12-31", "d2021-06-30"],
        "birthdate=gt1900": everyone,
    })


def test_date_on_observation_datetime_and_period_with_time_zones(client: TestClient) -> None:
    load(
        client,
        # 08:00Z on the 10th
        observation("morning", effectiveDateTime="2023-05-10T10:00:00+02:00"),
        # 01:30Z on the 11th: the 10th in its own zone, the 11th in UTC
        observation("late", effectiveDateTime="2023-05-10T23:30:00-02:00"),
        observation("may", effectivePeriod={"start": "2023-05-01", "end": "2023-05-31"}),
        observation("open", effectivePeriod={"start": "2023-05-20T00:00:00Z"}),
        observation("never"),
    )
    expect(client, "Observation", {
        "date=2023-05-10": ["morning"],
        "date=2023-05-11": ["late"],
        "date=2023-05": ["late", "may", "morning"],
        "date=2023": ["late", "may", "morning"],
        "date=ne2023-05": ["open"],
        "date=2023-05-10T08:00:00Z": ["morning"],
        "date=2023-05-10T10:00:00%2B02:00": ["morning"],
        "date=2023-05-10T10:00:00+02:00": ["morning"],  # an unencoded "+" arrives as a space
        "date=2023-05-10T10:00Z": [],  # minute precision: [10:00, 10:01) UTC
        "date=2023-05-10T08:00Z": ["morning"],
        "date=2023-05-11T01:30:00Z": ["late"],
        "date=gt2023-05-15": ["may", "open"],
        "date=ge2023-05-15": ["may", "open"],
        "date=lt2023-05-15": ["late", "may", "morning"],
        "date=le2023-05-10": ["may", "morning"],
        "date=sa2023-05-15": ["open"],
        "date=eb2023-05-15": ["late", "morning"],
        "date=eb2023-05-11": ["morning"],
        "date=gt2023-05-31": ["open"],  # the period ends on the 31st (inclusive)
        "date=sa2023-05-31": [],
        "date=lt2023-05-01": [],
        "date=ap2023-05-10": ["late", "may", "morning", "open"],
        "date=ge2023-05-10T09:00:00Z&date=le2023-05-11T12:00:00Z": ["late", "may"],
    })


def test_last_updated(client: TestClient) -> None:
    stamps = []
    for pid in ("first", "second", "third"):
        stamps.append(put(client, patient(pid))["meta"]["lastUpdated"])
        time.sleep(0.02)
    t2 = stamps[1]
    at = datetime.fromisoformat(t2.replace("Z", "+00:00"))
    t2_plus2 = at.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    expect(client, "Patient", {
        f"_lastUpdated={t2}": ["second"],
        f"_lastUpdated=eq{t2}": ["second"],
        f"_lastUpdated=ne{t2}": ["first", "third"],
        f"_lastUpdated=gt{t2}": ["third"],
        f"_lastUpdated=sa{t2}": ["third"],
        f"_lastUpdated=ge{t2}": ["second", "third"],
        f"_lastUpdated=lt{t2}": ["first"],
        f"_lastUpdated=eb{t2}": ["first"],
        f"_lastUpdated=le{t2}": ["first", "second"],
        f"_lastUpdated={quote(t2_plus2)}": ["second"],
        f"_lastUpdated=ge{quote(t2_plus2)}&_lastUpdated=le{t2}": ["second"],
        "_lastUpdated=gt2000-01-01": ["first", "second", "third"],
        "_lastUpdated=lt2000": [],
    })


# -- number and quantity ---------------------------------------------------------------------


def test_number(client: TestClient) -> None:
    def risk(rid: str, probability: float | None) -> dict:
        prediction = {"qualitativeRisk": {"text": "laag"}} if probability is None else {
            "probabilityDecimal": probability}
        return {"resourceType": "RiskAssessment", "id": rid, "status": "final",
                "subject": {"reference": "Patient/p"}, "prediction": [prediction]}

    load(client, patient("p"), risk("r010", 0.1), risk("r025", 0.25), risk("r050", 0.5),
         risk("r080", 0.8), risk("rnone", None))
    expect(client, "RiskAssessment", {
        "probability=0.25": ["r025"],
        "probability=0.5": ["r050"],
        "probability=0.50": ["r050"],
        "probability=0.2": [],  # [0.15, 0.25) holds none of them
        "probability=eq0.8": ["r080"],
        "probability=ne0.5": ["r010", "r025", "r080"],
        "probability=gt0.25": ["r050", "r080"],
        "probability=ge0.25": ["r025", "r050", "r080"],
        "probability=lt0.5": ["r010", "r025"],
        "probability=le0.5": ["r010", "r025", "r050"],
        "probability=sa0.25": ["r050", "r080"],
        "probability=eb0.5": ["r010", "r025"],
        "probability=ap0.5": ["r050"],  # 10%: [0.45, 0.55]
        "probability=gt0.1&probability=lt0.8": ["r025", "r050"],
        "probability=0.1,0.8": ["r010", "r080"],
        "probability=1e-1": ["r010"],
    })
    pages = [get(client, "RiskAssessment?_sort=-probability&_count=2")]
    while (nxt := link(pages[-1], "next")) is not None:
        pages.append(get(client, nxt))
    assert [match_ids(p) for p in pages] == [["r080", "r050"], ["r025", "r010"], ["rnone"]]
    back = get(client, link(pages[-1], "previous"))
    assert match_ids(back) == ["r025", "r010"]
    expect_400(client, "RiskAssessment?probability=abc", "probability")
    expect_400(client, "RiskAssessment?probability=gt", "probability")


def test_quantity_prefixes_system_code_and_unit_conversion(client: TestClient) -> None:
    load(
        client,
        observation("mm1200", valueQuantity=qty(1200, "mm")),  # 120 cm
        observation("cm95", valueQuantity=qty(95, "cm")),
        observation("kg3.5", "29463-7", valueQuantity=qty(3.5, "kg")),
        observation("g3400", "29463-7", valueQuantity=qty(3400, "g")),
        observation("pieces", "x", "http://example.org", valueQuantity=qty(10, "stuks", None)),
        observation("novalue"),
    )
    expect(client, "Observation", {
        "value-quantity=1200": ["mm1200"],
        "value-quantity=95": ["cm95"],
        f"value-quantity=95|{UCUM}|cm": ["cm95"],
        f"value-quantity=120|{UCUM}|cm": ["mm1200"],  # 1200 mm is 120 cm
        f"value-quantity=1.2|{UCUM}|m": ["mm1200"],
        f"value-quantity=gt100|{UCUM}|cm": ["mm1200"],
        f"value-quantity=lt100|{UCUM}|cm": ["cm95"],
        f"value-quantity=ge95|{UCUM}|cm": ["cm95", "mm1200"],
        f"value-quantity=le950|{UCUM}|mm": ["cm95"],
        f"value-quantity=ne95|{UCUM}|cm": ["mm1200"],
        f"value-quantity=3.5|{UCUM}|kg": ["kg3.5"],
        f"value-quantity=3500|{UCUM}|g": ["kg3.5"],
        f"value-quantity=gt3000|{UCUM}|g": ["g3400", "kg3.5"],
        f"value-quantity=ge3.4|{UCUM}|kg": ["g3400", "kg3.5"],
        f"value-quantity=lt3.45|{UCUM}|kg": ["g3400"],
        "value-quantity=3400||g": ["g3400"],
        "value-quantity=10||stuks": ["pieces"],
        "value-quantity=10": ["pieces"],
        f"value-quantity=10|{UCUM}|cm": [],
        "value-quantity=ap3400||g": ["g3400"],
    })
    expect_400(client, f"Observation?value-quantity=lots|{UCUM}|cm", "value-quantity")


# -- reference -------------------------------------------------------------------------------


def _reference_world(client: TestClient) -> None:
    load(
        client,
        {"resourceType": "Organization", "id": "ggd-hm", "name": "GGD Hollands Midden"},
        {"resourceType": "Organization", "id": "ggd-ams", "name": "GGD Amsterdam"},
        {"resourceType": "Practitioner", "id": "anna", "name": [{"family": "Dokter",
                                                                 "given": ["Anna"]}]},
        {"resourceType": "Practitioner", "id": "bert", "name": [{"family": "Huisarts",
                                                                 "given": ["Bert"]}]},
        patient("pa1", name=[{"family": "Een"}],
                generalPractitioner=[{"reference": "Practitioner/anna"}],
                managingOrganization={"reference": "Organization/ggd-hm"}),
        patient("pa2", name=[{"family": "Twee"}],
                generalPractitioner=[{"reference": "Practitioner/bert"}],
                managingOrganization={"reference": "Organization/ggd-ams"}),
        {"resourceType": "Group", "id": "pa1", "type": "person", "actual": True},
        observation("ob1", subject={"reference": "Patient/pa1"},
                    performer=[{"reference": "Practitioner/bert"}]),
        observation("ob2", "29463-7", subject={"reference": "Patient/pa2"}),
        observation("ob3", subject={"reference": "Group/pa1"}),
        observation("ob4", subject={"identifier": {"system": BSN_SYSTEM, "value": "999"}}),
        observation("ob6", subject={"reference": "http://elsewhere.example/fhir/Patient/pa1"}),
        {"resourceType": "Encounter", "id": "enc1", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/pa1"}},
        {"resourceType": "Encounter", "id": "enc2", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/pa2"}},
    )


def test_reference_forms(client: TestClient) -> None:
    _reference_world(client)
    expect(client, "Observation", {
        "subject=Patient/pa1": ["ob1"],
        "subject=Group/pa1": ["ob3"],
        "subject=pa1": ["ob1", "ob3"],  # a bare id, any target type
        "subject:Patient=pa1": ["ob1"],
        "subject:Group=pa1": ["ob3"],
        "patient=pa1": ["ob1"],  # patient only refers to Patients
        f"subject={BASE}/Patient/pa1": ["ob1"],  # absolute URL with our base = local
        "subject=http://elsewhere.example/fhir/Patient/pa1": ["ob6"],
        f"subject:identifier={BSN_SYSTEM}|999": ["ob4"],
        "subject:identifier=999": ["ob4"],
        "performer=Practitioner/bert": ["ob1"],
        "subject=Patient/pa1,Patient/pa2": ["ob1", "ob2"],
        "subject=Patient/pa1&code=29463-7": [],
    })
    expect(client, "Patient", {
        "general-practitioner=Practitioner/anna": ["pa1"],
        "general-practitioner=anna": ["pa1"],
        f"general-practitioner={BASE}/Practitioner/anna": ["pa1"],
        "general-practitioner:Practitioner=bert": ["pa2"],
        "general-practitioner:Organization=bert": [],
        "organization=ggd-hm": ["pa1"],
    })
    expect_400(client, "Observation?subject:Basic=pa1", "subject")


def test_chains_has_and_identifier(client: TestClient) -> None:
    _reference_world(client)
    expect(client, "Observation", {
        "subject:Patient.name=een": ["ob1"],
        "subject:Patient.general-practitioner:Practitioner.name=dokter": ["ob1"],
        "subject:Patient.general-practitioner.family=huisarts": ["ob2"],
        "subject.organization.name=ggd%20holl": ["ob1"],
        "patient.organization.name=ggd": ["ob1", "ob2"],
        "subject:Patient._id=pa2": ["ob2"],
        "subject.general-practitioner.name=dokter&code=8302-2": ["ob1"],
        "subject.general-practitioner.name=dokter&code=29463-7": [],
        "performer:Practitioner.given=bert": ["ob1"],
    })
    expect(client, "Encounter", {
        "subject.organization.name=ggd%20amst": ["enc2"],
        "subject:Patient.general-practitioner:Practitioner.name=anna": ["enc1"],
    })
    expect(client, "Patient", {
        "_has:Observation:patient:code=8302-2": ["pa1"],
        "_has:Observation:subject:code=29463-7": ["pa2"],
        "_has:Encounter:subject:status=finished": ["pa1", "pa2"],
        "_has:Observation:patient:code=8302-2&name=een": ["pa1"],
    })
    expect(client, "Practitioner", {
        # nested: practitioners whose patients have a height Observation
        "_has:Patient:general-practitioner:_has:Observation:patient:code=8302-2":
            ["anna"],
        "_has:Patient:general-practitioner:_has:Observation:patient:code=29463-7":
            ["bert"],
        "_has:Patient:general-practitioner:organization=ggd-hm": ["anna"],
        "_has:Observation:performer:code=8302-2": ["bert"],
    })
    expect(client, "Organization", {
        "_has:Patient:organization:_has:Encounter:subject:status=finished":
            ["ggd-ams", "ggd-hm"],
    })


def test_absolute_references_with_our_base_are_local(client: TestClient) -> None:
    """"A relative reference resolving to the same value as a specified absolute URL, or
    vice versa, qualifies as a match" (search.html#reference): a stored reference written
    with this server's base is the local resource, for matching, chains, _has and includes."""
    _reference_world(client)
    load(
        client,
        patient("pa3", name=[{"family": "Drie"}],
                generalPractitioner=[{"reference": f"{BASE}/Practitioner/anna"}]),
        observation("ob5", subject={"reference": f"{BASE}/Patient/pa3"}),
    )
    wrong = mismatches(client, "Observation", {
        f"subject={BASE}/Patient/pa3": ["ob5"],
        "subject=Patient/pa3": ["ob5"],
        "subject=pa3": ["ob5"],
        "patient=pa3": ["ob5"],
        "subject:Patient.name=drie": ["ob5"],
        "subject:Patient.general-practitioner:Practitioner.name=dokter": ["ob1", "ob5"],
    })
    wrong += mismatches(client, "Patient", {
        "general-practitioner=Practitioner/anna": ["pa1", "pa3"],
        "general-practitioner.name=dokter": ["pa1", "pa3"],
        "_has:Observation:subject:code=8302-2": ["pa1", "pa3"],
    })
    wrong += mismatches(client, "Practitioner", {
        "_has:Patient:general-practitioner:name=drie": ["anna"],
    })
    for query, expected in (
            ("Observation?_id=ob5&_include=Observation:subject", ["Patient/pa3"]),
            ("Patient?_id=pa3&_include=Patient:general-practitioner", ["Practitioner/anna"]),
            ("Practitioner?_id=anna&_revinclude=Patient:general-practitioner",
             ["Patient/pa1", "Patient/pa3"])):
        got = included(get(client, query))
        if got != expected:
            wrong.append(f"{query}: expected included {expected}, got {got}")
    assert not wrong, "\n" + "\n".join(wrong)


# -- uri, composite, :missing, resource-level parameters --------------------------------------


def test_uri_below_above(client: TestClient) -> None:
    for url in ("http://example.org/fhir/ValueSet/groei",
                "http://example.org/fhir/ValueSet/groei/lengte",
                "http://example.org/fhir/ValueSetOther",
                "http://other.example/ValueSet/groei"):
        r = client.post("/fhir/ValueSet", json={"resourceType": "ValueSet", "url": url,
                                                 "status": "active", "name": url.split("/")[-1]},
                        headers={"Content-Type": JSON})
        assert r.status_code == 201, r.text
    found = get(client, "ValueSet?_count=100")["entry"]
    by_url = {e["resource"]["url"]: e["resource"]["id"] for e in found}
    groei, lengte, other, elsewhere = by_url.values()
    expect(client, "ValueSet", {
        "url=http://example.org/fhir/ValueSet/groei": [groei],
        "url=http://example.org/fhir/ValueSet/gro": [],  # uri: no prefix match
        "url:below=http://example.org/fhir/ValueSet/groei": [groei, lengte],
        "url:below=http://example.org/fhir": [groei, lengte, other],
        "url:above=http://example.org/fhir/ValueSet/groei/lengte/v2": [groei, lengte],
        "url:above=http://example.org/fhir/ValueSet/groei": [groei],
        "url:above=http://other.example/ValueSet/groei/x": [elsewhere],
    })


def test_composite_code_value_quantity(client: TestClient) -> None:
    def bp(oid: str, systolic: float, diastolic: float) -> dict:
        return observation(oid, "85354-9", component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": qty(systolic, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": qty(diastolic, "mm[Hg]")},
        ])

    load(
        client,
        observation("h120", valueQuantity=qty(120, "cm")),
        observation("h80", valueQuantity=qty(80, "cm")),
        observation("w12", "29463-7", valueQuantity=qty(12, "kg")),
        # a weight of 120 (g): the same number under another code
        observation("w120", "29463-7", valueQuantity=qty(120, "g")),
        bp("bp120", 120, 80),
        bp("bp140", 140, 90),
    )
    expect(client, "Observation", {
        f"code-value-quantity={LOINC}|8302-2$gt100": ["h120"],
        "code-value-quantity=8302-2$lt100": ["h80"],
        "code-value-quantity=8302-2$120": ["h120"],
        f"code-value-quantity=8302-2$1.2|{UCUM}|m": ["h120"],
        f"code-value-quantity=29463-7$ge12|{UCUM}|kg": ["w12"],
        "code-value-quantity=29463-7$120": ["w120"],
        "code-value-quantity=8302-2$120,29463-7$12": ["h120", "w12"],
        f"component-code-value-quantity={LOINC}|8480-6$gt130": ["bp140"],
        "component-code-value-quantity=8480-6$120": ["bp120"],
        "component-code-value-quantity=8462-4$lt85": ["bp120"],
        # both values of one component: a diastolic of 120 exists nowhere
        "component-code-value-quantity=8462-4$ge120": [],
        "component-code-value-quantity=8480-6$lt100": [],
        "component-code-value-quantity=8480-6$gt130&component-code-value-quantity=8462-4$90":
            ["bp140"],
    })


def test_missing_on_several_types(client: TestClient) -> None:
    load(
        client,
        patient("full", name=[{"family": "Vol"}], gender="female", birthDate="2020-01-01",
                generalPractitioner=[{"reference": "Practitioner/x"}],
                meta={"profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}),
        patient("empty"),
        observation("q", valueQuantity=qty(1, "cm")),
        observation("noq"),
        {"resourceType": "RiskAssessment", "id": "n", "status": "final",
         "subject": {"reference": "Patient/full"}, "prediction": [{"probabilityDecimal": 0.3}]},
        {"resourceType": "RiskAssessment", "id": "non", "status": "final",
         "subject": {"reference": "Patient/full"}},
    )
    expect(client, "Patient", {
        "birthdate:missing=true": ["empty"],
        "birthdate:missing=false": ["full"],
        "gender:missing=true": ["empty"],
        "gender:missing=false": ["full"],
        "name:missing=true": ["empty"],
        "family:missing=false": ["full"],
        "general-practitioner:missing=true": ["empty"],
        "general-practitioner:missing=false": ["full"],
        "_profile:missing=true": ["empty"],
        "_profile:missing=false": ["full"],
        "birthdate:missing=true&gender:missing=true": ["empty"],
    })
    expect(client, "Observation", {
        "value-quantity:missing=true": ["noq"],
        "value-quantity:missing=false": ["q"],
        "code-value-quantity:missing=false": ["q"],
        "code-value-quantity:missing=true": ["noq"],
    })
    expect(client, "RiskAssessment", {
        "probability:missing=true": ["non"],
        "probability:missing=false": ["n"],
    })
    expect_400(client, "Patient?gender:missing=maybe", "gender")


def test_tag_profile_security_list_and_id(client: TestClient) -> None:
    profile = "http://hl7.org/fhir/StructureDefinition/Patient"
    load(
        client,
        patient("tagged", meta={"tag": [{"system": "http://example.org/tags", "code": "vip"}],
                                "profile": [profile],
                                "security": [{"system": CONFIDENTIALITY, "code": "R"}]}),
        patient("other-tag", meta={"tag": [{"system": "http://example.org/other",
                                            "code": "vip"}]}),
        patient("plain1"),
        patient("plain2"),
        {"resourceType": "List", "id": "cohort", "status": "current", "mode": "working",
         "entry": [{"item": {"reference": "Patient/plain1"}},
                   {"item": {"reference": "Patient/tagged"}},
                   {"item": {"reference": "Observation/o"}}]},
        {"resourceType": "List", "id": "empty-list", "status": "current", "mode": "working"},
        observation("o"),
    )
    expect(client, "Patient", {
        "_tag=http://example.org/tags|vip": ["tagged"],
        "_tag=vip": ["other-tag", "tagged"],
        "_tag:not=http://example.org/tags|vip": ["other-tag", "plain1", "plain2"],
        f"_profile={profile}": ["tagged"],
        f"_security={CONFIDENTIALITY}|R": ["tagged"],
        "_security=R": ["tagged"],
        f"_security:not={CONFIDENTIALITY}|R": ["other-tag", "plain1", "plain2"],
        "_list=cohort": ["plain1", "tagged"],
        "_list=empty-list": [],
        "_list=cohort&_tag=vip": ["tagged"],
        "_id=plain1": ["plain1"],
        "_id=plain1,plain2,nope": ["plain1", "plain2"],
        "_id=nope": [],
    })
    expect(client, "Observation", {"_list=cohort": ["o"]})


# -- results -----------------------------------------------------------------------------------


def test_search_modes_include_and_outcome(client: TestClient) -> None:
    _reference_world(client)
    bundle = get(client, "Observation?_id=ob1&_include=Observation:subject&unknown-param=1")
    modes = Counter(e["search"]["mode"] for e in bundle["entry"])
    assert modes == {"match": 1, "include": 1, "outcome": 1}
    assert bundle["total"] == 1  # included resources are not counted
    outcome = entries(bundle, "outcome")[0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "warning"
    assert "unknown-param" in str(outcome)
    assert included(bundle) == ["Patient/pa1"]
    assert entries(bundle, "include")[0]["fullUrl"] == f"{BASE}/Patient/pa1"
    assert entries(bundle)[0]["fullUrl"] == f"{BASE}/Observation/ob1"


def test_unknown_parameter_lenient_and_strict(client: TestClient) -> None:
    load(client, patient("p", name=[{"family": "Jansen"}]))
    bundle = get(client, "Patient?family=jansen&shoe-size=42")
    assert match_ids(bundle) == ["p"]
    outcome = entries(bundle, "outcome")
    assert len(outcome) == 1
    issue = outcome[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning" and issue["expression"] == ["shoe-size"]
    self_link = link(bundle, "self")
    assert self_link is not None and "shoe-size" not in self_link  # not applied
    r = client.get("/fhir/Patient?family=jansen&shoe-size=42",
                   headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["shoe-size"]
    lenient = client.get("/fhir/Patient?family=jansen&shoe-size=42",
                         headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200 and match_ids(lenient.json()) == ["p"]


def test_bad_values_are_400_naming_the_parameter(client: TestClient) -> None:
    expect_400(client, "Patient?birthdate=2020-13-45", "birthdate")
    expect_400(client, "Patient?birthdate=yesterday", "birthdate")
    expect_400(client, "Observation?date=ge2023-05-10T25:00:00Z", "date")
    expect_400(client, "Patient?_lastUpdated=soon", "_lastUpdated")
    expect_400(client, "RiskAssessment?probability=1.2.3", "probability")
    expect_400(client, "Observation?value-quantity=ge|x|y", "value-quantity")
    expect_400(client, "Patient?family:fuzzy=jans", "family")
    expect_400(client, "Patient?birthdate:exact=2020", "birthdate")
    expect_400(client, "Patient?gender:contains=fem", "gender")
    expect_400(client, "Patient?_count=many", "_count")
    expect_400(client, "Patient?_summary=maybe", "_summary")
    expect_400(client, "Patient?_total=all", "_total")
    expect_400(client, "Observation?code-value-quantity=8302-2", "code-value-quantity")
    expect_400(client, "Observation?code.name=x", "code")  # not a reference: no chain
    expect_400(client, "Patient?_count=-1", "_count")
    expect_400(client, "Patient?_has:Nonsense:patient:code=x", "_has:Nonsense:patient:code")


def test_bad_values_inside_chains_and_has_name_the_parameter_as_sent(client: TestClient
                                                                     ) -> None:
    """The client sent `_has:Observation:subject:date` or `subject.birthdate`; an expression
    of just `date` or `birthdate` names a parameter the searched type may not even have."""
    expect_400(client, "Patient?_has:Observation:subject:date=2020-99",
               "_has:Observation:subject:date")
    expect_400(client, "Observation?subject:Patient.birthdate=2020-99",
               "subject:Patient.birthdate")


def test_paging_next_and_previous(client: TestClient) -> None:
    for i in range(7):
        put(client, patient(f"p{i}", name=[{"family": "Pager"}], birthDate=f"201{i}-01-01"))
    put(client, patient("other", name=[{"family": "Anders"}]))
    for sort, order in (("", [f"p{i}" for i in range(7)]),
                        ("&_sort=-birthdate", [f"p{i}" for i in reversed(range(7))])):
        first = get(client, f"Patient?family=pager&_count=3{sort}")
        assert first["total"] == 7
        assert link(first, "previous") is None
        pages = [first]
        while (nxt := link(pages[-1], "next")) is not None:
            assert nxt.startswith(f"{BASE}/Patient?")
            pages.append(get(client, nxt))
            assert len(pages) < 10
        assert [match_ids(p) for p in pages] == [order[0:3], order[3:6], order[6:7]], sort
        assert pages[-1]["total"] == 7
        # and back again through the previous links
        back = [pages[-1]]
        while (prev := link(back[-1], "previous")) is not None:
            back.append(get(client, prev))
            assert len(back) < 10
        assert [match_ids(p) for p in back] == [order[6:7], order[3:6], order[0:3]], sort
        # a previous page can go forward again
        assert match_ids(get(client, link(back[1], "next"))) == order[6:7]


def test_paging_is_stable_while_others_write(client: TestClient) -> None:
    for sort in ("", "&_sort=-birthdate,_id", "&_sort=family"):
        for pid in [e["resource"]["id"] for e in get(client, "Patient?_count=100")
                    .get("entry", [])]:
            assert client.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
        existing = [f"s{i:02d}" for i in range(10)]
        for i, pid in enumerate(existing):
            put(client, patient(pid, name=[{"family": f"Stable{i % 4}"}],
                                birthDate=f"20{10 + i}-06-01"))
        seen: list[str] = []
        page = get(client, f"Patient?family=stable&_count=3{sort}")
        seen += match_ids(page)
        first_page = list(seen)
        unseen = [pid for pid in existing if pid not in seen]
        # between page requests another client creates, deletes and updates matches
        put(client, patient("new-early", name=[{"family": "Stable0"}], birthDate="2000-01-01"))
        put(client, patient("new-late", name=[{"family": "Stable9"}], birthDate="2099-01-01"))
        assert client.delete(f"/fhir/Patient/{first_page[0]}").status_code in (200, 204)
        gone = unseen[2]
        assert client.delete(f"/fhir/Patient/{gone}").status_code in (200, 204)
        # an update that leaves the sort values alone
        index = existing.index(first_page[1])
        put(client, patient(first_page[1], name=[{"family": f"Stable{index % 4}"}],
                            birthDate=f"20{10 + index}-06-01", gender="female"))
        rounds = 0
        while (nxt := link(page, "next")) is not None:
            page = get(client, nxt)
            seen += match_ids(page)
            rounds += 1
            assert rounds < 10
            if rounds == 1:
                put(client, patient(f"new-{rounds}", name=[{"family": "Stable1"}],
                                    birthDate="2015-01-01"))
        duplicates = [pid for pid, n in Counter(seen).items() if n > 1]
        assert duplicates == [], (sort, seen)
        missed = [pid for pid in existing if pid not in seen and pid != gone]
        assert missed == [], (sort, seen)
        assert gone not in seen, sort


def test_sort_on_several_keys(client: TestClient) -> None:
    for resource in (
        patient("s1", name=[{"family": "Bakker"}], birthDate="2020-01-01", gender="male"),
        patient("s2", name=[{"family": "Bakker"}], birthDate="2021-01-01", gender="female"),
        patient("s3", name=[{"family": "Albers"}], birthDate="2019-05-05", gender="other"),
        patient("s4", name=[{"family": "Claes"}], gender="female"),
        patient("s5", birthDate="2018-01-01"),
    ):
        put(client, resource)
        time.sleep(0.005)  # distinct lastUpdated

    def order(query: str) -> list[str]:
        return match_ids(get(client, f"Patient?{query}"))

    assert order("_sort=family,-birthdate") == ["s3", "s2", "s1", "s4", "s5"]
    assert order("_sort=-family,birthdate") == ["s4", "s1", "s2", "s3", "s5"]
    assert order("_sort=birthdate") == ["s5", "s3", "s1", "s2", "s4"]
    assert order("_sort=-birthdate") == ["s2", "s1", "s3", "s5", "s4"]
    assert order("_sort=-_id") == ["s5", "s4", "s3", "s2", "s1"]
    assert order("_sort=_id&family=bakker") == ["s1", "s2"]
    assert order("_sort=family,-birthdate&birthdate=ge2019") == ["s3", "s2", "s1"]
    assert order("_sort=gender,_id") == ["s2", "s4", "s1", "s3", "s5"]
    assert order("_sort=_lastUpdated") == ["s1", "s2", "s3", "s4", "s5"]
    assert order("_sort=-_lastUpdated") == ["s5", "s4", "s3", "s2", "s1"]
    for sort, expected in (("_lastUpdated", ["s1", "s2", "s3", "s4", "s5"]),
                           ("-_lastUpdated", ["s5", "s4", "s3", "s2", "s1"]),
                           ("family,_lastUpdated", ["s3", "s1", "s2", "s4", "s5"])):
        pages = [get(client, f"Patient?_sort={sort}&_count=2")]
        while (nxt := link(pages[-1], "next")) is not None:
            pages.append(get(client, nxt))
            assert len(pages) < 6, sort
        assert [pid for p in pages for pid in match_ids(p)] == expected, sort
        back = get(client, link(pages[-1], "previous"))
        assert match_ids(back) == expected[2:4], sort
    # the same order across pages
    pages = [get(client, "Patient?_sort=family,-birthdate&_count=2")]
    while (nxt := link(pages[-1], "next")) is not None:
        pages.append(get(client, nxt))
    assert [match_ids(p) for p in pages] == [["s3", "s2"], ["s1", "s4"], ["s5"]]
    expect_400(client, "Patient?_sort=shoe-size", "_sort")


def test_total_and_summary_count(client: TestClient) -> None:
    for i in range(5):
        put(client, patient(f"t{i}", gender="female" if i < 4 else "male"))
    none = get(client, "Patient?gender=female&_count=2&_total=none")
    assert "total" not in none and len(match_ids(none)) == 2
    accurate = get(client, "Patient?gender=female&_count=2&_total=accurate")
    assert accurate["total"] == 4 and len(match_ids(accurate)) == 2
    following = get(client, link(accurate, "next"))
    assert following["total"] == 4
    estimate = get(client, "Patient?gender=female&_count=2&_total=estimate")
    assert "total" not in estimate or (isinstance(estimate["total"], int)
                                       and estimate["total"] >= 0)
    counted = get(client, "Patient?gender=female&_summary=count")
    assert counted["total"] == 4 and "entry" not in counted
    zero = get(client, "Patient?gender=female&_count=0")
    assert zero["total"] == 4 and not zero.get("entry")


def test_summary_and_elements(client: TestClient) -> None:
    put(client, patient(
        "p", text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                                                  "Sophie Jansen</div>"},
        name=[{"family": "Jansen"}], birthDate="2020-01-01", gender="female",
        maritalStatus={"text": "ongehuwd"},
        generalPractitioner=[{"reference": "Practitioner/x"}]))

    def only(query: str) -> dict:
        resources = [e["resource"] for e in entries(get(client, f"Patient?{query}"))]
        assert len(resources) == 1
        return resources[0]

    def subsetted(resource: dict) -> bool:
        return any(t.get("code") == SUBSETTED for t in resource.get("meta", {}).get("tag", []))

    full = only("_id=p")
    assert {"text", "maritalStatus", "generalPractitioner"} <= set(full) and not subsetted(full)

    summary = only("_id=p&_summary=true")
    assert {"name", "birthDate", "gender"} <= set(summary)
    assert not {"text", "maritalStatus", "generalPractitioner"} & set(summary)
    assert subsetted(summary)

    data = only("_id=p&_summary=data")
    assert "text" not in data and {"maritalStatus", "name"} <= set(data)
    assert subsetted(data)

    text = only("_id=p&_summary=text")
    assert "text" in text and set(text) <= {"resourceType", "id", "meta", "text"}
    assert subsetted(text)

    elements = only("_id=p&_elements=birthDate,gender")
    assert set(elements) == {"resourceType", "id", "meta", "birthDate", "gender"}
    assert subsetted(elements)

    assert only("_id=p&_summary=false") == full


def test_include_iterate_wildcard_and_revinclude(client: TestClient) -> None:
    _reference_world(client)
    load(client, observation("ob1b", subject={"reference": "Patient/pa1"}))

    def inc(query: str) -> tuple[list[str], list[str]]:
        bundle = get(client, query)
        return sorted(match_ids(bundle)), included(bundle)

    assert inc("Observation?_id=ob1&_include=Observation:subject") == (
        ["ob1"], ["Patient/pa1"])
    assert inc("Observation?_id=ob1&_include=Observation:subject:Patient") == (
        ["ob1"], ["Patient/pa1"])
    assert inc("Observation?_id=ob1&_include=Observation:subject:Group") == (["ob1"], [])
    # two matches with one subject: included once
    assert inc("Observation?_id=ob1,ob1b&_include=Observation:subject") == (
        ["ob1", "ob1b"], ["Patient/pa1"])
    assert inc("Observation?_id=ob1&_include=Observation:subject"
               "&_include:iterate=Patient:general-practitioner"
               "&_include:iterate=Patient:organization") == (
        ["ob1"], ["Organization/ggd-hm", "Patient/pa1", "Practitioner/anna"])
    assert inc("Observation?_id=ob1&_include=*") == (
        ["ob1"], ["Patient/pa1", "Practitioner/bert"])
    assert inc("Observation?_id=ob1&_include=Observation:performer") == (
        ["ob1"], ["Practitioner/bert"])
    assert inc("Patient?_id=pa1&_revinclude=Observation:subject") == (
        ["pa1"], ["Observation/ob1", "Observation/ob1b"])
    assert inc("Patient?_id=pa1&_revinclude=Observation:subject"
               "&_include=Patient:general-practitioner") == (
        ["pa1"], ["Observation/ob1", "Observation/ob1b", "Practitioner/anna"])
    assert inc("Practitioner?_id=anna&_revinclude=Patient:general-practitioner"
               "&_revinclude:iterate=Observation:subject") == (
        ["anna"], ["Observation/ob1", "Observation/ob1b", "Patient/pa1"])
    assert inc("Patient?_id=pa2&_revinclude=*") == (
        ["pa2"], ["Encounter/enc2", "Observation/ob2"])
    assert inc("Organization?_id=ggd-ams&_revinclude=Patient:organization") == (
        ["ggd-ams"], ["Patient/pa2"])
    # a resource that is a match is not included again
    load(client, observation("panel", "85354-9", subject={"reference": "Patient/pa1"},
                             hasMember=[{"reference": "Observation/ob1"},
                                        {"reference": "Observation/ob2"}]))
    assert inc("Observation?_id=panel,ob1&_include=Observation:has-member") == (
        ["ob1", "panel"], ["Observation/ob2"])
    assert inc("Observation?_id=ob1&_revinclude=Observation:has-member") == (
        ["ob1"], ["Observation/panel"])
    expect_400(client, "Observation?_include=Observation:nope", "_include")


def test_post_search_with_form_body(client: TestClient) -> None:
    load(
        client,
        patient("jf", name=[{"family": "Jansen"}], gender="female",
                identifier=[{"system": BSN_SYSTEM, "value": "999901795"}]),
        patient("jm", name=[{"family": "Jansen"}], gender="male"),
        patient("x", name=[{"family": "Anders"}], gender="female"),
    )
    r = client.post("/fhir/Patient/_search", data={"family": "jansen"})
    assert r.status_code == 200, r.text
    assert sorted(match_ids(r.json())) == ["jf", "jm"]
    r = client.post("/fhir/Patient/_search",
                    data={"identifier": f"{BSN_SYSTEM}|999901795"})
    assert match_ids(r.json()) == ["jf"]
    # parameters in the URL and the body both apply
    r = client.post("/fhir/Patient/_search?gender=female", data={"family": "jansen"})
    assert r.status_code == 200 and match_ids(r.json()) == ["jf"]
    # paging links of a POST search are plain GETs that carry the criteria
    r = client.post("/fhir/Patient/_search", data={"family": "jansen", "_count": "1"})
    first = r.json()
    assert len(match_ids(first)) == 1
    second = get(client, link(first, "next"))
    assert sorted(match_ids(first) + match_ids(second)) == ["jf", "jm"]
    r = client.post("/fhir/Patient/_search", data={"birthdate": "notadate"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["birthdate"]


def test_deleted_and_superseded_versions_never_match(client: TestClient) -> None:
    load(
        client,
        patient("moved", name=[{"family": "Oudenaarde"}], gender="male",
                birthDate="2020-01-01"),
        patient("gone", name=[{"family": "Oudenaarde"}], gender="male"),
        patient("stays", name=[{"family": "Oudewater"}]),
        observation("obs-gone", subject={"reference": "Patient/gone"}),
        observation("obs-moved", subject={"reference": "Patient/moved"}),
        observation("obs-deleted", "29463-7", subject={"reference": "Patient/stays"}),
    )
    put(client, patient("moved", name=[{"family": "Nieuwland"}], gender="female",
                        birthDate="2021-01-01"))
    assert client.delete("/fhir/Patient/gone").status_code in (200, 204)
    assert client.delete("/fhir/Observation/obs-deleted").status_code in (200, 204)
    expect(client, "Patient", {
        "family=oud": ["stays"],
        "family=nieuw": ["moved"],
        "gender=male": [],
        "gender=female": ["moved"],
        "birthdate=2020-01-01": [],
        "birthdate=2021-01-01": ["moved"],
        "_id=gone": [],
        "_has:Observation:subject:code=29463-7": [],
        "_has:Observation:subject:code=8302-2": ["moved"],
    })
    expect(client, "Observation", {
        "subject.family=oud": [],
        "subject.family=nieuw": ["obs-moved"],
        "subject:Patient.gender=male": [],
        "code=29463-7": [],
    })
    bundle = get(client, "Observation?_include=Observation:subject")
    assert sorted(match_ids(bundle)) == ["obs-gone", "obs-moved"]
    assert included(bundle) == ["Patient/moved"]
    rev = get(client, "Patient?_revinclude=Observation:subject")
    assert included(rev) == ["Observation/obs-moved"]
    assert [e["resource"]["name"][0]["family"] for e in entries(rev)
            if e["resource"]["id"] == "moved"] == ["Nieuwland"]
    assert get(client, "Patient?_summary=count")["total"] == 2
