"""ekd driven by an unmodified third-party FHIR client: fhirpy (PyPI) over real HTTP.

A real `ekd serve` process on 127.0.0.1 (started with the helpers of the benchmarks, in its own
process group, stopped at the end), on SQLite and, when a PostgreSQL server is available, on a
scratch PostgreSQL database. Everything goes through fhirpy's own API: `resource(...).save()`,
`resources(...).search(...)` with chained parameters (`subject__Patient__name`), `.has()`,
`.include()` / `.revinclude()`, `.sort()`, `.limit()`, `.fetch()`, `.fetch_all()` (which follows
the Bundle's `next` links), `.count()`, `.first()` and `.delete()`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhirpy import SyncFHIRClient

from tests.db_helpers import scratch_database
from tests.perf._servers import ekd_server, running

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def scratch_postgresql(postgres_server_url: str) -> Iterator[str]:
    """A database of our own for the server process, dropped afterwards."""
    with scratch_database(postgres_server_url, "ekd_fhirpy") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fhir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[SyncFHIRClient]:
    """A fhirpy client for a freshly started `ekd serve` on the backend."""
    workdir: Path = tmp_path_factory.mktemp(f"fhirpy-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'ekd.db'}"
    else:
        url = request.getfixturevalue("scratch_postgresql")
    with running(ekd_server(url, workdir, f"ekd-{request.param}")) as server:
        yield SyncFHIRClient(f"http://127.0.0.1:{server.port}/fhir",
                             authorization=f"Bearer {server.token()}")


def _tag() -> str:
    """A family name of our own, so that the tests sharing a server do not see each other."""
    return f"Fhirpy{uuid.uuid4().hex[:8]}"


def test_create_and_search_with_chains(fhir: SyncFHIRClient) -> None:
    family = _tag()
    org = fhir.resource("Organization", name=f"GGD {family}")
    org.save()
    gp = fhir.resource("Practitioner", name=[{"family": f"Dokter{family}"}])
    gp.save()
    other_gp = fhir.resource("Practitioner", name=[{"family": f"Ander{family}"}])
    other_gp.save()
    assert org.id and gp.id and other_gp.id
    anna = fhir.resource("Patient", name=[{"family": family, "given": ["Anna"]}],
                         birthDate="2020-02-02", gender="female",
                         generalPractitioner=[gp.to_reference()],
                         managingOrganization=org.to_reference())
    anna.save()
    bram = fhir.resource("Patient", name=[{"family": family, "given": ["Bram"]}],
                         birthDate="2021-03-03", gender="male",
                         generalPractitioner=[other_gp.to_reference()])
    bram.save()
    assert anna.id and anna["meta"]["versionId"] == "1"

    def height(patient: object, cm: float) -> object:
        obs = fhir.resource(
            "Observation", status="final",
            code={"coding": [{"system": LOINC, "code": "8302-2"}]},
            subject=patient.to_reference(),  # type: ignore[attr-defined]
            effectiveDateTime="2023-05-10T10:00:00+02:00",
            valueQuantity={"value": cm, "unit": "cm", "system": UCUM, "code": "cm"})
        obs.save()
        return obs

    a1, a2, b1 = height(anna, 80), height(anna, 90), height(bram, 95)

    observations = fhir.resources("Observation")

    def ids(searchset: object) -> list[str]:
        return sorted(r.id for r in searchset.fetch_all())  # type: ignore[attr-defined]

    assert ids(observations.search(subject=anna.reference)) == sorted([a1.id, a2.id])
    # chained, one and two levels deep
    assert ids(observations.search(subject__Patient__name=family)) == sorted(
        [a1.id, a2.id, b1.id])
    assert ids(observations.search(subject__Patient__given="bram",
                                   subject__Patient__family=family)) == [b1.id]
    assert ids(observations.search(
        subject__Patient__general_practitioner__Practitioner__name=f"dokter{family}")) == \
        sorted([a1.id, a2.id])
    assert ids(observations.search(subject__Patient__organization__name=f"ggd {family}")) == \
        sorted([a1.id, a2.id])
    # chained plus ordinary parameters with prefixes
    assert ids(observations.search(subject__Patient__name=family,
                                   value_quantity__gt=f"85|{UCUM}|cm")) == sorted(
        [a2.id, b1.id])
    assert ids(observations.search(subject__Patient__name=family,
                                   value_quantity__lt=f"0.85|{UCUM}|m")) == [a1.id]
    assert ids(observations.search(subject__Patient__birthdate__ge="2021",
                                   subject__Patient__name=family)) == [b1.id]
    # _has (reverse chain)
    patients = fhir.resources("Patient").search(family=family)
    assert sorted(p.id for p in patients.has("Observation", "subject",
                                             value_quantity__ge="95").fetch_all()) == [bram.id]
    assert patients.search(gender="female").first().id == anna.id
    assert patients.count() == 2
    # a deleted resource is gone from searches
    b1.delete()
    assert ids(observations.search(subject__Patient__name=family)) == sorted([a1.id, a2.id])
    # and an updated one matches on its new content only
    bram["name"] = [{"family": f"Nieuw{family}", "given": ["Bram"]}]
    bram.save()
    assert bram["meta"]["versionId"] == "2"
    assert sorted(p.id for p in patients.fetch_all()) == [anna.id]


def test_include_and_revinclude(fhir: SyncFHIRClient) -> None:
    family = _tag()
    gp = fhir.resource("Practitioner", name=[{"family": f"Dokter{family}"}])
    gp.save()
    patient = fhir.resource("Patient", name=[{"family": family}],
                            generalPractitioner=[gp.to_reference()])
    patient.save()
    obs = []
    for value in (50, 60, 70):
        o = fhir.resource("Observation", status="final",
                          code={"coding": [{"system": LOINC, "code": "8302-2"}]},
                          subject=patient.to_reference(),
                          valueQuantity={"value": value, "unit": "cm", "system": UCUM,
                                         "code": "cm"})
        o.save()
        obs.append(o)

    def split(bundle: dict) -> tuple[list[str], list[str]]:
        modes: dict[str, list[str]] = {"match": [], "include": []}
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            modes.setdefault(entry["search"]["mode"], []).append(
                f"{resource.resource_type}/{resource.id}")
        return sorted(modes["match"]), sorted(modes["include"])

    searchset = fhir.resources("Observation").search(subject__Patient__name=family)
    # fetch() keeps the Observations only; the included Patient is in the raw Bundle
    assert len(searchset.include("Observation", "subject").fetch()) == 3
    matches, inc = split(searchset.include("Observation", "subject").fetch_raw())
    assert matches == sorted(f"Observation/{o.id}" for o in obs)
    assert inc == [f"Patient/{patient.id}"]
    matches, inc = split(searchset.include("Observation", "subject")
                         .include("Patient", "general-practitioner", iterate=True).fetch_raw())
    assert inc == sorted([f"Patient/{patient.id}", f"Practitioner/{gp.id}"])

    patients = fhir.resources("Patient").search(family=family)
    matches, inc = split(patients.revinclude("Observation", "subject").fetch_raw())
    assert matches == [f"Patient/{patient.id}"]
    assert inc == sorted(f"Observation/{o.id}" for o in obs)
    matches, inc = split(patients.revinclude("Observation", "subject")
                         .include("Patient", "general-practitioner").fetch_raw())
    assert inc == sorted([*(f"Observation/{o.id}" for o in obs), f"Practitioner/{gp.id}"])
    # paged with includes: every page brings the subject of its own matches
    pages = searchset.include("Observation", "subject").limit(2)
    first_matches, first_included = split(pages.fetch_raw())
    assert len(first_matches) == 2 and first_included == [f"Patient/{patient.id}"]
    assert len(pages.fetch_all()) == 3  # fhirpy keeps the Observations of both pages


def test_paging_through_results(fhir: SyncFHIRClient) -> None:
    family = _tag()
    created = []
    for i in range(23):
        p = fhir.resource("Patient", name=[{"family": family, "given": [f"Kind{i:02d}"]}],
                          birthDate=f"20{i:02d}-01-01")
        p.save()
        created.append(p.id)
    patients = fhir.resources("Patient").search(family=family)
    assert patients.count() == 23
    assert len(patients.limit(10).fetch()) == 10
    # fetch_all() follows the next links page by page
    every = [p.id for p in patients.limit(10).fetch_all()]
    assert len(every) == 23 and Counter(every).most_common(1)[0][1] == 1
    assert sorted(every) == sorted(created)
    # iteration in a sort order across pages
    ordered = [p["birthDate"] for p in patients.sort("-birthdate").limit(4)]
    assert ordered == [f"20{i:02d}-01-01" for i in reversed(range(23))]
    given = [p["name"][0]["given"][0] for p in patients.sort("given").limit(5).fetch_all()]
    assert given == [f"Kind{i:02d}" for i in range(23)]
    # a narrower search pages the same way
    late = patients.search(birthdate__ge="2015").limit(3)
    assert sorted(p["birthDate"] for p in late.fetch_all()) == [
        f"20{i:02d}-01-01" for i in range(15, 23)]
    assert late.count() == 8
    # the raw first page: searchset Bundle with a total and a next link
    raw = patients.limit(10).fetch_raw()
    assert raw["type"] == "searchset" and raw["total"] == 23
    assert any(link["relation"] == "next" for link in raw["link"])
