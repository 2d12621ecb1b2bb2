"""The fast indexer (walkers of `ekd.search.walk` where they apply) gives exactly the rows of the
engine-only one (`Indexer(..., fast=False)`: every expression through the FHIRPath engine).

Compared on every official R4 example, on demo dossiers, and on deliberately odd variants of
the examples (primitive extensions, lists where one value belongs and back, resource-typed
content where a data type belongs) that take the walkers' fallbacks to the engine. Rows are
compared whole, per table and in order, so every parameter of every resource is covered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from ekd.jgz.demo import generate, shared_bundle
from ekd.search.index import Indexer
from ekd.search.parameters import SearchParameters
from ekd.search.walk import Fallback, compile_walker
from tests.examples_corpus import load_corpus

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


@cache
def _parameters() -> SearchParameters:
    params = SearchParameters()
    for f in sorted(PROFILES.glob("SearchParameter-*.json")):
        params.add(json.loads(f.read_text(encoding="utf-8")))
    return params


def _outcome(indexer: Indexer, resource: dict) -> object:
    """The rows, or the exception a broken resource makes the row makers raise."""
    try:
        return indexer(resource)
    except Exception as exc:  # both paths must fail alike on content they cannot read
        return f"raised {type(exc).__name__}"


def _differences(resources: list[dict]) -> list[str]:
    params = _parameters()
    fast, engine = Indexer(params), Indexer(params, fast=False)
    problems = []
    for r in resources:
        got, want = _outcome(fast, r), _outcome(engine, r)
        if got == want:
            continue
        where = f"{r.get('resourceType')}/{r.get('id')}"
        if not isinstance(got, dict) or not isinstance(want, dict):
            problems.append(f"{where}: {got!r:.200} != {want!r:.200}")
            continue
        for table in sorted(set(got) | set(want)):
            a, b = got.get(table, []), want.get(table, [])
            if a != b:
                names = sorted({row["param"] for row in a + b if row not in a or row not in b})
                problems.append(f"{where} {table} {names or '(order)'}: "
                                f"{[x for x in a if x not in b]} != {[x for x in b if x not in a]}")
    return problems


# -- the corpora ------------------------------------------------------------------------------


def test_r4_examples_index_the_same() -> None:
    examples = [r for _, r in load_corpus().examples]
    assert len(examples) == 719
    assert _differences(examples) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_demo_dossiers_index_the_same(seed: int) -> None:
    resources = [e["resource"] for b in generate(3, seed=seed) for e in b["entry"]]
    resources += [e["resource"] for e in shared_bundle()["entry"]]
    assert len(resources) > 400
    assert _differences(resources) == []


def test_rows_are_made_at_all() -> None:
    """Not two empty answers: the demo dossier indexes what searches need."""
    params = _parameters()
    rows = [Indexer(params)(e["resource"]) for e in next(generate(1, seed=1))["entry"]]
    names = {row["param"] for r in rows for table in r.values() for row in table}
    assert {"code", "subject", "date", "value-quantity", "code-value-quantity", "identifier",
            "bds-element", "bds-vaccine", "_profile"} <= names


# -- odd content: the walkers' fallbacks ------------------------------------------------------


def _copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _ext() -> dict:
    return {"extension": [{"url": "http://example.org/x", "valueString": "x"}]}


def _dicts(value: Any, depth: int = 0) -> Iterator[tuple[dict, int]]:
    if isinstance(value, dict):
        yield value, depth
        for v in value.values():
            yield from _dicts(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v, depth)


def _primitive_extensions(r: dict) -> dict:
    """`_name` companions on primitives; every third primitive has only the extension."""
    r = _copy(r)
    n = 0
    for d, _ in list(_dicts(r)):
        for key, v in list(d.items()):
            if key.startswith("_") or key == "resourceType":
                continue
            if isinstance(v, str | bool | int | float):
                n += 1
                d["_" + key] = _ext()
                if n % 3 == 0:
                    del d[key]
            elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                d["_" + key] = [_ext() if i % 2 else None for i in range(len(v))]
    return r


def _listified(r: dict) -> dict:
    """Single values (objects or primitives) a level or two below the root as a list of two
    copies."""
    r = _copy(r)
    for d, depth in list(_dicts(r)):
        if depth not in (1, 2):
            continue
        for key, v in list(d.items()):
            if key != "resourceType" and not isinstance(v, list):
                d[key] = [v, _copy(v)]
    return r


def _single(r: dict) -> dict:
    """Lists replaced by their first item (or a single value where a list belongs)."""
    r = _copy(r)
    for d, _ in list(_dicts(r)):
        for key, v in list(d.items()):
            if isinstance(v, list) and v:
                d[key] = v[0]
    return r


def _resource_typed(r: dict) -> dict:
    """A `resourceType` inside data types: the engine types such content as a resource."""
    r = _copy(r)
    for d, depth in list(_dicts(r)):
        if depth and "resourceType" not in d:
            d["resourceType"] = "Basic"
    return r


def _broken(r: dict) -> dict:
    """Strings where objects belong and objects where strings belong."""
    r = _copy(r)
    for i, (d, depth) in enumerate(list(_dicts(r))):
        if not depth:
            continue
        for key, v in list(d.items()):
            if isinstance(v, dict) and i % 2:
                d[key] = "oops"
            elif isinstance(v, str) and key != "resourceType" and not i % 2:
                d[key] = {"value": v}
    return r


MUTATIONS: dict[str, Callable[[dict], dict]] = {
    "primitive-extensions": _primitive_extensions,
    "listified": _listified,
    "single": _single,
    "resource-typed": _resource_typed,
    "broken": _broken,
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_odd_content_indexes_the_same(mutation: str) -> None:
    dossier = [e["resource"] for e in next(generate(1, seed=5))["entry"]]
    assert _differences([MUTATIONS[mutation](r) for r in _small_examples() + dossier]) == []


@cache
def _small_examples() -> list[dict]:
    """The examples but the few huge Bundles (megabytes of entries that index nothing)."""
    out = [r for _, r in load_corpus().examples if len(orjson.dumps(r)) < 100_000]
    assert len(out) > 650
    return out


# -- the walkers ---------------------------------------------------------------------------


def test_most_expressions_are_walked() -> None:
    """The walkers cover the simple shapes; the engine is left only a handful."""
    params = _parameters()
    from ekd.fhirpath.model import PARENTS, is_resource_type

    total = walked = 0
    for rtype in {t for t in PARENTS if is_resource_type(t)} - {"Resource", "DomainResource"}:
        for extractor in params.extractors(rtype):
            for walker in extractor.walkers + extractor.component_walkers:
                total += 1
                walked += walker is not None
    assert total > 2000
    assert walked / total > 0.98


@pytest.mark.parametrize("expression", [
    "Observation.code", "(Observation.value as Quantity)", "Observation.value.as(Quantity)",
    "(Observation.value as CodeableConcept).text", "Patient.telecom.where(system='phone')",
    "value.as(Quantity) | value.as(Range)", "Observation.component.value.ofType(Quantity)",
    "Resource.meta.tag", "code",
])
def test_simple_shapes_compile(expression: str) -> None:
    assert compile_walker(expression) is not None


@pytest.mark.parametrize("expression", [
    "Bundle.entry[0].resource", "Patient.deceased.exists() and Patient.deceased != false",
    "Consent.extension('http://x').value", "%resource.referenceSeq.chromosome",
    "Patient.name.where(use = 'official' and family = 'x')", "Patient.name.first()",
    "value as FHIR.Quantity", "Patient.name.where(text = 'a\\'b')", "Patient.name ~ 'x'",
    "Patient.name.where(HumanName = 'x')", "(Patient.name | Patient.alias).text",
    "Patient.name.given is string", "Patient.name.given[0]",
])
def test_other_shapes_are_left_to_the_engine(expression: str) -> None:
    assert compile_walker(expression) is None


def test_a_union_of_several_items_is_left_to_the_engine() -> None:
    walker = compile_walker("code | component.code")
    assert walker is not None
    one = {"resourceType": "Observation", "code": {"text": "a"}}
    assert walker.walk(("Observation", one, "Observation")) == [
        ("CodeableConcept", {"text": "a"}, "CodeableConcept")]
    two = {**one, "component": [{"code": {"text": "a"}}]}
    with pytest.raises(Fallback):
        walker.walk(("Observation", two, "Observation"))


def test_a_parameter_added_later_is_indexed() -> None:
    params = SearchParameters()
    fast = Indexer(params)
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "2020-01-02",
               "gender": "female"}
    assert "search_token" in fast(patient)
    assert not any(row["param"] == "sex" for row in fast(patient)["search_token"])
    params.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/sex",
                "code": "sex", "type": "token", "base": ["Patient"],
                "expression": "Patient.gender", "status": "active"})
    rows = fast(patient)
    assert {"param": "sex", "system": None, "code": "female", "text": None} in rows[
        "search_token"]
    assert rows == Indexer(params, fast=False)(patient)
