"""Optimistic locking under concurrency: of two writers holding the same version, one wins."""

from __future__ import annotations

import threading

import pytest

from ekd.errors import FhirError
from ekd.interaction import route
from ekd.interaction.base import FhirRequest, Services
from ekd.store.database import Database
from ekd.store.resources import ResourceStore, VersionConflict
from tests.fhir_helpers import patient


def test_store_compare_and_set(database: Database) -> None:
    with database.write() as conn:
        stored = ResourceStore(conn).create("Patient", "cas", patient())
    # Two writers read version 1; the first commits; the second must not overwrite it.
    with database.write() as conn:
        ResourceStore(conn).update(stored, patient(gender="male"))
    with pytest.raises(VersionConflict), database.write() as conn:
        ResourceStore(conn).update(stored, patient(gender="female"))
    with database.read() as conn:
        current = ResourceStore(conn).current("Patient", "cas")
    assert current is not None and current.version == 2
    assert current.content is not None and current.content["gender"] == "male"


def _put(services: Services, body: dict, if_match: str | None) -> int:
    req = FhirRequest(method="PUT", base="http://x/fhir", type="Patient", id=body["id"],
                      body=body, if_match=if_match)
    try:
        return route.handle(services, req).status
    except FhirError as exc:
        return exc.status


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_if_match_exactly_one_wins(services: Services, writers: int) -> None:
    for round_ in range(10):
        rid = f"race-{writers}-{round_}"
        assert _put(services, patient(id=rid), None) == 201
        barrier = threading.Barrier(writers)
        results: list[int] = []

        def write(n: int, rid: str = rid, barrier: threading.Barrier = barrier,
                  results: list[int] = results) -> None:
            barrier.wait()
            results.append(_put(services, patient(id=rid, gender=["male", "female"][n % 2],
                                                  active=bool(n)), 'W/"1"'))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200] + [412] * (writers - 1), results
        with services.db.read() as conn:
            current = ResourceStore(conn).current("Patient", rid)
        assert current is not None and current.version == 2


def test_concurrent_updates_without_if_match_all_land(services: Services) -> None:
    assert _put(services, patient(id="busy"), None) == 201
    results: list[int] = []

    def write(n: int) -> None:
        results.append(_put(services, patient(id="busy", active=bool(n % 2),
                                              gender=["male", "female", "other"][n % 3]), None))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 200 for status in results), results
    with services.db.read() as conn:
        store = ResourceStore(conn)
        current = store.current("Patient", "busy")
        history = store.history("Patient", "busy", since=None, at_or_before_seq=None, limit=50)
    assert current is not None
    # Each write is a distinct version; no version number is used twice.
    assert sorted(v.version for v in history) == list(range(1, current.version + 1))
