"""The second round of validation fast paths gives exactly what the general paths give.

- Primitive checks: R4's string regex answered without the regex engine; outcomes of codes,
  uris, canonicals and ids remembered by value.
- Fixed values and patterns: `_matches` (a truth value, no paths built) agrees with
  `_compare`, which builds the paths a mismatch is reported at.
- FHIRPath member lookups on choice elements (`value` of an Observation) go straight to the
  one type present instead of trying every type's key.
- The walker's per-(element, type) plans are a function of the definitions only.
- The JGZ profile choice for Observations is remembered by the codings' (system, code).
- Invariants that provably read only some members of their focus remember their outcome by
  those members' JSON (`ekd.fhirpath.deps.focus_members`, `invariants._remembering`).
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ekd import fhirpath
from ekd.fhirpath import model
from ekd.validation import primitives
from ekd.validation.primitives import DEFAULT_REGEX, STRING_REGEX, make_check
from ekd.validation.walker import _compare, _matches

# -- primitives --------------------------------------------------------------------------------


def test_string_regex_shortcut_agrees_with_the_regex_for_every_code_point() -> None:
    regex = re.compile(STRING_REGEX, re.ASCII)
    assert DEFAULT_REGEX["string"] == DEFAULT_REGEX["markdown"] == STRING_REGEX
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        for s in (c, f"a{c}", f"{c} b"):
            assert bool(regex.fullmatch(s)) is bool(primitives._no_ff_or_vt(s)), hex(cp)


def _general(type_code: str) -> primitives.PrimitiveCheck:
    """The check with the same regex written differently, remembering nothing: no shortcut
    applies to it."""
    regex = DEFAULT_REGEX[type_code]
    saved = primitives._REMEMBERED
    primitives._REMEMBERED = frozenset()
    try:
        return make_check(type_code, f"(?:{regex})")
    finally:
        primitives._REMEMBERED = saved


VALUES: list[Any] = [
    "", "a", "a b", " a", "a ", "a\x0bb", "\x0c", "a\tb\r\nc", "\u00a0", "x" * 300,
    "urn:uuid:0f4c6a2e-9a7b-4c1e-8f2a-1b2c3d4e5f60", "urn:uuid:0F4C", "urn:oid:1.2.3",
    "urn:oid:1.02", "http://x.org/a b", "#p", "8302-2", 1, 1.5, True, None, [], {},
]


@pytest.mark.parametrize("type_code", ["string", "markdown", "code", "uri", "url", "canonical",
                                       "id", "oid", "uuid"])
def test_primitive_shortcuts_agree_with_the_general_check(type_code: str) -> None:
    fast = make_check(type_code, DEFAULT_REGEX[type_code])
    general = _general(type_code)
    for _ in range(2):  # the second time from what the check remembers
        for value in VALUES:
            assert fast(value) == general(value), (type_code, value)


def test_remembered_outcomes_are_bounded() -> None:
    check = make_check("code", DEFAULT_REGEX["code"])
    general = _general("code")
    for i in range(primitives._REMEMBER_COUNT * 2 + 10):
        value = f"c{i}" if i % 7 else f"c {i}  x"
        assert check(value) == general(value)
    cells = [c.cell_contents for c in check.__closure__ or () if isinstance(c.cell_contents, dict)]
    assert cells and all(len(c) <= primitives._REMEMBER_COUNT for c in cells)


# -- fixed values and patterns -----------------------------------------------------------------


def _pairs() -> Iterator[tuple[Any, Any]]:
    coding = {"system": "http://loinc.org", "code": "8302-2"}
    leaves: list[Any] = ["a", "b", "", 1, 1.0, Decimal("1.00"), 2, True, False, None]
    for a in leaves:
        for b in leaves:
            yield a, b
    cc = {"coding": [coding]}
    values: list[Any] = [
        coding, {**coding, "display": "x"}, {**coding, "id": "1"}, {"system": "http://loinc.org"},
        {**coding, "extension": [{"url": "u"}]}, {"code": "8302-2", "system": 1},
        cc, {"coding": [coding, {"system": "s", "code": "c"}]},
        {"coding": [{"system": "s", "code": "c"}, coding]}, {"coding": []}, {"coding": coding},
        {"coding": [{**coding, "display": "d"}]}, [coding], [coding, coding], [], "x", None,
    ]
    for v in values:
        for e in (coding, cc, {"coding": [coding, {"system": "s", "code": "c"}]}, [coding],
                  {"system": "http://loinc.org"}, {"coding": []}):
            yield v, e
            yield e, v


def test_matches_agrees_with_compare() -> None:
    n = 0
    for value, expected in _pairs():
        for exact in (True, False):
            assert _matches(value, expected, exact) is (
                _compare(value, expected, exact, "X") is None), (value, expected, exact)
            n += 1
    assert n > 400


# -- FHIRPath choice members -------------------------------------------------------------------

OBS_VARIANTS: list[dict] = [
    {"resourceType": "Observation", "valueQuantity": {"value": 1, "unit": "cm"}},
    {"resourceType": "Observation", "valueString": "a", "_valueString": {"id": "x"}},
    {"resourceType": "Observation", "_valueString": {"id": "x"}},
    {"resourceType": "Observation", "valueBoolean": True, "valueInteger": 2},  # two types
    {"resourceType": "Observation", "valueInteger": 2, "_valueBoolean": {"id": "b"}},
    {"resourceType": "Observation", "valueString": None},
    {"resourceType": "Observation", "valueCodeableConcept": [{"text": "a"}, None]},
    {"resourceType": "Observation", "value": 1, "valueFoo": 2},  # not FHIR keys
    {"resourceType": "Observation", "status": "final"},
    {"resourceType": "Observation", "component": [{"valueQuantity": {"value": 1}},
                                                  {"valueString": "s", "valueTime": "10:00:00"},
                                                  {"_valueTime": {"extension": []}}]},
]
EXPRESSIONS = ["value", "value.exists()", "value.id", "value.ofType(string)", "value.value",
               "component.value", "component.value.count()", "value is Quantity",
               "dataAbsentReason.empty() or value.empty()", "value.extension.exists()"]


def _results() -> list[Any]:
    out: list[Any] = []
    for r in OBS_VARIANTS:
        for e in EXPRESSIONS:
            try:
                out.append(fhirpath.evaluate(copy.deepcopy(r), e))
            except fhirpath.FhirPathError as exc:
                out.append(("error", str(exc)))
    return out


def test_choice_member_shortcut_agrees_with_trying_every_type(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fhirpath.compile.cache_clear()
    model._member_plan.cache_clear()
    assert isinstance(model._member_plan("Observation", "value"), model._Choice)
    fast = _results()
    monkeypatch.setattr(model, "_FEW", 10_000)  # no plan counts as a choice: the plain loop
    model._member_plan.cache_clear()
    fhirpath.compile.cache_clear()
    assert not isinstance(model._member_plan("Observation", "value"), model._Choice)
    try:
        assert _results() == fast
    finally:
        monkeypatch.undo()
        model._member_plan.cache_clear()
        fhirpath.compile.cache_clear()


# -- a dossier: walker plans and the JGZ profile choice ----------------------------------------


def _dossier() -> list[dict]:
    from ekd.jgz import demo

    bundle = next(demo.generate(1, seed=3))
    shared = demo.shared_bundle()
    return [e["resource"] for b in (shared, bundle) for e in b["entry"] if "resource" in e]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Any]:
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.store.database import Database

    url = f"sqlite:///{tmp_path / 'ekd.db'}"
    db = Database(url)
    db.upgrade()
    try:
        yield build_services(Settings(database_url=url, base_url="http://testserver/fhir",
                                      jgz_enforce=True, key_dir=str(tmp_path / "keys")), db)
    finally:
        db.dispose()


def test_walker_plans_depend_on_the_definitions_only(services: Any) -> None:
    from ekd.interaction.write import validation_issues
    from ekd.validation.walker import Walk

    resources = _dossier()
    first = [validation_issues(services, r) for r in resources]
    again = [validation_issues(services, r) for r in resources]
    assert first == again
    validator = services.validator
    walk = Walk(validator, {})
    checked = 0
    for profile in list(validator.compiler._profiles.values()):
        for el in profile.elements():
            for t, plan in (el.plans or {}).items():
                assert walk._plan(el, t) == plan, (el.id, t.code)
                checked += 1
    assert checked > 50


def test_observation_profile_choice_is_remembered_exactly(services: Any) -> None:
    from ekd.errors import ResourceInvalid
    from ekd.jgz.enforcement import JgzProfiles

    observations = [r for r in _dossier() if r["resourceType"] == "Observation"]
    variants: list[dict] = []
    for r in observations[:12]:
        for coding_change in ({"code": "nope"}, {"system": "urn:x"}, {"code": 886},
                              {"code": True}, {"system": None}, {}):
            v = copy.deepcopy(r)
            for c in v["code"].get("coding", []):
                c.update(coding_change)
            variants.append(v)
        v = copy.deepcopy(r)
        v["code"]["coding"] = [*reversed(v["code"]["coding"]), "junk"]
        variants.append(v)
    selector = JgzProfiles(services.definitions, services.terminology)

    def outcome(r: dict, fresh: bool) -> Any:
        codings = [c for c in (r.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
        if fresh:
            return selector._choose(codings) or "none"
        try:
            return tuple(selector.select(r))
        except ResourceInvalid:
            return "none"

    for _ in range(2):
        for r in observations + variants:
            assert outcome(r, fresh=False) == outcome(r, fresh=True)
    assert selector._chosen
    selector._changed({"resourceType": "ValueSet"})
    assert not selector._chosen


# -- remembered invariant outcomes -------------------------------------------------------------


@pytest.mark.parametrize(("expression", "members"), [
    ("dataAbsentReason.empty() or value.empty()", ("dataAbsentReason", "value")),
    ("code.empty() or system.exists()", ("code", "system")),
    ("x.all($this in ('1' | '2'))", ("x",)),
    ("x.where($this = 1).exists()", ("x",)),
    ("value.ofType(CodeableConcept).coding", ("value",)),
    ("a is Quantity", ("a",)),
    ("identifier.where(system = %ucum).exists()", ("identifier",)),
    ("hasValue() or (children().count() > id.count())", None),  # functions of the focus
    ("$this.x", None),
    ("Patient.name", None),  # a type name: the focus itself
    ("iif(a, b, c)", None),
    ("a.iif(b, $this, c)", None),  # iif's arguments may see the focus
    ("a + b", None),  # arithmetic: the decimal context
    ("-a", None),
    ("a.exists(%resource)", None),
    ("%resource.code", None),
    ("%rootResource.contained.id", None),
    ("today() > x", None),
    ("x.resolve().exists()", None),
    ("x.trace('t').exists()", None),
    ("x.memberOf('http://x').exists()", None),
])
def test_focus_members(expression: str, members: tuple[str, ...] | None) -> None:
    from ekd.fhirpath.deps import focus_members

    assert focus_members(expression) == members


def test_focus_members_with_resource_as_focus() -> None:
    from ekd.fhirpath.deps import focus_members

    obs7 = ("value.empty() or component.code.where(coding.intersect(%resource.code.coding)"
            ".exists()).empty()")
    assert focus_members(obs7) is None
    assert focus_members(obs7, resource_is_focus=True) == ("code", "component", "value")
    assert focus_members("%resource", resource_is_focus=True) is None
    assert focus_members("%resource.descendants()", resource_is_focus=True) is None
    assert focus_members("%resource.where(x)", resource_is_focus=True) is None


def test_focus_key_is_exact_or_absent() -> None:
    from ekd.validation.invariants import focus_key

    members = ("value",)
    a = {"resourceType": "Observation", "id": "1", "valueQuantity": {"value": 1}}
    assert focus_key(a, members) == focus_key({**a, "id": "2", "status": "x"}, members)
    assert focus_key(a, members) != focus_key({**a, "valueQuantity": {"value": 1.0}}, members)
    assert focus_key(a, members) != focus_key({**a, "_valueString": {"id": "x"}}, members)
    assert focus_key(a, members) != focus_key({**a, "resourceType": "Basic"}, members)
    for odd in (float("nan"), float("inf"), None, Decimal("1"), 2**70, {1: "a"}):
        assert focus_key({**a, "valueQuantity": {"value": odd}}, members) is None
    assert focus_key({**a, "valueString": "x" * 2000}, members) is None


def test_remembered_outcomes_agree_with_evaluation(services: Any) -> None:
    """Every remembered invariant, on every focus the dossier and broken variants of it give
    it, answers what a fresh evaluation answers (also from the second time on)."""
    import gc

    from ekd.fhirpath import compile as compile_fhirpath
    from ekd.interaction.write import validation_issues
    from ekd.validation import invariants as inv_module

    resources = _dossier()
    broken: list[dict] = []
    for r in resources:
        if r["resourceType"] == "Observation":
            for change in ({"valueQuantity": {"value": 0, "unit": "kg", "code": "kg"}},
                           {"dataAbsentReason": {"text": "x"}}, {"code": {"text": "none"}},
                           {"component": [{"code": r["code"], "valueString": "a"}]}):
                broken.append({**copy.deepcopy(r), **change})
    calls: list[tuple[Any, tuple]] = []
    wrapped = []
    for r in resources + broken:
        validation_issues(services, r)  # compile everything first
    for obj in gc.get_objects():
        if type(obj) is inv_module.Invariant:
            original = obj.evaluate

            def spy(*args: Any, _o: Any = obj, _f: Any = original) -> Any:
                calls.append((_o, args))
                return _f(*args)

            wrapped.append((obj, original))
            obj.evaluate = spy
    try:
        for _ in range(2):
            for r in resources + broken:
                validation_issues(services, r)
    finally:
        for obj, original in wrapped:
            obj.evaluate = original
    remembered = 0
    for obj, args in calls:
        if obj.native or not obj.expression or obj.failure:
            continue
        plain = inv_module._engine(compile_fhirpath(obj.expression), obj.choices)
        assert obj.evaluate(*args) is plain(*args), (obj.key, args[0])
        remembered += "_remembering" in obj.evaluate.__qualname__
    assert remembered > 1000
