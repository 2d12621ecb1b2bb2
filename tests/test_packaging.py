"""`pip install .` brings everything `ekd` imports: each third-party module the package
imports belongs to a distribution among its runtime requirements (followed transitively,
without extras). The test extras install more, so the test suite alone would not notice a
runtime import that only they provide (httpx once was one: `ekd serve` failed on a fresh
machine)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(text: str) -> str:
    return text.lower().replace("_", "-").replace(".", "-")


def runtime_closure() -> set[str]:
    """The distributions `pip install .` installs: the project's dependencies and theirs."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r) for r in declared]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or ()]
        except metadata.PackageNotFoundError:
            continue
    return seen


def imported_top_level() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "ekd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"ekd", "__future__"}


def test_every_runtime_import_is_a_runtime_dependency() -> None:
    closure = runtime_closure()
    owners = metadata.packages_distributions()
    imported = imported_top_level()
    assert "httpx" in imported and "sqlalchemy" in imported  # the scan sees the imports
    missing = {m: owners.get(m) for m in imported
               if not any(_name(d) in closure for d in owners.get(m, ()))}
    assert not missing, f"imported by ekd but not installed by 'pip install .': {missing}"
