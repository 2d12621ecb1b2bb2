"""`ekd conformance validator DIR`: ekd's verdicts against the HL7 validator test cases.

DIR holds `manifest.json` in the fhir-test-cases format (`test-cases`: `file`, `supporting`,
optional `profile` step with its own `source`/`supporting`, `java` = the reference Java
validator's expected outcome under `outcomes/`, either a file name or an inline object). A step
is *invalid* when its expected outcome has an issue of severity error or fatal; a missing
outcome (or outcome file) means valid. ekd's verdict is invalid when it reports an error or
fatal issue.

Steps whose expected errors all depend on an external terminology server (SNOMED CT, LOINC and
other code systems that are not in the R4 package) cannot be judged offline: they are counted
apart ("skipped"), listed, and never silently dropped.

Printed: a table per module, plain agreement and balanced accuracy per step, every case that
disagrees (with ekd's messages), and last the line `N passed, N failed, N skipped`.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from ekd.definitions.registry import Registry
from ekd.errors import Issue

#: The R4 package the validator's base definitions come from (with value sets, code systems,
#: extensions), next to the corpora in `shared/`.
DEFAULT_PACKAGE = "fhir-packages/hl7.fhir.r4.examples-4.0.1.tgz"

#: Code systems not in the R4 package (their codes and displays need a terminology server)...
_EXTERNAL_SYSTEM = re.compile(
    r"snomed\.info|loinc\.org|hl7\.org/fhir/sid/cvx|urn:iso:std|rxnorm|www\.nlm\.nih\.gov",
    re.IGNORECASE)
#: ...and the kinds of finding that need one (value set membership of an enumerated value set
#: does not: the value set is in the registry).
_TX_FINDING = re.compile(r"Wrong Display Name|Unknown code|could not be validated|"
                         r"terminology server", re.IGNORECASE)


@dataclass
class Step:
    case: str
    module: str
    step: str  # base | profile
    expected_invalid: bool
    expected: list[str]
    got_invalid: bool = False
    messages: list[str] = field(default_factory=list)
    needs_tx: bool = False
    error: str | None = None

    @property
    def agrees(self) -> bool:
        return self.expected_invalid == self.got_invalid


@dataclass
class Report:
    steps: list[Step]

    def judged(self, step: str | None = None) -> list[Step]:
        return [s for s in self.steps if not s.needs_tx and (step is None or s.step == step)]

    def agreement(self, step: str) -> float:
        steps = self.judged(step)
        return sum(s.agrees for s in steps) / len(steps) if steps else 0.0

    def balanced_accuracy(self, step: str) -> float:
        steps = self.judged(step)
        pos = [s for s in steps if s.expected_invalid]
        neg = [s for s in steps if not s.expected_invalid]
        tpr = sum(s.got_invalid for s in pos) / len(pos) if pos else 1.0
        tnr = sum(not s.got_invalid for s in neg) / len(neg) if neg else 1.0
        return (tpr + tnr) / 2


# -- loading -----------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    data = path.read_bytes()
    if path.suffix == ".xml":
        from ekd.fhir.xml import loads_xml

        return loads_xml(data)
    return orjson.loads(data)


def _expected(folder: Path, spec: Any) -> tuple[bool, list[str]]:
    """(invalid?, messages of the error/fatal issues) of an expected outcome."""
    if spec is None:
        return False, []
    if isinstance(spec, str):
        file = folder / "outcomes" / spec
        if not file.exists():
            return False, []
        outcome = orjson.loads(file.read_bytes())
    elif isinstance(spec, dict) and "outcome" in spec:
        outcome = spec["outcome"]
    elif isinstance(spec, dict):
        count = spec.get("errorCount") or 0
        return count > 0, [f"{count} error(s) expected"] if count else []
    else:
        return False, []
    messages = []
    for issue in outcome.get("issue", []):
        if issue.get("severity") in ("error", "fatal"):
            text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or ""
            messages.append(str(text))
    return bool(messages), messages


def _needs_tx(expected: list[str]) -> bool:
    return bool(expected) and all(
        _EXTERNAL_SYSTEM.search(m) and _TX_FINDING.search(m) for m in expected)


class _Context:
    """Base definitions loaded once; a fresh registry per case with its supporting files."""

    def __init__(self, folder: Path, package: Path | None) -> None:
        self.folder = folder
        self.package = package

    def registry(self, supporting: Iterable[str]) -> tuple[Registry, dict[str, dict]]:
        """The registry for one case, and the supporting resources it does not index
        (Questionnaires) by url."""
        registry = Registry()
        registry.load_base()
        if self.package is not None and self.package.exists():
            registry.load_package(self.package)
        others: dict[str, dict] = {}
        for name in supporting:
            try:
                data = _load(self.folder / name)
            except Exception:
                continue
            if isinstance(data, dict):
                registry.add_all([data], name)
                if isinstance(data.get("url"), str):
                    others[data["url"]] = data
        return registry, others


def _validator(registry: Registry, others: dict[str, dict]) -> Any:
    from ekd.terminology.service import TerminologyService
    from ekd.validation.validator import ProfileValidator

    def resolve(canonical: str, rtype: str) -> dict | None:
        found = others.get(canonical)
        return found if found is not None and found.get("resourceType") == rtype else None

    guides = [url for url, r in others.items() if r.get("resourceType") == "ImplementationGuide"]
    return ProfileValidator(registry, TerminologyService(registry), resolve_canonical=resolve,
                            implementation_guides=guides)


def _errors(issues: list[Issue]) -> list[str]:
    return [i.diagnostics for i in issues if i.severity in ("error", "fatal")]


def run_cases(folder: Path, package: Path | None = None,
              select: Callable[[dict], bool] | None = None) -> Report:
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    if package is None:
        package = folder.parent.parent / DEFAULT_PACKAGE
    ctx = _Context(folder, package)
    steps: list[Step] = []
    for case in manifest.get("test-cases", []):
        if select is not None and not select(case):
            continue
        name = str(case.get("name"))
        module = str(case.get("module") or "-")
        supporting = list(case.get("supporting") or [])
        invalid, expected = _expected(folder, case.get("java"))
        base = Step(name, module, "base", invalid, expected, needs_tx=_needs_tx(expected))
        steps.append(base)
        resource: Any = None
        try:
            resource = _load(folder / case["file"])
        except Exception as exc:
            base.got_invalid, base.messages = True, [f"unparseable: {_short(exc)}"]
        registry, others = ctx.registry(supporting)
        if resource is not None:
            _judge(base, registry, others, resource, [])
        if "profile" in case:
            spec = case["profile"]
            invalid, expected = _expected(folder, spec.get("java"))
            step = Step(name, module, "profile", invalid, expected, needs_tx=_needs_tx(expected))
            steps.append(step)
            if resource is None:
                step.got_invalid, step.messages = True, base.messages
                continue
            registry, others = ctx.registry(
                [*supporting, *(spec.get("supporting") or []), spec["source"]])
            try:
                profile = _load(folder / spec["source"])
                url = profile.get("url")
            except Exception as exc:
                step.error = f"profile unreadable: {_short(exc)}"
                url = None
            _judge(step, registry, others, resource, [url] if url else [])
    return Report(steps)


def _judge(step: Step, registry: Registry, others: dict[str, dict], resource: Any,
           profiles: list[str]) -> None:
    try:
        issues = _validator(registry, others).validate(resource, profiles=profiles)
    except Exception as exc:  # a crash is a finding, not a verdict
        step.error = f"{type(exc).__name__}: {_short(exc)}"
        step.got_invalid, step.messages = True, [f"validator crashed: {step.error}"]
        return
    errors = _errors(issues)
    step.got_invalid = bool(errors)
    step.messages = errors


def _short(exc: object) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:297] + "..."


# -- printing ----------------------------------------------------------------------------------


def print_report(report: Report, out: TextIO = sys.stdout, verbose: bool = True) -> None:
    modules: dict[str, dict[str, list[Step]]] = defaultdict(lambda: defaultdict(list))
    for s in report.steps:
        modules[s.module][s.step].append(s)

    def cell(steps: list[Step]) -> str:
        judged = [s for s in steps if not s.needs_tx]
        if not steps:
            return "-"
        text = f"{sum(s.agrees for s in judged)}/{len(judged)}"
        apart = len(steps) - len(judged)
        return text + (f" (+{apart} tx)" if apart else "")

    out.write(f"{'module':<16}{'base':>16}{'profile':>16}\n")
    for name in sorted(modules):
        m = modules[name]
        out.write(f"{name:<16}{cell(m['base']):>16}{cell(m['profile']):>16}\n")
    all_base = [s for s in report.steps if s.step == "base"]
    all_prof = [s for s in report.steps if s.step == "profile"]
    out.write(f"{'total':<16}{cell(all_base):>16}{cell(all_prof):>16}\n\n")
    for step in ("base", "profile"):
        judged = report.judged(step)
        out.write(
            f"{step:>7} step: agreement {report.agreement(step):.1%} of {len(judged)}, "
            f"balanced accuracy {report.balanced_accuracy(step):.3f}\n")
    tx = [s for s in report.steps if s.needs_tx]
    if tx:
        out.write(f"\nNeed an external terminology server ({len(tx)} steps, counted apart):\n")
        for s in tx:
            out.write(f"  {s.case} [{s.step}] expected invalid: {s.expected[0][:120]}\n")
    bad = [s for s in report.judged() if not s.agrees]
    if bad:
        out.write(f"\nDisagreements ({len(bad)}):\n")
        for s in bad:
            want = "invalid" if s.expected_invalid else "valid"
            got = "invalid" if s.got_invalid else "valid"
            out.write(f"- {s.case} [{s.module}/{s.step}]: expected {want}, ekd says {got}\n")
            if verbose:
                for m in s.expected[:3]:
                    out.write(f"    java: {m[:200]}\n")
                for m in s.messages[:5]:
                    out.write(f"    ekd:  {m[:200]}\n")
    passed = sum(s.agrees for s in report.judged())
    failed = len(report.judged()) - passed
    out.write(f"\n{passed} passed, {failed} failed, {len(tx)} skipped\n")


def run(folder: Path) -> int:
    """Run every case in FOLDER/manifest.json; exit code 1 when any judged step disagrees."""
    started = time.perf_counter()
    report = run_cases(Path(folder))
    print_report(report)
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0 if all(s.agrees for s in report.judged()) else 1
