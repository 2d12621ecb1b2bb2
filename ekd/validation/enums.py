"""Codes of the R4 base required bindings on `code` elements, without a terminology package.

The base StructureDefinitions of a plain install bind `Patient.gender` and some 350 other `code`
elements to R4 ValueSets that only a full FHIR package carries. For required bindings the R4
definitions list the codes in `ElementDefinition.short` ("male | female | other | unknown"),
and mark an incomplete list with "+" ("registered | preliminary | final | amended +"). A
complete list is enough to enforce the binding offline; anything else is left unchecked.
"""

from __future__ import annotations

import re

_CODE = re.compile(r"[A-Za-z0-9\-.]+")


def codes_from_short(short: object) -> frozenset[str] | None:
    if not isinstance(short, str):
        return None
    parts = short.split(" | ")
    if len(parts) < 2 or not all(_CODE.fullmatch(p) for p in parts):
        return None
    return frozenset(parts)
