"""The search parameters of FHIR R4 itself, shipped with ekd as a compact table.

`r4-search-parameters.json` holds, for each SearchParameter of the R4 specification (4.0.1),
only what indexing and searching need (url, code, base, type, expression, target, components)
plus the patient compartment (CompartmentDefinition/patient), which `$everything` follows.
The definitions are part of the FHIR specification (HL7, CC0); ekd needs them on a machine with
no FHIR package at hand, so the table is generated once from the official package:

    python -m ekd.search.builtin path/to/hl7.fhir.r4.(core|examples)-4.0.1.tgz
"""

from __future__ import annotations

import sys
import tarfile
from functools import cache
from pathlib import Path

import orjson

TABLE = Path(__file__).with_name("r4-search-parameters.json")
_KEEP = ("url", "code", "base", "type", "expression", "target", "component")


@cache
def load() -> dict:
    """`{"parameters": [...], "patient_compartment": {type: [param codes]}}`."""
    return orjson.loads(TABLE.read_bytes())


def generate(package: Path) -> dict:
    parameters: list[dict] = []
    compartment: dict[str, list[str]] = {}
    with tarfile.open(package, "r:gz") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if name not in ("Bundle-searchParams.json", "search-parameters.json",
                            "CompartmentDefinition-patient.json"):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            data = orjson.loads(handle.read())
            if data["resourceType"] == "CompartmentDefinition":
                compartment = {r["code"]: r["param"] for r in data["resource"] if r.get("param")}
                continue
            for entry in data["entry"]:
                sp = entry["resource"]
                if sp.get("resourceType") != "SearchParameter":
                    continue
                row = {k: sp[k] for k in _KEEP if k in sp}
                if "component" in row:
                    row["component"] = [
                        {"definition": c["definition"], "expression": c["expression"]}
                        for c in row["component"]
                    ]
                parameters.append(row)
    if not parameters or not compartment:
        raise SystemExit(f"{package}: no search parameters or patient compartment found")
    parameters.sort(key=lambda p: p["url"])
    return {"source": f"FHIR R4 4.0.1 ({package.name})", "parameters": parameters,
            "patient_compartment": dict(sorted(compartment.items()))}


if __name__ == "__main__":
    table = generate(Path(sys.argv[1]))
    # One parameter per line: readable diffs without the bulk of full indentation.
    lines = ",\n".join(orjson.dumps(p).decode() for p in table["parameters"])
    TABLE.write_text(
        f'{{"source": {orjson.dumps(table["source"]).decode()},\n"parameters": [\n{lines}\n],\n'
        f'"patient_compartment": {orjson.dumps(table["patient_compartment"]).decode()}}}\n'
    )
    print(f"{TABLE}: {len(table['parameters'])} parameters, "
          f"{len(table['patient_compartment'])} compartment types")
