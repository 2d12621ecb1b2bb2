"""The official FHIR R4 example instances (hl7.fhir.r4.examples-4.0.1) and a round trip of one
example through the HTTP API, for `tests/test_examples_roundtrip.py`.

The package is read straight from its tarball: nothing is extracted into the repository.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from lxml import etree

from ekd.fhir.xml import loads_xml

EXAMPLES_TGZ = (
    Path(__file__).resolve().parents[2] / "shared/fhir-packages/hl7.fhir.r4.examples-4.0.1.tgz"
)

#: Conformance and terminology resources: the package ships them too, but they are definitions
#: (the specification itself), not example instances.
CONFORMANCE_TYPES = frozenset(
    {
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "SearchParameter",
        "CapabilityStatement",
        "OperationDefinition",
        "CompartmentDefinition",
        "ConceptMap",
        "NamingSystem",
        "ImplementationGuide",
        "StructureMap",
        "GraphDefinition",
        "MessageDefinition",
        "TerminologyCapabilities",
        "ExampleScenario",
    }
)

JSON = "application/fhir+json"
XML = "application/fhir+xml"

OK = "ok"
REJECTED = "rejected"
JSON_DIFF = "json-diff"
XML_DIFF = "xml-diff"
XML_ERROR = "xml-error"
CATEGORIES = (OK, REJECTED, JSON_DIFF, XML_DIFF, XML_ERROR)
#: Detail of an `ok` whose narrative came back from XML re-serialised but canonically equal.
NARRATIVE_C14N = "narrative re-serialised by the XML writer, C14N-equal"


@dataclass(frozen=True)
class Corpus:
    #: (file name without "package/", resource) of every example instance, in tarball order.
    examples: list[tuple[str, dict]]
    #: Resources in package/*.json other than package.json, conformance ones included.
    total_resources: int
    #: Count of each excluded conformance/terminology type.
    excluded: dict[str, int]


@cache
def load_corpus(path: Path = EXAMPLES_TGZ) -> Corpus:
    """Read once per session (a few seconds): both backends use the same corpus."""
    examples: list[tuple[str, dict]] = []
    excluded: dict[str, int] = {}
    total = 0
    with tarfile.open(path) as tar:
        for member in tar:
            name = member.name
            if (
                not member.isfile()
                or not name.startswith("package/")
                or not name.endswith(".json")
                or name.count("/") != 1
                or name == "package/package.json"
            ):
                continue
            file = tar.extractfile(member)
            assert file is not None
            resource = orjson.loads(file.read())
            total += 1
            rtype = resource.get("resourceType")
            if rtype in CONFORMANCE_TYPES:
                excluded[rtype] = excluded.get(rtype, 0) + 1
            else:
                examples.append((name.removeprefix("package/"), resource))
    return Corpus(examples, total, excluded)


# --------------------------------------------------------------------------------------------
# Semantic comparison


def without_server_meta(resource: dict) -> dict:
    """The resource without meta.versionId/meta.lastUpdated (server-set); an emptied meta goes."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return resource
    out = {k: v for k, v in resource.items() if k != "meta"}
    rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    if rest:
        out["meta"] = rest
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_XHTML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def canonical_xhtml(div: str) -> bytes | None:
    """Canonical XML (C14N) of a narrative div; None when it is not well-formed."""
    try:
        return etree.tostring(etree.fromstring(div.encode("utf-8"), _XHTML_PARSER), method="c14n")
    except (etree.XMLSyntaxError, ValueError):
        return None


def first_difference(
    expected: Any, actual: Any, *, xhtml_c14n: bool = False, c14n_used: list[str] | None = None
) -> str | None:
    """The first path where `actual` differs from `expected`, with both values; None if equal.

    Numbers are compared by value (1 == 1.0), booleans only with booleans, the rest exactly.
    With `xhtml_c14n`, narrative divs that differ as strings are compared as XML: equal when
    their canonical forms (C14N) are, so `&quot;` vs `"`, `<td></td>` vs `<td/>` or a CR LF
    that XML parsing turns into LF do not count; the paths where that was needed are appended
    to `c14n_used`.
    """
    # Fast path: identical as canonical JSON (keys sorted; 1 and 1.0 and true stay distinct).
    sort = orjson.OPT_SORT_KEYS
    if orjson.dumps(expected, option=sort) == orjson.dumps(actual, option=sort):
        return None
    return _diff(expected, actual, "", xhtml_c14n, c14n_used)


def _diff(
    expected: Any, actual: Any, path: str, xhtml_c14n: bool, c14n_used: list[str] | None
) -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                return f"{sub}: missing in the response (expected {_show(expected[key])})"
            e, a = expected[key], actual[key]
            if xhtml_c14n and key == "div" and isinstance(e, str) and isinstance(a, str) and e != a:
                canonical = canonical_xhtml(e)
                if canonical is not None and canonical == canonical_xhtml(a):
                    if c14n_used is not None:
                        c14n_used.append(sub)
                    continue
            diff = _diff(e, a, sub, xhtml_c14n, c14n_used)
            if diff is not None:
                return diff
        for key in actual:
            if key not in expected:
                sub = f"{path}.{key}" if path else key
                return f"{sub}: not in the original (got {_show(actual[key])})"
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        for n, (e, a) in enumerate(zip(expected, actual, strict=False)):
            diff = _diff(e, a, f"{path}[{n}]", xhtml_c14n, c14n_used)
            if diff is not None:
                return diff
        if len(expected) != len(actual):
            return f"{path}: {len(expected)} items expected, got {len(actual)}"
        return None
    if _is_number(expected) and _is_number(actual):
        if expected == actual:
            return None
    elif type(expected) is type(actual) and expected == actual:
        return None
    if isinstance(expected, str) and isinstance(actual, str) and len(expected + actual) > 160:
        # Long strings (narratives): show where they start to differ.
        pairs = zip(expected, actual, strict=False)
        i = next((n for n, (x, y) in enumerate(pairs) if x != y), min(len(expected), len(actual)))
        start = max(0, i - 20)
        return (
            f"{path}: differs at character {i}: expected ...{expected[start : i + 40]!r}, "
            f"got ...{actual[start : i + 40]!r}"
        )
    return f"{path}: expected {_show(expected)}, got {_show(actual)}"


# --------------------------------------------------------------------------------------------
# Round trip


@dataclass(frozen=True)
class Outcome:
    category: str
    detail: str = ""

    def __str__(self) -> str:
        return self.category if not self.detail else f"{self.category}: {self.detail}"


def _first_issue(response: Any) -> str:
    try:
        body = response.json()
        return str(body["issue"][0].get("diagnostics") or body["issue"][0].get("code"))
    except Exception:  # any body that is not an OperationOutcome
        return response.text[:200]


def roundtrip(client: TestClient, resource: dict) -> Outcome:
    """Write `resource` (PUT with its id, POST without), read it back as JSON and as XML."""
    rtype = resource["resourceType"]
    body = orjson.dumps(resource)
    if "id" in resource:
        url = f"/fhir/{rtype}/{resource['id']}"
        written = client.put(url, content=body, headers={"Content-Type": JSON})
    else:
        written = client.post(f"/fhir/{rtype}", content=body, headers={"Content-Type": JSON})
        url = None
        if written.status_code == 201:
            url = "/fhir/" + "/".join(written.headers["location"].split("/")[-4:-2])
    if written.status_code not in (200, 201) or url is None:
        return Outcome(REJECTED, f"{written.status_code} {_first_issue(written)}")

    expected = without_server_meta(resource)
    if "id" not in resource:
        expected = {**expected, "id": url.rsplit("/", 1)[1]}

    as_json = client.get(url, headers={"Accept": JSON})
    if as_json.status_code != 200:
        return Outcome(JSON_DIFF, f"read returned {as_json.status_code}")
    diff = first_difference(expected, without_server_meta(orjson.loads(as_json.content)))
    if diff is not None:
        return Outcome(JSON_DIFF, diff)

    as_xml = client.get(url, headers={"Accept": XML})
    if as_xml.status_code != 200:
        return Outcome(XML_ERROR, f"{as_xml.status_code} {_first_issue(as_xml)}")
    if not as_xml.headers["content-type"].startswith(XML):
        return Outcome(XML_ERROR, f"Content-Type {as_xml.headers['content-type']}")
    try:
        parsed = loads_xml(as_xml.content)
    except Exception as exc:  # ParseError, and anything else is a failure too
        return Outcome(XML_ERROR, f"{type(exc).__name__}: {exc}")
    c14n_used: list[str] = []
    diff = first_difference(
        expected, without_server_meta(parsed), xhtml_c14n=True, c14n_used=c14n_used
    )
    if diff is not None:
        return Outcome(XML_DIFF, diff)
    return Outcome(OK, NARRATIVE_C14N if c14n_used else "")
