"""The resource types ekd serves: every concrete resource type that `fhir.resources` models.

fhir.resources 8 ships R4B (4.3.0) models; for the resources a JGZ dossier uses they are
wire-compatible with R4 (4.0.1), which is the version ekd declares.
"""

from __future__ import annotations

import re
from functools import cache

from fhir.resources.R4B import fhirtypes, get_fhir_model_class

ABSTRACT = frozenset({"Resource", "DomainResource"})

#: http://hl7.org/fhir/R4/datatypes.html#id
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@cache
def resource_types() -> frozenset[str]:
    from fhir.resources.R4B.resource import Resource

    found: set[str] = set()
    for attr in dir(fhirtypes):
        if not attr.endswith("Type") or not attr[:1].isupper():
            continue
        name = attr[:-4]
        try:
            cls = get_fhir_model_class(name)
        except (ValueError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, Resource) and name not in ABSTRACT:
            found.add(name)
    return frozenset(found)


def is_resource_type(name: str) -> bool:
    return name in resource_types()


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
