"""Parsing of search parameters into a query the store can run.

Supported here: `_id` and `identifier` (token semantics: `code`, `system|code`, `|code`,
`system|`), comma for OR, repetition for AND; control parameters `_count`, `_offset`,
`_summary`, `_elements`, `_total`, `_format`, `_pretty`. Unknown parameters are ignored with a
warning, or rejected under `Prefer: handling=strict` (http://hl7.org/fhir/R4/search.html#errors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ekd.errors import InvalidRequest, Issue

CONTROL = frozenset(
    {"_count", "_offset", "_summary", "_elements", "_total", "_format", "_pretty", "_sort"}
)
TOKEN_PARAMS = frozenset({"_id", "identifier"})

_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")


def _unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None  # None: any system
    code: str | None  # None: any code
    no_system: bool = False  # `|code`: the code must have no system


@dataclass
class SearchQuery:
    type: str
    #: AND of ORs: each entry is (param, [alternatives]).
    tokens: list[tuple[str, list[Token]]] = field(default_factory=list)
    count: int | None = None
    offset: int = 0
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    warnings: list[Issue] = field(default_factory=list)
    #: The parameters that shaped the result, echoed in the self link.
    used: list[tuple[str, str]] = field(default_factory=list)


def parse_token(value: str) -> Token:
    parts = _SPLIT_PIPE.split(value, maxsplit=1)
    if len(parts) == 1:
        return Token(None, _unescape(parts[0]))
    system, code = parts
    return Token(
        _unescape(system) or None, _unescape(code) or None, no_system=(system == "")
    )


def _int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number", expression=name) from None
    if value < minimum:
        raise InvalidRequest(f"{name} must be at least {minimum}", expression=name)
    return value


def parse(
    rtype: str, params: list[tuple[str, str]], *, strict: bool = False, max_count: int = 1000
) -> SearchQuery:
    query = SearchQuery(type=rtype)
    for name, raw in params:
        base, _, modifier = name.partition(":")
        if base in CONTROL:
            if base == "_count":
                query.count = min(_int("_count", raw, 0), max_count)
            elif base == "_offset":
                query.offset = _int("_offset", raw, 0)
            elif base == "_summary":
                if raw not in {"true", "false", "text", "data", "count"}:
                    raise InvalidRequest(f"Unknown _summary value '{raw}'", expression="_summary")
                query.summary = raw
            elif base == "_elements":
                query.elements = [e.strip() for e in raw.split(",") if e.strip()]
            elif base == "_total":
                query.total = raw
            elif base == "_sort":
                _unsupported(query, name, strict, "sorting is not supported yet")
                continue
            if base not in {"_format", "_pretty", "_offset"}:
                query.used.append((name, raw))
            continue
        if base in TOKEN_PARAMS:
            if modifier:
                _unsupported(query, name, strict, f"modifier ':{modifier}' is not supported")
                continue
            alternatives = [parse_token(v) for v in _SPLIT_COMMA.split(raw)]
            query.tokens.append((base, alternatives))
            query.used.append((name, raw))
            continue
        _unsupported(query, name, strict, "unknown search parameter")
    return query


def _unsupported(query: SearchQuery, name: str, strict: bool, why: str) -> None:
    message = f"Search parameter '{name}' ignored: {why}"
    if strict:
        raise InvalidRequest(message.replace(" ignored", " rejected"), expression=name)
    query.warnings.append(Issue("warning", "not-supported", message, (name,)))
