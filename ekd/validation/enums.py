"""Codes of the R4 base required bindings on `code` elements, without a terminology package.

The base StructureDefinitions of a plain install bind `Patient.gender`, `Observation.status`
and some 350 other `code` elements to R4 ValueSets that only a full FHIR package carries.
`r4-required-codes.json` holds the codes of each such ValueSet that the R4 package defines
completely (its CodeSystems enumerate every code; no filters): the definitions are part of the
FHIR specification (HL7, CC0), generated once from the official package:

    python -m ekd.validation.enums path/to/hl7.fhir.r4.(core|examples)-4.0.1.tgz

For a ValueSet not in the table, the R4 definitions list the codes in `ElementDefinition.short`
("male | female | other | unknown") and mark an incomplete list with "+" ("registered |
preliminary | final | amended +"): a complete list is enough to enforce the binding offline;
anything else is left unchecked.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

import orjson

TABLE = Path(__file__).with_name("r4-required-codes.json")
_CODE = re.compile(r"[A-Za-z0-9\-.]+")


def codes_from_short(short: object) -> frozenset[str] | None:
    if not isinstance(short, str):
        return None
    parts = short.split(" | ")
    if len(parts) < 2 or not all(_CODE.fullmatch(p) for p in parts):
        return None
    return frozenset(parts)


@cache
def _table() -> dict[str, frozenset[str]]:
    data = orjson.loads(TABLE.read_bytes())
    return {url: frozenset(codes) for url, codes in data["valuesets"].items()}


def required_codes(valueset: str) -> frozenset[str] | None:
    """Every code of an R4 ValueSet bound required to a `code` element (any `|version`
    suffix ignored), or None when the table does not know it."""
    return _table().get(valueset.partition("|")[0])


# -- generating the table ------------------------------------------------------------------


def generate(package: Path) -> dict:
    """The table from an R4 package: read by the definitions registry, each ValueSet compiled
    by the terminology service; kept where its members are complete."""
    from ekd.definitions.registry import Registry
    from ekd.terminology.service import TerminologyService

    registry = Registry()
    registry.load_package(package)
    bound: set[str] = set()
    for sd in registry.all("StructureDefinition"):
        if sd.get("derivation") == "constraint":
            continue
        for el in (sd.get("snapshot") or {}).get("element") or []:
            binding = el.get("binding") or {}
            types = [t.get("code") for t in el.get("type") or []]
            if binding.get("strength") == "required" and types == ["code"] and binding.get(
                    "valueSet"):
                bound.add(binding["valueSet"].partition("|")[0])
    terminology = TerminologyService(registry)
    table = {}
    for url in sorted(bound):
        compiled = terminology.compiled(url)
        if compiled is not None and compiled.members.complete and compiled.members.yes:
            table[url] = sorted({entry.code for entry in compiled.members.yes.values()})
    if not table:
        raise SystemExit(f"{package}: no required ValueSets found")
    return {"source": f"FHIR R4 4.0.1 ({package.name})", "bound": len(bound),
            "valuesets": table}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m ekd.validation.enums <R4 package .tgz>")
    result = generate(Path(sys.argv[1]))
    lines = [f'"{url}":{orjson.dumps(codes).decode()}'
             for url, codes in result["valuesets"].items()]
    TABLE.write_text(f'{{"source": {orjson.dumps(result["source"]).decode()}, '
                     f'"bound": {result["bound"]},\n"valuesets": {{\n' + ",\n".join(lines)
                     + "\n}}\n")
    print(f"{TABLE}: {len(result['valuesets'])} of {result['bound']} required ValueSets")
