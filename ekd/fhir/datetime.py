"""FHIR date/time values used as request parameters (http://hl7.org/fhir/R4/datatypes.html)."""

from __future__ import annotations

from datetime import UTC, datetime

from ekd.errors import InvalidRequest


def parse_instant(value: str, name: str) -> datetime:
    """An instant or dateTime with at least a day; without a zone it is taken as UTC."""
    # An unencoded "+" in a query string arrives as a space.
    text = value.strip().replace(" ", "+").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be a FHIR instant such as 2026-01-31T12:00:00Z", expression=name
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
