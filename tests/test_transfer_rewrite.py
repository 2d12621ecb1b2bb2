"""The importer's reference rewriting (`importer._rewrite`) against a plain tree walk.

`_rewrite` works on the serialised resource with a regular expression; the oracle here walks
the parsed tree and replaces every `reference` key whose string value is mapped. Both must
give the same resource for every R4 example, with every reference of it mapped, and for the
edge cases a regular expression could get wrong (escapes, non-ASCII, look-alike text).
"""

from __future__ import annotations

import copy

import orjson
import pytest

from ekd.transfer.importer import _rewrite
from tests.examples_corpus import load_corpus


def oracle(resource: dict, refs: dict[str, str]) -> dict:
    out = copy.deepcopy(resource)
    stack: list[object] = [out]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str) and value in refs:
                    node[key] = refs[value]
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return out


def references(node: object) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "reference" and isinstance(value, str):
                    found.append(value)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def test_every_r4_example_with_every_reference_mapped() -> None:
    examples = load_corpus().examples
    mapped = 0
    for name, resource in examples:
        found = references(resource)
        # every other reference mapped: both the replaced and the kept ones are exercised
        refs = {r: f"Mapped/{n}-ø" for n, r in enumerate(found) if n % 2 == 0}
        got = _rewrite(resource, refs)
        assert got == oracle(resource, refs), name
        mapped += len(refs)
    assert mapped > 1000  # the corpus holds thousands of references; a broken walk finds none


def test_the_original_is_left_alone() -> None:
    resource = {"resourceType": "Observation", "subject": {"reference": "Patient/a"}}
    got = _rewrite(resource, {"Patient/a": "Patient/b"})
    assert got["subject"]["reference"] == "Patient/b"
    assert resource["subject"]["reference"] == "Patient/a"


@pytest.mark.parametrize("resource", [
    # text that looks like a reference inside a string value stays text
    {"note": [{"text": '{"reference":"Patient/a"}'}], "subject": {"reference": "Patient/a"}},
    {"note": [{"text": 'x", "reference":"Patient/a'}]},
    # escapes and non-ASCII in the value itself
    {"subject": {"reference": 'Patient/"a"'}},
    {"subject": {"reference": "Patient/a\\b"}},
    {"subject": {"reference": "Patiënt/ä\u2028"}},
    {"subject": {"reference": "Patient/\u0001"}},
    # a `reference` that is not a string, nested references, references in extensions
    {"subject": {"reference": {"reference": "Patient/a"}}},
    {"subject": {"reference": 5}, "x": [{"reference": "Patient/a"}, {"reference": None}]},
    {"extension": [{"url": "u", "valueReference": {"reference": "urn:uuid:1"}}]},
    # a key named like it elsewhere
    {"references": "Patient/a", "myreference": "Patient/a", "reference ": "Patient/a"},
])
def test_edge_cases(resource: dict) -> None:
    refs = {"Patient/a": "Patient/z", 'Patient/"a"': "Patient/q", "Patient/a\\b": "P/1",
            "Patiënt/ä\u2028": "P/2", "Patient/\u0001": "P/3", "urn:uuid:1": "Patient/u"}
    assert _rewrite(resource, refs) == oracle(resource, refs)
    # and the oracle itself changed something where a mapped reference was present
    if any(isinstance(r, str) and r in refs for r in references(resource)):
        assert oracle(resource, refs) != resource
    assert orjson.dumps(_rewrite(resource, {})) == orjson.dumps(resource)
