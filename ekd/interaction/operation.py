"""Extended operations (http://hl7.org/fhir/R4/operations.html): lookup and input parameters.

Each operation lives in its own module under `ekd.operation` and is listed in
`ekd.operation.OPERATIONS`; routing, the CapabilityStatement and batch/transaction entries all
find it here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ekd.errors import InvalidRequest, MethodNotAllowed, NotFound
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.store.resources import ResourceStore

Handler = Callable[[Services, ResourceStore, FhirRequest], FhirResponse]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    handler: Handler
    #: Any of "system", "type", "instance".
    levels: frozenset[str]
    #: Resource types it is defined on; None for all.
    types: frozenset[str] | None = None
    #: Changes data: POST only, and runs in a write transaction.
    affects_state: bool = False
    #: Canonical URL of its OperationDefinition (for the CapabilityStatement).
    definition: str | None = None
    #: What the caller must be allowed to do on the type it runs on (ekd.security.policy).
    permission: str = "r"

    def level_of(self, req: FhirRequest) -> str:
        return "instance" if req.id else "type" if req.type else "system"


def operations() -> list[Operation]:
    from ekd.operation import OPERATIONS

    return OPERATIONS


def find(req: FhirRequest) -> Operation:
    candidates = [op for op in operations() if op.name == req.operation]
    if not candidates:
        raise NotFound(f"Unknown operation '${req.operation}'")
    for op in candidates:
        level = op.level_of(req)
        if level in op.levels and (op.types is None or level == "system" or req.type in op.types):
            if req.method not in ("GET", "POST") or (op.affects_state and req.method != "POST"):
                raise MethodNotAllowed(f"${op.name} does not accept {req.method}")
            return op
    raise NotFound(f"Operation '${req.operation}' is not defined at this level or on this type")


def parameters(req: FhirRequest) -> list[tuple[str, object]]:
    """Input parameters as (name, value): from a Parameters body, or the query string.

    A `resource` parameter yields the resource dict; value[x] yields its value.
    """
    body = req.body
    out: list[tuple[str, object]] = [
        (k, v) for k, v in req.params if not k.startswith("_format") and k != "_pretty"
    ]
    if body is None:
        return out
    if body.get("resourceType") != "Parameters":
        return out
    for index, param in enumerate(body.get("parameter") or []):
        if not isinstance(param, dict) or "name" not in param:
            raise InvalidRequest("A parameter needs a name",
                                 expression=f"Parameters.parameter[{index}]")
        if "resource" in param:
            out.append((param["name"], param["resource"]))
            continue
        values = [v for k, v in param.items() if k.startswith("value")]
        out.append((param["name"], values[0] if values else param.get("part")))
    return out
