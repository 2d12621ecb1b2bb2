"""FHIR JSON (http://hl7.org/fhir/R4/json.html): parsing with limits, and fast serialisation.

orjson does the work; we add what a server exposed to the network needs: a position in every
syntax error and a nesting limit (deeply nested input is a cheap denial-of-service vector).
"""

from __future__ import annotations

from typing import Any

import orjson

from ekd.errors import ParseError


def loads(data: bytes | str, *, max_depth: int = 64) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(
            f"Body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int) -> None:
    """Reject documents nested deeper than `max_depth`. For parsed JSON (exact dicts and
    lists): one level at a time, without recursion to hit a limit, and without a tuple per
    node, which made this cost twice as much as parsing a 200-resource dossier."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > max_depth:
            raise ParseError(f"JSON nesting exceeds the maximum depth of {max_depth}")
        deeper = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        level = deeper
        depth += 1


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0)
