"""`ekd validate FILE…`: validate resources on the command line, as the server would on write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ekd.errors import FhirError, Issue

console = Console()

STYLE = {"fatal": "bold red", "error": "red", "warning": "yellow", "information": "dim"}


def validate(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False,
                                                 help="FHIR resources (JSON or XML).")],
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", "-p", help="Also validate against this profile (canonical URL); repeatable."
    )] = None,
    package: Annotated[list[Path] | None, typer.Option(
        "--package", help="Load conformance resources from a FHIR package (.tgz or folder)."
    )] = None,
) -> None:
    """Validate FILES against the base R4 definitions, their meta.profile and --profile.

    Exits with 1 when any file has an error, so it can gate a pipeline.
    """
    from ekd.api.app import build_registry, build_validator
    from ekd.config import Settings
    from ekd.fhir import jsonfmt
    from ekd.fhir.xml import loads_xml
    from ekd.terminology.service import TerminologyService

    settings = Settings.from_env()
    registry = build_registry(settings)
    for path in package or []:
        registry.load_package(path)
    validator = build_validator(registry, TerminologyService(registry))
    failed = 0
    for path in files:
        data = path.read_bytes()
        try:
            resource = loads_xml(data) if data.lstrip()[:1] == b"<" else jsonfmt.loads(data)
            issues = validator.validate(resource, list(profile or []))
        except FhirError as exc:
            issues = exc.issues
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        failed += bool(errors)
        _report(path, issues)
    console.print(f"{len(files) - failed} valid, {failed} invalid")
    raise typer.Exit(1 if failed else 0)


def _report(path: Path, issues: list[Issue]) -> None:
    errors = sum(i.severity in ("error", "fatal") for i in issues)
    mark = "[red]invalid[/red]" if errors else "[green]valid[/green]"
    console.print(f"{path}: {mark} ({errors} errors, {len(issues) - errors} other issues)")
    if not issues:
        return
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("severity")
    table.add_column("where")
    table.add_column("message", overflow="fold")
    for issue in issues:
        table.add_row(f"[{STYLE.get(issue.severity, '')}]{issue.severity}[/]",
                      ", ".join(issue.expression), issue.diagnostics)
    console.print(table)
