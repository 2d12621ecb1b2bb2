"""Validation of resources before they are stored.

`Validator` is the seam: the structural validator here is the base every deployment gets; the
profile validator (StructureDefinition-driven) plugs in behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ekd.errors import Issue


class Validator(Protocol):
    def validate(self, resource: dict, profiles: Sequence[str] = ()) -> list[Issue]:
        """Every issue found against the base definition, the resource's `meta.profile` and
        `profiles`; errors block a write, warnings are reported."""
        ...
