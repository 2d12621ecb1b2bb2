"""Validation of resources before they are stored.

`Validator` is the seam: the structural validator here is the base every deployment gets; the
profile validator (StructureDefinition-driven) plugs in behind the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from ekd.errors import Issue


class Validator(Protocol):
    def validate(self, resource: dict) -> list[Issue]:
        """Return every issue found; errors block the write, warnings are reported."""
        ...
