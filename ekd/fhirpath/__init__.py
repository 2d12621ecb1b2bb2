"""FHIRPath (http://hl7.org/fhirpath/N1/) for invariants, search parameters and slicing.

CONTRACT: `compile(expression)` returns a callable `(resource, variables=None) -> list` that can
be called many times (compile once, evaluate per resource). Raises `FhirPathError` for syntax
errors. Evaluation errors raise `FhirPathError` too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

Compiled = Callable[..., list]


class FhirPathError(ValueError):
    """An expression that does not parse, or fails to evaluate."""


@lru_cache(maxsize=4096)
def compile(expression: str) -> Compiled:
    try:
        fn = fhirpathpy.compile(expression, models["r4"])
    except Exception as exc:
        raise FhirPathError(f"Invalid FHIRPath '{expression}': {exc}") from None

    def run(resource: Any, variables: dict | None = None) -> list:
        try:
            return fn(resource, variables or {})
        except Exception as exc:
            raise FhirPathError(f"FHIRPath '{expression}' failed: {exc}") from None

    return run


def evaluate(resource: Any, expression: str, variables: dict | None = None) -> list:
    return compile(expression)(resource, variables)
