"""Which BDS elements the JGZ profiles map (`ElementDefinition.mapping`, identity `bds`).

The transfer dataset tree says what a transfer must carry: an element is mandatory when it and
every rubric/group above it have a minimum cardinality of at least 1. Every such element must be
mapped by some profile, or ekd could not hold what an overdracht requires.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ekd.jgz import CANONICAL

_TREE_LINE = re.compile(r"^(?P<indent> *)(?P<name>\S+) \[(?P<min>\d+)\.\.(?P<max>\S+)\] "
                        r"2\.(?P<level>[123])\.(?P<number>\d+)\s*$")


@dataclass(frozen=True, slots=True)
class TreeElement:
    number: str
    name: str
    #: Required in every transfer: it and every rubric/group above it have min >= 1.
    mandatory: bool
    #: Required whenever its group is present (the element's own min >= 1).
    required_in_group: bool


@dataclass
class Coverage:
    #: BDS element number -> ["jgz-Patient: Patient.identifier:bsn.value", ...]
    mapped: dict[str, list[str]] = field(default_factory=dict)
    tree: list[TreeElement] = field(default_factory=list)

    @property
    def mandatory(self) -> list[TreeElement]:
        return [e for e in self.tree if e.mandatory]

    @property
    def mandatory_unmapped(self) -> list[TreeElement]:
        return [e for e in self.mandatory if e.number not in self.mapped]

    @property
    def required_in_group(self) -> list[TreeElement]:
        return [e for e in self.tree if e.required_in_group]

    @property
    def required_in_group_unmapped(self) -> list[TreeElement]:
        return [e for e in self.required_in_group if e.number not in self.mapped]


def read_tree(path: Path) -> list[TreeElement]:
    """Elements (level 2.3) of the transfer tree with their effective mandatoriness."""
    out: list[TreeElement] = []
    stack: list[tuple[int, bool]] = []  # (indent, mandatory so far)
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _TREE_LINE.match(line)
        if m is None:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent_mandatory = stack[-1][1] if stack else True
        mandatory = parent_mandatory and int(m["min"]) >= 1
        stack.append((indent, mandatory))
        if m["level"] == "3":
            out.append(TreeElement(m["number"], m["name"], mandatory, int(m["min"]) >= 1))
    return out


def mapped_elements(profiles: Iterable[dict]) -> dict[str, list[str]]:
    mapped: dict[str, list[str]] = {}
    for sd in profiles:
        if sd.get("resourceType") != "StructureDefinition":
            continue
        if not str(sd.get("url", "")).startswith(CANONICAL):
            continue
        identities = {m.get("identity") for m in sd.get("mapping", [])}
        if "bds" not in identities:
            continue
        elements = (sd.get("differential") or {}).get("element", []) + (
            sd.get("snapshot") or {}).get("element", [])
        seen: set[tuple[str, str]] = set()
        for element in elements:
            where = element.get("id") or element.get("path", "")
            for mapping in element.get("mapping", []):
                if mapping.get("identity") != "bds" or not mapping.get("map"):
                    continue
                for number in re.findall(r"\d+", str(mapping["map"])):
                    if (number, where) in seen:
                        continue
                    seen.add((number, where))
                    mapped.setdefault(number, []).append(f"{sd.get('id')}: {where}")
    return mapped


def coverage(profiles: Iterable[dict], tree_path: Path | None) -> Coverage:
    result = Coverage(mapped=mapped_elements(profiles))
    if tree_path is not None and tree_path.is_file():
        result.tree = read_tree(tree_path)
    return result
