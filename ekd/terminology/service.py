"""Terminology service: ValueSet expansion and membership, CodeSystem lookup.

CONTRACT (to be implemented): used by the validator (bindings) and by the operations
ValueSet/$expand, ValueSet/$validate-code and CodeSystem/$lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ekd.definitions.registry import Registry


@dataclass(frozen=True, slots=True)
class CodeCheck:
    #: True: in the value set; False: not in it; None: not checked (e.g. LOINC/SNOMED by filter,
    #: or an unknown value set) - the caller must not treat None as an error.
    valid: bool | None
    message: str = ""
    #: The display the code system gives the code, when known (for display mismatch warnings).
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Expansion:
    valueset_url: str
    total: int
    #: (system, version, code, display) in expansion order.
    contains: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)


class TerminologyService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def validate_code(
        self, valueset: str, system: str | None, code: str, display: str | None = None
    ) -> CodeCheck:
        raise NotImplementedError

    def expand(
        self, valueset: str | dict, *, filter: str | None = None, offset: int = 0,
        count: int | None = None,
    ) -> Expansion:
        raise NotImplementedError

    def lookup(self, system: str, code: str, version: str | None = None) -> dict | None:
        """The concept (with display, designations, properties) or None."""
        raise NotImplementedError
