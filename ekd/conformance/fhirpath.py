"""Score ekd's FHIRPath engine on the HL7 FHIRPath R4 test suite (tests-fhir-r4.xml).

A test passes when the engine returns exactly the expected items, in order unless the test says
`ordered="false"`, with the expected types (FHIR types such as `code` or `id` where the suite
names them, System types as boolean/integer/decimal/string/date/dateTime/time/Quantity);
decimals compare by value, everything else by its FHIRPath literal form (dates as @2014-01-01,
quantities as 1.5 'cm'). Outputs without a type compare by literal form only, so the digits of
lowBoundary() results count. `invalid` tests pass only if the engine raises. `predicate="true"`
turns the result into a Boolean (exists, or the value of a single Boolean) first, and
`mode="strict"` evaluates in strict mode.

The suite tests the FHIRPath specification, so the runner turns on its rule that `as()` on
several items is an error (`ekd.fhirpath.compile(..., as_singleton=True)`); ekd's default
relaxes it for R4 content (see `ekd.fhirpath.compile`).

`run(folder, baseline=True)` scores plain fhirpathpy through the same comparison, to measure
what ekd's engine changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from lxml import etree

SUITE_FILE = "tests-fhir-r4.xml"


@dataclass(frozen=True, slots=True)
class Output:
    type: str | None  # None: compare the literal form only
    text: str


@dataclass(slots=True)
class Case:
    group: str
    name: str
    expression: str
    inputfile: str | None
    invalid: str | None
    outputs: list[Output] = field(default_factory=list)
    predicate: bool = False
    strict: bool = False
    ordered: bool = True


@dataclass(frozen=True, slots=True)
class Got:
    """One result item as the comparison sees it."""

    type: str
    text: str


@dataclass(slots=True)
class Outcome:
    case: Case
    passed: bool
    detail: str = ""


Engine = Callable[[str, Any, bool], list[Got]]


def load_cases(folder: Path) -> list[Case]:
    root = etree.parse(str(folder / SUITE_FILE)).getroot()
    cases: list[Case] = []
    for group in root.iter("group"):
        gname = group.get("name", "")
        for test in group:
            if test.tag != "test":
                continue
            expr_el = test.find("expression")
            if expr_el is None:
                continue
            mode = test.get("mode") or expr_el.get("mode")
            cases.append(Case(
                group=gname,
                name=test.get("name") or "(unnamed)",
                expression=expr_el.text or "",
                inputfile=test.get("inputfile"),
                invalid=expr_el.get("invalid"),
                outputs=[Output(o.get("type"), o.text or "") for o in test.findall("output")],
                predicate=test.get("predicate") == "true",
                strict=mode == "strict",
                ordered=test.get("ordered") != "false",
            ))
    return cases


class _Inputs:
    """Input resources, converted once: XML through ekd's own converter, JSON as parsed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[str, Any] = {}

    def get(self, name: str | None) -> Any:
        if name is None:
            return None
        if name not in self.cache:
            raw = (self.folder / name).read_bytes()
            if name.endswith(".xml"):
                from ekd.fhir.xml import loads_xml

                self.cache[name] = loads_xml(raw)
            else:
                self.cache[name] = json.loads(raw)
        return self.cache[name]


# -- engines -----------------------------------------------------------------------------------

_SYSTEM_TO_SUITE = {"Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                    "String": "string", "Date": "date", "DateTime": "dateTime", "Time": "time",
                    "Quantity": "Quantity"}


def ekd_engine(expression: str, resource: Any, strict: bool) -> list[Got]:
    from ekd import fhirpath

    items = fhirpath.compile(expression, strict=strict, as_singleton=True).items(resource)
    out = []
    for item in items:
        t = fhirpath.type_of(item)
        name = _SYSTEM_TO_SUITE.get(t.name, t.name) if t.namespace == "System" else t.name
        out.append(Got(name, fhirpath.literal(item)))
    return out


def fhirpathpy_engine(expression: str, resource: Any, strict: bool) -> list[Got]:
    """Plain fhirpathpy with the R4 model, for the before/after comparison."""
    import fhirpathpy
    from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, ResourceNode
    from fhirpathpy.models import models

    raw = fhirpathpy.evaluate(resource if resource is not None else [], expression, {},
                              models["r4"], {"returnRawData": True})
    out = []
    for item in raw:
        t: str | None = None
        if isinstance(item, ResourceNode):
            info = item.get_type_info()
            t = info.name if info is not None else None
            if t == "System.String":
                t = "string"
            item = item.data
        if isinstance(item, bool):
            out.append(Got(t or "boolean", "true" if item else "false"))
        elif isinstance(item, int):
            out.append(Got(t or "integer", str(item)))
        elif isinstance(item, float | Decimal):
            out.append(Got(t or "decimal", format(Decimal(str(item)), "f")))
        elif isinstance(item, FP_Time):
            out.append(Got(t or "time", "@T" + str(item.asStr).lstrip("T")))
        elif isinstance(item, FP_DateTime):
            kind = "dateTime" if "T" in item.asStr else "date"
            out.append(Got(t or kind, "@" + item.asStr))
        elif isinstance(item, FP_Quantity):
            out.append(Got("Quantity", f"{item.value} {item.unit}"))
        elif isinstance(item, str):
            if t in ("date", "dateTime", "instant", "time"):
                out.append(Got(t, ("@T" if t == "time" else "@") + item))
            else:
                out.append(Got(t or "string", item))
        else:
            out.append(Got(t or type(item).__name__, json.dumps(item, sort_keys=True, default=str)))
    return out


# -- comparison --------------------------------------------------------------------------------


def _predicate(got: list[Got]) -> list[Got]:
    if len(got) == 1 and got[0].type == "boolean":
        return got
    return [Got("boolean", "true" if got else "false")]


def _same(expected: Output, got: Got) -> bool:
    if expected.type is None:
        return expected.text == got.text
    if expected.type != got.type:
        return False
    if expected.type == "decimal":
        try:
            return Decimal(expected.text) == Decimal(got.text)
        except InvalidOperation:
            return False
    if expected.type == "Quantity":
        try:
            ev, _, eu = expected.text.partition(" ")
            gv, _, gu = got.text.partition(" ")
            return Decimal(ev) == Decimal(gv) and eu == gu
        except InvalidOperation:
            return False
    return expected.text == got.text


def _matches(case: Case, got: list[Got]) -> bool:
    expected = case.outputs
    if len(expected) != len(got):
        return False
    if case.ordered:
        return all(_same(e, g) for e, g in zip(expected, got, strict=True))
    remaining = list(got)
    for e in expected:
        for i, g in enumerate(remaining):
            if _same(e, g):
                del remaining[i]
                break
        else:
            return False
    return True


def _show(items: list[Output] | list[Got]) -> str:
    if not items:
        return "(empty)"
    return ", ".join(f"{i.text} ({i.type or 'untyped'})" for i in items)


def run_case(case: Case, engine: Engine, inputs: _Inputs) -> Outcome:
    resource = inputs.get(case.inputfile)
    try:
        got = engine(case.expression, resource, case.strict)
    except Exception as exc:
        if case.invalid:
            return Outcome(case, True)
        return Outcome(case, False, f"expected {_show(case.outputs)}; got error: {exc}")
    if case.invalid:
        return Outcome(case, False, f"expected an error ({case.invalid}); got {_show(got)}")
    if case.predicate:
        got = _predicate(got)
    if _matches(case, got):
        return Outcome(case, True)
    return Outcome(case, False, f"expected {_show(case.outputs)}; got {_show(got)}")


def score(folder: Path, engine: Engine) -> list[Outcome]:
    inputs = _Inputs(folder)
    return [run_case(case, engine, inputs) for case in load_cases(folder)]


def run(folder: Path, *, baseline: bool = False) -> int:
    """Print the per-group table, the failures and the score; 0 only if every test passes."""
    outcomes = score(folder, fhirpathpy_engine if baseline else ekd_engine)
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.case.group, []).append(o)
    width = max(len(g) for g in groups) if groups else 10
    print(f"FHIRPath R4 suite ({'fhirpathpy' if baseline else 'ekd'}): {folder / SUITE_FILE}")
    print(f"{'group'.ljust(width)}  passed/total")
    for name, items in groups.items():
        ok = sum(o.passed for o in items)
        mark = "" if ok == len(items) else "  *"
        print(f"{name.ljust(width)}  {ok:>4}/{len(items):<4}{mark}")
    failures = [o for o in outcomes if not o.passed]
    if failures:
        print()
        print("Failing tests:")
        for o in failures:
            expr = " ".join(o.case.expression.split())
            print(f"- {o.case.group}/{o.case.name}: {expr}")
            print(f"    {o.detail}")
    passed = len(outcomes) - len(failures)
    total = len(outcomes)
    pct = 100.0 * passed / total if total else 0.0
    print()
    print(f"Score: {passed}/{total} ({pct:.1f}%)")
    print(f"{passed} passed, {len(failures)} failed")
    return 0 if not failures else 1
