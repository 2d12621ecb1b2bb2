"""Extended operations, one module each (named after the operation), registered here."""

from __future__ import annotations

from ekd.interaction.operation import Operation
from ekd.operation import validate

#: Every operation the server supports. Add a module and one line here.
OPERATIONS: list[Operation] = [
    validate.OPERATION,
]
