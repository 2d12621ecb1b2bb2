"""`ekd bds …`: the Basisdataset JGZ as ekd models it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The Basisdataset JGZ (BDS) as ekd models it.", no_args_is_help=True)
console = Console()

DEFAULT_TREE = Path("../shared/jgz/transfer-dataset-tree-with-cardinalities.txt")


@app.command("coverage")
def coverage_command(
    tree: Annotated[Path, typer.Option(help="The transfer dataset tree with cardinalities.")]
    = DEFAULT_TREE,
    show_all: Annotated[bool, typer.Option("--all", help="List every mapped element.")] = False,
) -> None:
    """Which BDS elements the JGZ profiles map, and whether every element a transfer requires
    is among them. Exits with 1 when a mandatory element is unmapped."""
    from ekd.api.app import build_registry
    from ekd.config import Settings
    from ekd.jgz.coverage import coverage

    registry = build_registry(Settings())
    result = coverage(registry.all("StructureDefinition"), tree)
    names = _element_names(registry)
    if show_all:
        table = Table("BDS", "name", "mapped by", box=None)
        for number in sorted(result.mapped, key=int):
            table.add_row(number, names.get(number, ""), "\n".join(result.mapped[number]))
        console.print(table)
    console.print(f"BDS elements mapped by the JGZ profiles: {len(result.mapped)}"
                  f" of {len(names) or '?'} in the BDS")
    if not result.tree:
        console.print(f"[yellow]No transfer tree at {tree}: mandatory elements not checked[/]")
        raise typer.Exit(0)
    mandatory = result.mandatory
    missing = result.mandatory_unmapped
    console.print(f"Mandatory in a transfer: {len(mandatory)}; mapped: "
                  f"{len(mandatory) - len(missing)}; unmapped: {len(missing)}")
    for element in missing:
        console.print(f"  [red]unmapped[/] {element.number} {element.name}")
    in_group = result.required_in_group
    not_mapped = result.required_in_group_unmapped
    console.print(f"Required whenever their rubric/group is present: {len(in_group)}; mapped: "
                  f"{len(in_group) - len(not_mapped)}; unmapped: {len(not_mapped)}")
    if show_all:
        for element in not_mapped:
            console.print(f"  [yellow]unmapped[/] {element.number} {element.name}")
    raise typer.Exit(1 if missing else 0)


def _element_names(registry: object) -> dict[str, str]:
    from ekd.jgz import BDS_ELEMENTS

    cs = registry.get(BDS_ELEMENTS, "CodeSystem")  # type: ignore[attr-defined]
    if not cs:
        return {}
    return {c["code"]: c.get("display", "") for c in cs.get("concept", [])}
