"""`ekd conformance ...`: score ekd against external test corpora; exit 1 when any case fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Score ekd against external conformance corpora.", no_args_is_help=True)

Folder = Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Corpus folder.")]


@app.command("fhirpath")
def fhirpath(folder: Folder) -> None:
    """Run the FHIRPath R4 suite (tests-fhir-r4.xml) in FOLDER and print the score."""
    from ekd.conformance.fhirpath import run

    raise typer.Exit(run(folder))


@app.command("validator")
def validator(folder: Folder) -> None:
    """Run the HL7 validator test cases (manifest.json) in FOLDER and print agreement."""
    from ekd.conformance.validator import run

    raise typer.Exit(run(folder))
