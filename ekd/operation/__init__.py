"""Extended operations, one module each (named after the operation), registered here."""

from __future__ import annotations

from ekd.interaction.operation import Operation
from ekd.operation import (
    codesystem_lookup,
    patient_everything,
    patient_transfer,
    validate,
    valueset_expand,
    valueset_validate_code,
)

#: Every operation the server supports. Add a module and one line here.
OPERATIONS: list[Operation] = [
    validate.OPERATION,
    valueset_expand.OPERATION,
    valueset_validate_code.OPERATION,
    codesystem_lookup.OPERATION,
    patient_everything.OPERATION,
    patient_transfer.OPERATION,
]
