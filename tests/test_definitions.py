"""Conformance resources stored on the server take effect without a restart."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ekd.api.app import build_services
from ekd.definitions.sync import catch_up
from ekd.interaction.base import Services

VS_URL = "http://example.org/fhir/ValueSet/kleuren"


def value_set(version: str = "1", title: str = "Kleuren") -> dict:
    return {"resourceType": "ValueSet", "id": "kleuren", "url": VS_URL, "version": version,
            "status": "active", "title": title}


def test_base_definitions_are_there_offline(services: Services) -> None:
    sd = services.definitions.structure_definition("Patient")
    assert sd is not None and sd["snapshot"]["element"][0]["path"] == "Patient"


def test_stored_value_set_is_registered_updated_and_removed(client: TestClient,
                                                          services: Services) -> None:
    registry = services.definitions
    assert registry.get(VS_URL) is None
    assert client.put("/fhir/ValueSet/kleuren", json=value_set()).status_code == 201
    assert registry.get(VS_URL)["title"] == "Kleuren"
    client.put("/fhir/ValueSet/kleuren", json=value_set("2", "Kleuren v2"))
    assert registry.get(VS_URL)["title"] == "Kleuren v2"
    assert registry.get(VS_URL + "|1") is None  # the stored resource replaced, not added
    client.delete("/fhir/ValueSet/kleuren")
    assert registry.get(VS_URL) is None


def test_a_failed_transaction_registers_nothing(client: TestClient, services: Services) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": value_set(), "request": {"method": "PUT", "url": "ValueSet/kleuren"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST",
                                                                  "url": "Observation"}},
    ]}
    assert client.post("/fhir", json=bundle).status_code == 422
    assert services.definitions.get(VS_URL) is None


def test_another_process_sees_stored_definitions(client: TestClient, services: Services) -> None:
    client.put("/fhir/ValueSet/kleuren", json=value_set())
    other = build_services(services.settings, services.db)  # as a second worker starts
    assert other.definitions.get(VS_URL)["title"] == "Kleuren"
    client.put("/fhir/ValueSet/kleuren", json=value_set("2", "Kleuren v2"))
    assert other.definitions.get(VS_URL)["title"] == "Kleuren"
    catch_up(other.db, other.definitions)  # what its polling thread does
    assert other.definitions.get(VS_URL)["title"] == "Kleuren v2"
    client.delete("/fhir/ValueSet/kleuren")
    catch_up(other.db, other.definitions)
    assert other.definitions.get(VS_URL) is None
