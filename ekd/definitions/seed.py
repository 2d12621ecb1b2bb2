"""Store the project's own profiles and terminology as FHIR resources, so that clients can read
and search them (`GET [base]/StructureDefinition/jgz-Patient`) like anything else.

Each file is written with an update (PUT by id): new ones are created, changed ones get a new
version, unchanged ones cost nothing (no-op updates make no version). Runs once when
`ekd serve` starts, before the workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ekd.errors import FhirError
from ekd.interaction import route
from ekd.interaction.base import FhirRequest, Services


@dataclass
class SeedReport:
    created: int = 0
    #: Already stored: updated where the file changed, untouched where it did not.
    existing: int = 0
    failed: list[str] = field(default_factory=list)


def seed(services: Services, folders: Iterable[Path]) -> SeedReport:
    report = SeedReport()
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            resource = orjson.loads(path.read_bytes())
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if not isinstance(rtype, str) or not isinstance(rid, str):
                report.failed.append(f"{path.name}: no resourceType or id")
                continue
            req = FhirRequest(method="PUT", base="", type=rtype, id=rid, body=resource)
            try:
                resp = route.handle(services, req)
            except FhirError as exc:
                report.failed.append(f"{path.name}: {exc.diagnostics}")
                continue
            if resp.status == 201:
                report.created += 1
            else:
                report.existing += 1
    return report
