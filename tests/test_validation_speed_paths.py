"""The fast paths of profile validation give exactly what the general paths give.

- FHIRPath constant folding (`ekd.fhirpath.engine.FOLD_CONSTANTS`): sub-expressions made of
  literals only are evaluated at compile time; `in`/`contains` against a constant collection
  of strings/booleans use a set, `x = 'literal'` skips the general comparison. Each case is
  evaluated with folding on and off and must agree (value, or the error).
- Invariant evaluation reuses the FHIRPath variables per resource (`Scope.fhirpath_vars`)
  and reads the truth of a result from its items.
- Member lookups through cached plans, cached date/time parsing, the ele-1 shortcut.
- A whole JGZ dossier, and broken variants of it, validates to the same issues either way.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ekd import fhirpath
from ekd.fhirpath import Expression, FhirPathError, engine
from ekd.validation import invariants
from ekd.validation.invariants import Scope, compile_invariant, has_value_or_children

ROOT = Path(__file__).resolve().parents[1]
VW_SYSTEM = "urn:oid:2.16.840.1.113883.2.4.4.40.267"

OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"},
                        {"system": VW_SYSTEM, "code": "886"}],
             "_text": {"extension": [{"url": "http://example.org/x", "valueString": "t"}]}},
    "category": [{"coding": [{"code": "vital-signs", "_system": {"id": "s1"}}]}],
    "_status": {"id": "st"},
    "valueQuantity": {"value": 1.5, "unit": "cm", "system": "http://unitsofmeasure.org",
                      "code": "cm"},
    "effectivePeriod": {"start": "2024-02-26T12:40:00+01:00", "end": "2024-02-26"},
    "component": [{"code": {"text": "c"}, "valueBoolean": True},
                  {"code": {"text": "d"}, "valueInteger": 1}],
    "contained": [{"resourceType": "Patient", "id": "p", "active": False}],
    "subject": {"reference": "#p"},
}


@pytest.fixture
def folding() -> Iterator[None]:
    saved = engine.FOLD_CONSTANTS
    yield
    engine.FOLD_CONSTANTS = saved
    fhirpath.compile.cache_clear()


def outcome(expression: str, resource: Any, fold: bool, **kwargs: Any) -> Any:
    engine.FOLD_CONSTANTS = fold
    try:
        ex = Expression(expression, **kwargs)  # compiled now, under the switch
    except FhirPathError as exc:
        return ("compile error", type(exc).__name__)
    try:
        items = ex.items(resource)
        return ("ok", [(fhirpath.type_of(x).name, fhirpath.literal(x)) for x in items],
                ex(resource))
    except FhirPathError as exc:
        return ("error", type(exc).__name__)


CODES = "('886' | '892' | '893' | '886' | 'true')"
CASES = [
    # membership against constant string collections, every kind of left item
    f"code.coding.code.all($this in {CODES})",
    f"code.coding.where(system = '{VW_SYSTEM}').code.all($this in {CODES})",
    f"code.coding.code.where($this in {CODES})",
    f"'886' in {CODES}", f"'887' in {CODES}", f"'' in {CODES}",
    f"true in {CODES}", "true in ('a' | true)", "false in ('a' | true)", "true in ('true')",
    f"886 in {CODES}", "1 in ('1' | 'a')", "1 in (1 | 'a')", "1.0 in (1 | 'a')",
    "true in (1 | 'a')", "1 in (true | 'a')",
    "@2020 in ('2020' | 'a')", "@2020-01 in (@2020 | @2021)", "@2020 in (@2020 | 'x')",
    "1 'cm' in ('1 cm' | 'a')", "10 'mm' in (1 'cm' | 'a')",
    "status in ('final' | 'amended')", "status in ('amended')", "status.id in ('st' | 'x')",
    "code.text in ('t' | 'x')",  # a primitive with only extensions: no value
    "code.coding.code in ('886' | 'x')",  # several items on the left: an error
    "{} in ('a' | 'b')", "'a' in {}", "'a' in ({} | {})",
    "valueQuantity in ('1.5 cm' | 'x')", "value in ('1.5' | 'x')",
    "component.value in ('true' | 'x')", "component.value.first() in ('true' | 'x')",
    "component.value.last() in ('1' | 'x')", "component.value.first() in (true | 'x')",
    f"{CODES} contains '886'", f"{CODES} contains '887'", f"{CODES} contains status",
    f"{CODES} contains true", f"{CODES} contains 886", f"{CODES} contains code.coding.code",
    f"{CODES} contains {{}}", "('a' | 1) contains 1", "('a' | 1.0) contains 1",
    "(true | 'x') contains true", "(true | 'x') contains 'true'",
    # equality with a string literal, either side
    "status = 'final'", "'final' = status", "status != 'final'", "'final' != status",
    "status = 'amended'", "status != 'amended'", "code.coding.code = '886'",
    "code.coding.system = 'http://loinc.org'", "code.text = 't'", "code.text != 't'",
    "{} = 'a'", "'a' = {}", "true = 'true'", "1 = '1'", "'1' = 1", "@2020 = '2020'",
    "component.value.first() = 'true'", "component.value.last() != '1'",
    "value = '1.5'", "effective.start = '2024-02-26T12:40:00+01:00'",
    "category.coding.system = 'x'", "'a' = 'a'", "'a' != 'b'", "'a' = 'b' | 'a'",
    # folding itself: literal-only sub-expressions of all operator kinds
    "('a' | 'b' | 'a').count()", "('a' | 'b') | ('b' | 'c')", "(1 | 1.0 | 2)",
    "(@2020 | @2020-01 | @2020)", "(1 'cm' | 10 'mm')", "('a' | {} | 'b')",
    "1 < 2", "1 < 'a'", "'a' & 'b'", "'a' & {}", "true and {}", "false implies {}",
    "true xor false", "1 ~ 1.0", "'A b' ~ 'a  B'", "(1 | 2) = (1 | 2)", "(1 | 2) in (1 | 2)",
    "1 in (1 | 2) and 'a' in ('a')", "@2020 < @2020-01", "@2020 = @2020-01",
    "(1 | 2 | 3).where($this > 1)", "2 * 3", "1 / 0", "'a' + 'b'", "-1 in (-1 | 2)",
    "'a' | status | 'b' | 'final'", "('x' | 'y').all($this in ('x' | 'y' | 'z'))",
    "today() = today()", "%ucum in ('http://unitsofmeasure.org')",
]


@pytest.mark.parametrize("expression", CASES)
def test_folding_changes_nothing(folding: None, expression: str) -> None:
    for kwargs in ({}, {"strict": True}, {"as_singleton": True}):
        assert outcome(expression, OBS, True, **kwargs) == \
            outcome(expression, OBS, False, **kwargs), kwargs


def test_literal_unions_are_folded_at_compile_time(folding: None) -> None:
    engine.FOLD_CONSTANTS = True
    ex = Expression("'886' | '892' | '886' | ('893' | '892')")
    assert engine.const_items(ex._ev) == ("886", "892", "893")
    assert engine.const_items(Expression("1 < 2")._ev) == (True,)
    # not constant: anything that reads the focus, variables or the clock
    for text in ("'a' | status", "%ucum | 'a'", "today() | 'a'", "$this | 'a'", "1 * 2",
                 "1 'cm' = 10 'mm'", "(1 'cm' | 'a')"):
        assert engine.const_items(Expression(text)._ev) is None, text
    engine.FOLD_CONSTANTS = False
    assert engine.const_items(Expression("'a' | 'b'")._ev) is None


def test_folding_leaves_errors_to_evaluation(folding: None) -> None:
    engine.FOLD_CONSTANTS = True
    for text in ("1 < 'a'", "(1 | 2) in (1 | 2)", "'a' contains (1 | 2)", "@T10:00 < @2020"):
        ex = Expression(text)  # compiles: the error belongs to each evaluation
        with pytest.raises(FhirPathError):
            ex.items(OBS)


def test_constant_results_are_fresh_lists(folding: None) -> None:
    engine.FOLD_CONSTANTS = True
    ex = Expression("'a' | 'b'")
    first = ex.items(None)
    first.append("c")
    assert ex.items(None) == ["a", "b"]


def test_long_value_lists_compile_without_deep_recursion(folding: None) -> None:
    engine.FOLD_CONSTANTS = True
    codes = [f"'{i}'" for i in range(3000)]
    ex = Expression(f"code.coding.code.all($this in ({' | '.join(codes)}))")
    assert ex({"resourceType": "Observation", "code": {"coding": [{"code": "2999"}]}}) == [True]
    assert ex({"resourceType": "Observation", "code": {"coding": [{"code": "3000"}]}}) == [False]


# -- invariant evaluation ----------------------------------------------------------------------


def test_prepared_variables_match_plain_ones() -> None:
    plain = {"resource": OBS, "rootResource": OBS["contained"][0], "ucum": "u", "n": [1, 2.5]}
    prepared = fhirpath.variables(plain)
    for text in ("%resource.status", "%rootResource.active", "%ucum", "%n", "%context.id",
                 "%resource.contained.id", "%rootResource = %resource.contained.first()"):
        assert fhirpath.evaluate(OBS, text, prepared) == fhirpath.evaluate(OBS, text, plain)
    only = fhirpath.variables({"resource": OBS})
    assert fhirpath.evaluate(None, "%rootResource.status", only) == ["final"]


@pytest.mark.parametrize("expression", [
    "status = 'final'", "status = 'x'", "{}", "code.text", "code.coding.code",
    "component.value.first()", "component.value.last()", "contained.active",
    "contained.active.not()", "status", "1", "code.coding.code.first() in ('886')",
    "%resource.status = 'final'", "%rootResource.id = 'p'", "value.exists()", "1 < 'a'",
])
def test_invariant_outcome_is_the_general_one(expression: str) -> None:
    inv = compile_invariant({"key": "t", "expression": expression}, "test")
    expected: bool | None
    try:
        got = fhirpath.compile(expression)(OBS, {"resource": OBS, "rootResource": OBS,
                                                 "ucum": invariants.UCUM}, base="Observation")
        expected = invariants._truth(got)
    except FhirPathError:
        expected = None
    scope = Scope(OBS, OBS)
    assert inv.evaluate(OBS, scope, "Observation") is expected
    assert inv.evaluate(OBS, scope, "Observation") is expected  # with the cached variables
    assert scope.fhirpath_vars is not None


def test_period_invariant_with_cached_date_parsing() -> None:
    per1 = compile_invariant({"key": "per-1", "expression":
                              "start.hasValue().not() or end.hasValue().not() or "
                              "(start <= end)"}, "test")
    scope = Scope(OBS, OBS)
    for start, end, ok in (("2024-02-26T12:40:00+01:00", "2024-02-26T13:25:00+01:00", True),
                           ("2024-02-26T13:40:00+01:00", "2024-02-26T13:25:00+01:00", False),
                           ("2024-02-26T13:40:00+01:00", "2024-02-26T12:45:00Z", True),
                           ("2024-02-26T13:40:00+01:00", "2024-02-26T12:25:00Z", False),
                           ("2024-02-26", "2024-02-25", False), ("2024", "2024-02", None)):
        for _ in range(2):  # the second time from the parse cache
            assert per1.evaluate({"start": start, "end": end}, scope, "Period") is ok, \
                (start, end)


def test_ele1_shortcut() -> None:
    for value, expected in (({}, False), ({"id": "a"}, False), ({"id": "a", "x": 1}, True),
                            ({"x": 1}, True), ({"_x": {}}, True), ("a", True), (None, False)):
        assert has_value_or_children(value) is expected
        if isinstance(value, dict):
            assert expected is any(k != "id" for k in value)


def test_member_plans_cover_choices_primitive_extensions_and_resources() -> None:
    assert fhirpath.evaluate(OBS, "value.value") == [Decimal("1.5")]
    assert fhirpath.evaluate(OBS, "component.value") == [True, 1]
    assert fhirpath.evaluate(OBS, "code.text.extension.value") == ["t"]
    assert fhirpath.evaluate(OBS, "category.coding.system.id") == ["s1"]
    assert fhirpath.evaluate(OBS, "status.id") == ["st"]
    assert fhirpath.evaluate(OBS, "contained.active") == [False]
    assert fhirpath.evaluate(OBS, "contained.ofType(Patient).id") == ["p"]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": OBS}, {"resource": None}]}
    assert fhirpath.evaluate(bundle, "entry.resource.status") == ["final"]
    assert fhirpath.evaluate(bundle, "entry.resource.ofType(Observation).count()") == [1]


# -- a whole dossier ---------------------------------------------------------------------------


def _dossier() -> list[dict]:
    from ekd.jgz import demo

    bundle = next(demo.generate(1, seed=3))
    shared = demo.shared_bundle()
    return [e["resource"] for b in (shared, bundle) for e in b["entry"] if "resource" in e]


def _broken(resources: list[dict]) -> list[dict]:
    """Variants that violate the Van Wiechen invariants and others with string literals."""
    out = []
    vw = [r for r in resources if "VanWiechen" in json.dumps(r.get("meta", {}))]
    for code in ("886", "879", "1", "99999"):
        for r in vw[:3]:
            bad = copy.deepcopy(r)
            for c in bad["code"].get("coding", []):
                if c.get("system") == VW_SYSTEM:
                    c["code"] = code
            bad.pop("valueCodeableConcept", None)
            bad["valueBoolean"] = True
            out.append(bad)
    for r in resources:
        if r.get("resourceType") == "Encounter":
            bad = copy.deepcopy(r)
            bad["status"] = "cancelled"
            out.append(bad)
            break
    return out


def _issues(tmp: Path, fold: bool, resources: list[dict]) -> list[list[tuple]]:
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.interaction.write import validation_issues
    from ekd.store.database import Database

    engine.FOLD_CONSTANTS = fold
    fhirpath.compile.cache_clear()
    url = f"sqlite:///{tmp / 'ekd.db'}"
    db = Database(url)
    db.upgrade()
    try:
        services = build_services(Settings(database_url=url, base_url="http://testserver/fhir",
                                           jgz_enforce=True, key_dir=str(tmp / "keys")), db)
        return [[(i.severity, i.code, i.diagnostics, i.expression)
                 for i in validation_issues(services, r)] for r in resources]
    finally:
        db.dispose()


def test_dossier_issues_are_the_same_with_and_without_folding(folding: None,
                                                               tmp_path: Path) -> None:
    resources = _dossier()
    resources += _broken(resources)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    on = _issues(tmp_path / "a", True, resources)
    off = _issues(tmp_path / "b", False, resources)
    assert on == off
    assert not any(i[0] in ("error", "fatal") for r in on[: len(_dossier())] for i in r)
    assert any("jgz-vw" in i[2] for r in on for i in r)  # the broken ones are caught


@pytest.mark.parametrize("resource", [
    {"resourceType": "Observation", "status": "final"},
    {"resourceType": "Observation", "contained": []},
    OBS,  # contained Patient, referenced
    {**OBS, "subject": {"reference": "Patient/x"}},  # contained, not referenced
    {"resourceType": "Observation", "_contained": [{"id": "x"}]},
    {"resourceType": "Bundle", "type": "collection"},
])
def test_dom3_shortcut_without_contained(resource: dict) -> None:
    from ekd.fhirpath import compile as compile_fhirpath

    constraint = {"key": "dom-3", "expression": invariants._DOM3_OF_TYPE}
    shortcut = compile_invariant(constraint, "test")
    plain = invariants._engine(compile_fhirpath(invariants._DOM3_OF_TYPE), ())
    scope = Scope(resource, resource)
    assert shortcut.evaluate(resource, scope, None) is plain(resource, Scope(resource, resource),
                                                             None)
