"""Content negotiation (http://hl7.org/fhir/R4/http.html#mime-type): `_format`, `Accept`,
`Content-Type`, `_pretty`. JSON is the default; XML is converted at the edge only."""

from __future__ import annotations

from typing import Any, Literal

from ekd.errors import NotAcceptable, UnsupportedMediaType
from ekd.fhir import jsonfmt

Format = Literal["json", "xml"]

JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir",
                        "json", "text/json"})
XML_TYPES = frozenset({"application/fhir+xml", "application/xml", "application/xml+fhir",
                       "text/xml", "xml"})
PATCH_TYPES = frozenset({"application/json-patch+json"})
MEDIA = {"json": "application/fhir+json; charset=utf-8",
         "xml": "application/fhir+xml; charset=utf-8"}


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def response_format(format_param: str | None, accept: str | None) -> Format:
    if format_param:
        kind = _media(format_param.replace(" ", "+"))
        if kind in JSON_TYPES:
            return "json"
        if kind in XML_TYPES:
            return "xml"
        raise NotAcceptable(f"_format '{format_param}' is not supported; use json or xml")
    if not accept:
        return "json"
    ranked: list[tuple[float, int, str]] = []
    for pos, item in enumerate(accept.split(",")):
        kind, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((-q, pos, kind.lower()))
    for _q, _pos, kind in sorted(ranked):
        if kind in JSON_TYPES or kind in ("*/*", "application/*", "text/*"):
            return "json"
        if kind in XML_TYPES:
            return "xml"
    raise NotAcceptable("None of the media types in Accept is supported; use "
                        "application/fhir+json or application/fhir+xml")


def request_format(content_type: str | None, body: bytes, *, patch: bool = False) -> str:
    """'json', 'xml' or 'json-patch'; a missing Content-Type is sniffed from the body."""
    if not content_type:
        return "xml" if body.lstrip()[:1] == b"<" else "json"
    kind = _media(content_type)
    if kind in JSON_TYPES:
        return "json"
    if kind in XML_TYPES:
        return "xml"
    if patch and kind in PATCH_TYPES:
        return "json-patch"
    raise UnsupportedMediaType(f"Content-Type '{kind}' is not supported")


def parse_body(kind: str, body: bytes, max_depth: int) -> Any:
    if kind == "xml":
        from ekd.fhir.xml import loads_xml

        return loads_xml(body)
    return jsonfmt.loads(body, max_depth=max_depth)


def render(value: dict, fmt: Format, *, pretty: bool) -> bytes:
    if fmt == "xml":
        from ekd.fhir.xml import dumps_xml

        return dumps_xml(value, pretty=pretty)
    return jsonfmt.dumps(value, pretty=pretty)
