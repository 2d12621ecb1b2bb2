"""Checks for FHIR primitive values in their JSON form (http://hl7.org/fhir/R4/datatypes.html).

The lexical rules come from the primitive types' own StructureDefinitions (the `regex`
extension on `<type>.value`), so a registry with other base definitions brings its own rules;
the built-in table only fills in what a regex cannot say (calendar validity, integer ranges,
base64 decoding, JSON kind). Every check returns a message *without* the value: values may be
a BSN or clinical data and must never reach an OperationOutcome.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

#: A check of one primitive value: None when valid, else a message that does not contain it.
PrimitiveCheck = Callable[[object], "str | None"]

REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

#: FHIR primitive type codes (R4).
PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
})

#: The JSON representation of each primitive: numbers and booleans are not strings in JSON.
_NUMERIC = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})

#: Types the FHIRPath system types stand for in R4 snapshots (`Resource.id`, `Extension.url`).
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}

#: Fallback lexical rules (R4) for registries without the primitive StructureDefinitions.
DEFAULT_REGEX = {
    "base64Binary": r"(\s*([0-9a-zA-Z\+/=]){4}\s*)+",
    "boolean": r"true|false",
    "canonical": r"\S*",
    "code": r"[^\s]+(\s[^\s]+)*",
    "date": r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
            r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
    "dateTime": r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])"
                r"(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
                r"(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?",
    "decimal": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    "id": r"[A-Za-z0-9\-\.]{1,64}",
    "instant": r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])"
               r"-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
               r"(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))",
    "integer": r"-?([0]|([1-9][0-9]*))",
    "markdown": r"[ \r\n\t\S]+",
    "oid": r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+",
    "positiveInt": r"[1-9][0-9]*",
    "string": r"[ \r\n\t\S]+",
    "time": r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?",
    "unsignedInt": r"[0]|([1-9][0-9]*)",
    "uri": r"\S*",
    "url": r"\S*",
    "uuid": r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}

#: Strings longer than this are refused whatever the profile says (R4: 1 MB for string).
MAX_STRING = 1024 * 1024

_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

#: R4's regex for string and markdown. Under `re.ASCII`, `\\S` is every character but the six
#: ASCII whitespace ones, so the class admits everything except form feed and vertical tab:
#: a non-empty value matches exactly when it holds neither (tests/test_validation_speed_*
#: checks this against the regex for every code point).
STRING_REGEX = r"[ \r\n\t\S]+"

#: Types whose values recur across a dossier (codes, systems, canonicals, ids) and tell nothing
#: about a person: their check outcomes are remembered by value. Free text, dates and numbers
#: are checked every time (nothing personal is kept in memory beyond the request).
_REMEMBERED = frozenset({"code", "uri", "url", "canonical", "oid", "uuid", "id"})
#: Longer values are rare for these types and not worth keeping.
_REMEMBER_LENGTH = 256
_REMEMBER_COUNT = 4096
_DATE_PART = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def regex_of(sd: dict | None) -> str | None:
    """The lexical regex a primitive StructureDefinition declares for its `value`."""
    if not sd:
        return None
    for element in (sd.get("snapshot") or {}).get("element", []):
        if element.get("path", "").endswith(".value"):
            for t in element.get("type", []):
                for ext in t.get("extension", []):
                    if ext.get("url") == REGEX_EXT and isinstance(ext.get("valueString"), str):
                        return ext["valueString"]
    return None


def _calendar_ok(value: str) -> bool:
    """The regexes accept 2023-02-31; the calendar does not."""
    m = _DATE_PART.match(value)
    if not m or not m.group(3):
        return True
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def make_check(type_code: str, regex: str | None) -> PrimitiveCheck:
    """A check for one primitive type, with its regex compiled once.

    `re.ASCII` because FHIR's regexes are XML Schema regexes, where `\\s` and `\\S` mean the
    four XML whitespace characters, not every Unicode space.
    """
    pattern: Callable[[str], object] | None = \
        re.compile(regex, re.ASCII).fullmatch if regex else None
    if regex == STRING_REGEX:
        pattern = _no_ff_or_vt
    label = type_code

    if type_code == "boolean":
        def check_bool(value: object) -> str | None:
            return None if isinstance(value, bool) else "boolean values must be JSON true/false"
        return check_bool

    if type_code in _NUMERIC:
        low = {"positiveInt": 1, "unsignedInt": 0}.get(type_code, _INT_MIN)
        is_decimal = type_code == "decimal"

        def check_number(value: object) -> str | None:
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                if isinstance(value, str):
                    return f"{label} values must be JSON numbers, not strings"
                return f"Not a valid {label}"
            if is_decimal:
                if isinstance(value, float) and (value != value or value in (float("inf"),
                                                                             float("-inf"))):
                    return "Not a valid decimal"
                return None
            if isinstance(value, float) and not value.is_integer():
                return f"Not a valid {label} (has a fraction)"
            if isinstance(value, float) and "e" in repr(value):
                return f"Not a valid {label}"
            number = int(value)
            if number < low:
                return f"The {label} value is below the allowed minimum of {low}"
            if number > _INT_MAX:
                return f"The {label} value is above the allowed maximum of {_INT_MAX}"
            return None
        return check_number

    # Which of the type-specific rules below apply, decided once per type, not per value.
    empty_ok = type_code == "xhtml"
    calendar_rule = type_code in ("date", "dateTime", "instant")
    timezone_rule = type_code == "dateTime"
    base64_rule = type_code == "base64Binary"
    uuid_rule = type_code == "uuid"
    uri_rule = type_code in ("uri", "url", "canonical")

    def check_string(value: object) -> str | None:
        if not isinstance(value, str):
            return f"{label} values must be JSON strings"
        if value == "" and not empty_ok:
            return "@value cannot be empty"
        if len(value) > MAX_STRING:
            return "value is longer than permitted maximum length of 1 MB (1048576 bytes)"
        if pattern is not None and not pattern(value):
            return f"Not a valid {label} format"
        if calendar_rule and not _calendar_ok(value):
            return f"Not a valid {label} (no such day)"
        if timezone_rule and "T" in value and not _has_timezone(value):
            return "If a date has a time, it must have a timezone"
        if base64_rule and not _base64_ok(value):
            return "Not a valid Base64 value"
        if uuid_rule and value != value.lower():
            return "UUIDs must be valid and lowercase"
        if uri_rule:
            if value.startswith("urn:uuid:") and not _UUID.fullmatch(value):
                return "UUIDs must be valid and lowercase"
            if value.startswith("urn:oid:") and not _OID.fullmatch(value):
                return "OIDs must be valid"
        return None

    if type_code not in _REMEMBERED:
        return check_string
    known: dict[str, str | None] = {}

    def check_remembered(value: object) -> str | None:
        if type(value) is not str:
            return check_string(value)
        hit = known.get(value, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        problem = check_string(value)
        if len(value) <= _REMEMBER_LENGTH:
            if len(known) >= _REMEMBER_COUNT:
                known.clear()
            known[value] = problem
        return problem
    return check_remembered


_MISS = object()


def _no_ff_or_vt(value: str) -> bool:
    """`STRING_REGEX`'s fullmatch for a non-empty value, without the regex engine (a truth
    value where the regex gives a match or None)."""
    return "\x0b" not in value and "\x0c" not in value


def _has_timezone(value: str) -> bool:
    time = value.partition("T")[2]
    return time.endswith("Z") or "+" in time or "-" in time


def _base64_ok(value: str) -> bool:
    compact = "".join(value.split())
    if len(compact) % 4:
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def decimal_of(value: object) -> Decimal | None:
    """A JSON number (or FHIR date-free primitive) as Decimal for min/max comparisons."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    return None
