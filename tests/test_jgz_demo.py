"""`ekd demo-data`: synthetic JGZ dossiers (ekd/jgz/demo.py, ekd/cli/demo.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ekd.cli.demo import demo_data, post_bundles
from ekd.jgz import BDS_ELEMENTS, demo, value_list_system
from tests.app_helpers import fhir_client

REF = dt.date(2026, 11, 1)
BSN = "http://fhir.nl/fhir/NamingSystem/bsn"


@pytest.fixture(scope="module")
def bundles() -> list[dict]:
    return list(demo.generate(60, seed=7, reference_date=REF))


def _resources(bundle: dict, rtype: str | None = None) -> list[dict]:
    return [e["resource"] for e in bundle["entry"]
            if rtype is None or e["resource"]["resourceType"] == rtype]


def _patient(bundle: dict) -> dict:
    (patient,) = _resources(bundle, "Patient")
    return patient


def _age_years(bundle: dict) -> float:
    birth = dt.date.fromisoformat(_patient(bundle)["birthDate"])
    return (REF - birth).days / 365.25


def _soorten(bundle: dict) -> set[str]:
    return {c["code"] for enc in _resources(bundle, "Encounter") for t in enc["type"]
            for c in t["coding"] if c["system"] == value_list_system(308)}


def _dates(resource: dict) -> list[str]:
    out = []
    for key in ("effectiveDateTime", "occurrenceDateTime", "dateTime"):
        if key in resource:
            out.append(resource[key])
    for key in ("period",):
        out.extend(v for k, v in resource.get(key, {}).items() if k in ("start", "end"))
    if resource["resourceType"] == "Patient":
        out.append(resource["birthDate"])
    return out


# -- generator ------------------------------------------------------------------------------------


def test_same_seed_same_output_and_different_seed_different() -> None:
    a = json.dumps(list(demo.generate(5, seed=1, reference_date=REF)), sort_keys=True)
    b = json.dumps(list(demo.generate(5, seed=1, reference_date=REF)), sort_keys=True)
    c = json.dumps(list(demo.generate(5, seed=2, reference_date=REF)), sort_keys=True)
    assert a == b
    assert a != c


def test_one_child_can_be_generated_on_its_own() -> None:
    whole = list(demo.generate(4, seed=3, reference_date=REF))
    assert demo.child_bundle(3, 3, REF) == whole[3]


def test_every_bsn_passes_the_11_test_and_is_unique(bundles: list[dict]) -> None:
    seen = []
    for bundle in bundles:
        for resource in _resources(bundle):
            if resource["resourceType"] in ("Patient", "RelatedPerson"):
                for ident in resource.get("identifier", []):
                    if ident["system"] == BSN:
                        seen.append(ident["value"])
    assert len(seen) > 2 * len(bundles)
    assert all(demo.is_valid_bsn(v) and v.startswith(demo.BSN_PREFIX) for v in seen)
    assert len(set(seen)) == len(seen)
    assert demo.is_valid_bsn("999901795") and not demo.is_valid_bsn("999901796")


def test_bundles_are_transactions_with_internal_references(bundles: list[dict]) -> None:
    for bundle in bundles:
        assert bundle["type"] == "transaction"
        urls = {e["fullUrl"] for e in bundle["entry"]}
        assert all(u.startswith("urn:uuid:") for u in urls)
        assert len(urls) == len(bundle["entry"])
        refs = re.findall(r'"reference": "([^"]+)"', json.dumps(bundle))
        assert refs and set(refs) <= urls
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] in ("Organization", "Practitioner"):
                assert entry["request"]["ifNoneExist"].startswith("identifier=")


def test_nothing_is_dated_after_the_reference_date_or_before_birth(bundles: list[dict]) -> None:
    for bundle in bundles:
        birth = _patient(bundle)["birthDate"]
        for resource in _resources(bundle):
            if resource["resourceType"] == "RelatedPerson":
                continue
            for value in _dates(resource):
                assert birth <= value[:10] <= REF.isoformat(), (resource["resourceType"], value)


def test_birth_dates_spread_over_0_to_18_years() -> None:
    ages = [_age_years(b) for b in demo.generate(300, seed=11, reference_date=REF)]
    assert min(ages) >= 0 and max(ages) < 18
    assert sum(a < 4 for a in ages) > 30 and sum(a > 12 for a in ages) > 30


def test_schedule_follows_the_childs_age(bundles: list[dict]) -> None:
    toddlers = [b for b in bundles if 2 <= _age_years(b) < 3]
    assert toddlers
    for bundle in toddlers:
        soorten = _soorten(bundle)
        assert {"01", "35", "37", "38", "39"} <= soorten
        assert not soorten & {"40", "41"}
        # growth and Van Wiechen are there, no school-age vision chart yet
        codes = Counter(c["code"] for o in _resources(bundle, "Observation")
                        for c in o["code"]["coding"] if c["system"] == BDS_ELEMENTS)
        assert codes["235"] >= 8 and codes["245"] >= 9 and codes["252"] >= 6
        assert codes["879"] <= 1 and codes["986"] >= 1 and codes["110"] == 1
        assert "1590" not in codes and "953" not in codes
        assert len(_resources(bundle, "EpisodeOfCare")) == 1
    teenagers = [b for b in bundles if _age_years(b) >= 16]
    assert teenagers
    for bundle in teenagers:
        assert {"01", "39", "40", "41"} <= _soorten(bundle)
        assert len(_resources(bundle, "EpisodeOfCare")) == 2


def test_growth_follows_plausible_curves(bundles: list[dict]) -> None:
    measures = {"235": "hgt", "245": "wgt", "252": "hdc"}
    for bundle in bundles:
        patient = _patient(bundle)
        birth = dt.date.fromisoformat(patient["birthDate"])
        for obs in _resources(bundle, "Observation"):
            code = next(c["code"] for c in obs["code"]["coding"] if c["system"] == BDS_ELEMENTS)
            if code not in measures:
                continue
            age = (dt.date.fromisoformat(obs["effectiveDateTime"][:10]) - birth).days / 365.25
            q = obs["valueQuantity"]
            value = q["value"] / 1000 if q["code"] == "g" else q["value"]
            z = demo.z_score(measures[code], patient["gender"], age, value)
            assert -4.5 < z < 4.5, (code, age, value, z)


def test_van_wiechen_pass_rate_vaccinations_and_consents() -> None:
    bundles = list(demo.generate(200, seed=5, reference_date=REF))
    answers = Counter()
    consents = Counter()
    vaccines = Counter()
    for bundle in bundles:
        for resource in _resources(bundle):
            profile = resource["meta"]["profile"][0].rsplit("/", 1)[1]
            if profile == "jgz-VanWiechen":
                answers[resource["valueCodeableConcept"]["coding"][0]["code"]] += 1
            elif profile == "jgz-TransferConsent":
                consents[resource["provision"]["type"]] += 1
            elif profile == "jgz-Immunization":
                vaccines[resource["vaccineCode"]["coding"][0]["code"]] += 1
    assert 0.85 < answers["1"] / sum(answers.values()) < 0.95
    assert consents["deny"] > 0 and consents["permit"] > 10 * consents["deny"]
    assert {"01", "04", "08", "09", "11"} <= set(vaccines)


def test_too_many_children_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        next(demo.generate(demo.MAX_CHILDREN + 1))


# -- conformance ----------------------------------------------------------------------------------


def test_every_resource_validates_against_its_profile() -> None:
    from ekd.api.app import build_registry, build_validator
    from ekd.config import Settings
    from ekd.terminology.service import TerminologyService

    registry = build_registry(Settings())
    validator = build_validator(registry, TerminologyService(registry))
    errors = []
    checked = Counter()
    for bundle in demo.generate(20, seed=1, reference_date=REF):
        for resource in _resources(bundle):
            profile = resource["meta"]["profile"][0]
            assert registry.get(profile, "StructureDefinition") is not None, profile
            checked[profile.rsplit("/", 1)[1]] += 1
            for issue in validator.validate(resource, []):
                if issue.severity in ("error", "fatal"):
                    errors.append(f"{profile}: {', '.join(issue.expression)}: "
                                  f"{issue.diagnostics}")
    assert not errors, "\n".join(errors[:10])
    assert len(checked) >= 16, checked


def test_loading_through_the_api(client: TestClient) -> None:
    shared = post_bundles(client, "/fhir", [demo.shared_bundle()])
    assert shared.rejected == 0, shared.first_error
    result = post_bundles(client, "/fhir", demo.generate(10, seed=2, reference_date=REF))
    assert result.rejected == 0, result.first_error
    assert result.children == 10
    assert set(result.statuses) <= {"200", "201"}
    assert result.resources == sum(result.statuses.values()) > 10 * 50
    # the shared organisations were created once, not once per child
    r = client.get("/fhir/Organization", params={"_summary": "count"})
    orgs = {o.ura for pair in demo.ORGANISATIONS.values() for o in pair}
    assert r.status_code == 200 and 0 < r.json()["total"] <= len(orgs)
    r = client.get("/fhir/Patient", params={"_summary": "count"})
    assert r.json()["total"] == 10


def test_loading_with_jgz_enforcement_on(database, settings) -> None:
    """The server's JGZ rules (every resource must meet the profile that fits it) accept it."""
    from ekd.api.app import build_services

    if not hasattr(settings, "jgz_enforce"):
        pytest.skip("this ekd has no JGZ enforcement setting")
    services = build_services(dataclasses.replace(settings, jgz_enforce=True), database)
    with fhir_client(services) as client:
        assert post_bundles(client, "/fhir", [demo.shared_bundle()]).rejected == 0
        result = post_bundles(client, "/fhir", demo.generate(3, seed=2, reference_date=REF))
    assert result.rejected == 0, result.first_error


# -- command line ---------------------------------------------------------------------------------


def test_command_writes_ndjson_and_prints_no_bsn(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(demo_data)
    out = tmp_path / "demo.ndjson"
    result = CliRunner().invoke(app, ["--children", "3", "--seed", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == list(demo.generate(3, 4, REF))
    assert not re.search(r"(?<!\d)999\d{6}(?!\d)", result.output)


def test_command_needs_a_destination() -> None:
    app = typer.Typer()
    app.command()(demo_data)
    result = CliRunner().invoke(app, ["--children", "1"])
    assert result.exit_code != 0
