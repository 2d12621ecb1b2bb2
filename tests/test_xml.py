"""Tests of ekd.fhir.xml: FHIR XML <-> JSON.

The official R4 examples are the fidelity benchmark: every non-conformance example must survive
JSON -> XML -> JSON unchanged. Hand-written cases pin the exact XML for the tricky rules (element
order, attributes, primitive extensions, narrative) so that a converter that is wrong in the same
way in both directions still fails.
"""

from __future__ import annotations

import copy
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree

from ekd.errors import ParseError
from ekd.fhir.xml import dumps_xml, loads_xml

EXAMPLES = (
    Path(__file__).resolve().parents[2] / "shared/fhir-packages/hl7.fhir.r4.examples-4.0.1.tgz"
)
CONFORMANCE = frozenset(
    {
        "StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter",
        "CapabilityStatement", "OperationDefinition", "CompartmentDefinition", "ConceptMap",
        "NamingSystem", "ImplementationGuide", "StructureMap", "GraphDefinition",
        "MessageDefinition", "TerminologyCapabilities", "ExampleScenario",
    }
)  # fmt: skip

_R4_ONLY_TYPE = "resource type exists in R4 but not in R4B (fhir.resources has no metadata for it)"
# Examples that cannot round-trip because of R4 vs R4B model differences. Value: (reason, JSON
# properties of the root that R4B does not know). An empty tuple means the whole type is unknown.
KNOWN_EXCEPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "package/Evidence-example.json": (
        "R4B redesigned Evidence; R4's Evidence.exposureBackground does not exist in R4B",
        ("exposureBackground",),
    ),
    "package/EffectEvidenceSynthesis-example.json": (_R4_ONLY_TYPE, ()),
    "package/RiskEvidenceSynthesis-example.json": (_R4_ONLY_TYPE, ()),
    "package/SubstanceSpecification-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProduct-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductAuthorization-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductContraindication-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductIndication-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductIngredient-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductInteraction-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductManufactured-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductPackaged-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductPharmaceutical-example.json": (_R4_ONLY_TYPE, ()),
    "package/MedicinalProductUndesirableEffect-example.json": (_R4_ONLY_TYPE, ()),
}
_DOMAIN_RESOURCE = ("id", "meta", "implicitRules", "language", "text", "contained", "extension",
                    "modifierExtension")  # fmt: skip

F = "{http://hl7.org/fhir}"
DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _patient(body: bytes) -> bytes:
    return b'<Patient xmlns="http://hl7.org/fhir">' + body + b"</Patient>"


@cache
def _package() -> dict[str, dict]:
    """All JSON resources of the R4 examples package, by member name (read once per session)."""
    if not EXAMPLES.is_file():
        pytest.skip(
            f"R4 examples package not found at {EXAMPLES} (shared/ is a sibling of the repo)"
        )
    out: dict[str, dict] = {}
    with tarfile.open(EXAMPLES) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            if member.name.endswith(("package.json", ".index.json")):
                continue
            # Members are named <resourceType>-<id>.json: skip parsing ~75 MB of definitions.
            prefix = member.name.rsplit("/", 1)[-1].split("-", 1)[0]
            if prefix in CONFORMANCE:
                continue
            data = orjson.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
            if isinstance(data, dict) and "resourceType" in data:
                out[member.name] = data
    return out


def _examples() -> dict[str, dict]:
    return {n: r for n, r in _package().items() if r["resourceType"] not in CONFORMANCE}


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    """Where two JSON trees differ, or None. Numbers compare by value (1 == 1.0, but not True).

    Narratives compare by XML infoset (C14N): XML cannot keep the lexical form of the XHTML, so
    ``&quot;`` vs ``"`` in text, CR LF line ends (normalised to LF by every XML parser) and
    ``<br />`` vs ``<br/>`` are the same document.
    """
    ta, tb = type(a), type(b)
    if ta is not tb:
        if ta in (int, float) and tb in (int, float) and a == b:
            return None
        return f": {a!r:.80} != {b!r:.80}"
    if (ta is dict or ta is list) and a == b and _strict(a) == _strict(b):
        return None  # shortcut in C for the (large) subtrees without narrative differences
    if ta is dict:
        if a.keys() != b.keys():
            return f": only on one side: {sorted(a.keys() ^ b.keys())}"
        for k, v in a.items():
            d = _first_difference(v, b[k], k)
            if d is not None:
                return f".{k}{d}"
        return None
    if ta is list:
        if len(a) != len(b):
            return f": {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, key)
            if d is not None:
                return f"[{i}]{d}"
        return None
    if a == b:
        return None
    if key == "div" and ta is str and _c14n(a) == _c14n(b):
        return None
    return f": {a!r:.80} != {b!r:.80}"


def _strict(value: Any) -> bytes:
    """Sorted JSON: equal only if types are equal too (== says True == 1 == 1.0)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _c14n(xml: str) -> bytes | str:
    try:
        return etree.tostring(etree.fromstring(xml), method="c14n", with_comments=True)
    except etree.XMLSyntaxError as e:
        return f"not well-formed: {e}"


def _scalars(value: Any, key: str = "") -> set[str]:
    """Every primitive value of a JSON tree as XML writes it (narratives excepted)."""
    if isinstance(value, dict):
        return {
            s for k, v in value.items() if k not in ("resourceType", "div") for s in _scalars(v, k)
        }
    if isinstance(value, list):
        return {s for v in value for s in _scalars(v, key)}
    if isinstance(value, bool):
        return {"true" if value else "false"}
    return set() if value is None else {str(value)}


def _round_trip_problem(resource: dict) -> str | None:
    try:
        back = loads_xml(dumps_xml(resource))
    except (ValueError, ParseError) as e:
        return f"{type(e).__name__}: {e}"
    d = _first_difference(resource, back)
    return None if d is None else resource["resourceType"] + d


# ------------------------------------------------------------------------------------------------
# Official examples


@pytest.mark.slow
def test_official_examples_round_trip() -> None:
    examples = _examples()
    assert len(examples) > 700, f"expected ~720 examples, found {len(examples)}"
    failures = []
    for name, resource in sorted(examples.items()):
        if name in KNOWN_EXCEPTIONS:
            continue
        problem = _round_trip_problem(resource)
        if problem:
            failures.append(f"{name}: {problem}")
    assert not failures, f"{len(failures)} of {len(examples)} examples do not round-trip:\n" + (
        "\n".join(failures)
    )


def test_known_exceptions_are_real_and_the_rest_round_trips() -> None:
    examples = _examples()
    failures = []
    for name, (reason, r4_only) in KNOWN_EXCEPTIONS.items():
        assert name in examples, f"stale known exception {name} ({reason})"
        resource = examples[name]
        rt = resource["resourceType"]
        # The generic fallback still writes well-formed FHIR XML with all the data in it ...
        root = etree.fromstring(dumps_xml(resource))
        assert root.tag == F + rt
        written = {v for el in root.iter() for v in el.attrib.values()}
        assert _scalars(resource) <= written, name
        # ... which loads_xml rejects, naming what R4B lacks.
        with pytest.raises(ParseError) as info:
            loads_xml(dumps_xml(resource))
        if r4_only:
            assert f"{rt}.{r4_only[0]}" in info.value.diagnostics, name
            rest = {k: v for k, v in resource.items() if k not in r4_only}
        else:
            assert f"Unknown resource type '{rt}'" in info.value.diagnostics, name
            # Everything that R4B does know: the DomainResource part, carried by a Basic.
            rest = {"resourceType": "Basic"}
            rest |= {k: v for k, v in resource.items() if k.lstrip("_") in _DOMAIN_RESOURCE}
        problem = _round_trip_problem(rest)
        if problem:
            failures.append(f"{name}: {problem}")
    assert not failures, "\n".join(failures)


R4_GAPS = {
    # R4 elements absent from R4B (Evidence and EvidenceVariable were redesigned in R4B).
    "Evidence.name", "Evidence.shortTitle", "Evidence.subtitle", "Evidence.jurisdiction",
    "Evidence.copyright", "Evidence.effectivePeriod", "Evidence.topic",
    "Evidence.exposureBackground", "Evidence.exposureVariant", "Evidence.outcome",
    "EvidenceVariable.jurisdiction", "EvidenceVariable.copyright", "EvidenceVariable.approvalDate",
    "EvidenceVariable.lastReviewDate", "EvidenceVariable.effectivePeriod", "EvidenceVariable.topic",
    "EvidenceVariable.type", "EvidenceVariable.characteristic.definitionDataRequirement",
    "EvidenceVariable.characteristic.definitionTriggerDefinition",
    "EvidenceVariable.characteristic.usageContext",
    "EvidenceVariable.characteristic.participantEffectiveDateTime",
    "EvidenceVariable.characteristic.participantEffectivePeriod",
    "EvidenceVariable.characteristic.participantEffectiveDuration",
    "EvidenceVariable.characteristic.participantEffectiveTiming",
    # Element order differs from R4 in the redesigned resources.
    "order:Evidence", "order:EvidenceVariable",
}  # fmt: skip
R4_ONLY_TYPES = {
    "EffectEvidenceSynthesis", "RiskEvidenceSynthesis", "SubstanceSpecification", "SubstanceAmount",
    "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial", "MedicinalProduct", "MedicinalProductAuthorization",
    "MedicinalProductContraindication", "MedicinalProductIndication", "MedicinalProductIngredient",
    "MedicinalProductInteraction", "MedicinalProductManufactured", "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect",
}  # fmt: skip
_PRIMITIVE_CODES = {
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url",
    "uuid", "xhtml",
}  # fmt: skip


def test_r4b_metadata_matches_the_r4_definitions() -> None:
    """The converter's R4B metadata against the R4 StructureDefinitions in the examples package.

    Checks every R4 element of every R4 type R4B knows: it exists, repeats the same way, is
    primitive or complex the same way, and comes in the same relative order (XML element order).
    The differences are exactly the documented R4 vs R4B gaps.
    """
    from ekd.fhir import xml as conv

    package = _package()
    definitions = [
        e["resource"]
        for bundle in ("package/Bundle-resources.json", "package/Bundle-types.json")
        for e in package[bundle]["entry"]
        if e["resource"]["resourceType"] == "StructureDefinition"
        and e["resource"].get("derivation") == "specialization"
        and e["resource"]["kind"] in ("resource", "complex-type")
    ]
    assert len(definitions) > 180
    gaps: set[str] = set()
    missing_types: set[str] = set()
    for sd in definitions:
        children: dict[str, list[dict]] = {}
        for ed in sd["snapshot"]["element"]:
            if "." in ed["path"]:
                children.setdefault(ed["path"].rsplit(".", 1)[0], []).append(ed)
        for parent, eds in children.items():
            model = conv._model(parent.split(".")[0])
            if model is None:
                missing_types.add(parent.split(".")[0])
                continue
            info = conv._type_info(model)
            for step in parent.split(".")[1:]:
                elem = info.by_tag.get(F + step)
                info = conv._type_info(elem.model) if elem and elem.model else None
                if info is None:
                    break
            if info is None:
                continue  # under an element R4B lacks: reported for that element
            indexes = []
            for ed in eds:
                leaf = ed["path"].rsplit(".", 1)[1]
                codes = [t["code"] for t in ed.get("type", [])]
                if leaf.endswith("[x]"):
                    names = [(leaf[:-3] + c[0].upper() + c[1:], c) for c in codes]
                else:
                    names = [(leaf, codes[0] if codes else "")]
                for name, code in names:
                    if name in info.attributes:
                        continue
                    elem = info.by_tag.get(F + name) or (
                        info.by_tag.get("{http://www.w3.org/1999/xhtml}div")
                        if name == "div"
                        else None
                    )
                    if elem is None:
                        gaps.add(f"{parent}.{name}")
                        continue
                    indexes.append(elem.index)
                    primitive = code in _PRIMITIVE_CODES or code.startswith(
                        "http://hl7.org/fhirpath"
                    )
                    r4b_primitive = elem.kind in (conv._PRIMITIVE, conv._XHTML)
                    repeats = ed["max"] != "1" and ed["max"] != "0"
                    if primitive != r4b_primitive or repeats != elem.repeats:
                        gaps.add(f"kind:{parent}.{name}")
            if indexes != sorted(indexes):
                gaps.add(f"order:{parent}")
    assert missing_types == R4_ONLY_TYPES
    assert gaps == R4_GAPS


# ------------------------------------------------------------------------------------------------
# Exact XML of hand-written resources


def test_small_patient_exact_xml() -> None:
    patient = {
        "multipleBirthInteger": 2,
        "birthDate": "2020-01-02",
        "name": [{"given": ["Anna", "Maria"], "family": "Jansen", "id": "n1"}],
        "resourceType": "Patient",
        "active": True,
        "gender": "female",
        "id": "p1",
    }
    xml = dumps_xml(patient)
    assert xml == DECL + (
        b'<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><active value="true"/>'
        b'<name id="n1"><family value="Jansen"/><given value="Anna"/><given value="Maria"/></name>'
        b'<gender value="female"/><birthDate value="2020-01-02"/>'
        b'<multipleBirthInteger value="2"/></Patient>'
    )
    assert loads_xml(xml) == patient
    back = loads_xml(xml)
    assert list(back) == ["resourceType", "id", "active", "name", "gender", "birthDate",
                          "multipleBirthInteger"]  # fmt: skip
    assert back["multipleBirthInteger"] == 2 and type(back["multipleBirthInteger"]) is int


def test_primitive_extensions_with_null_alignment() -> None:
    ext = {"url": "http://example.org/fhir/StructureDefinition/note", "valueString": "roepnaam"}
    patient = {
        "resourceType": "Patient",
        "name": [
            {
                "given": ["Anna", None, "Kim"],
                "_given": [None, {"id": "g2", "extension": [ext]}, None],
            },
            {"_family": {"extension": [ext]}, "_given": [{"extension": [ext]}]},
        ],
        "birthDate": "2020-01-02",
        "_birthDate": {
            "id": "bd",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "2020-01-02T10:15:00+01:00",
                }
            ],
        },
    }
    xml = dumps_xml(patient)
    assert (
        b'<name><given value="Anna"/><given id="g2"><extension '
        b'url="http://example.org/fhir/StructureDefinition/note"><valueString value="roepnaam"/>'
        b'</extension></given><given value="Kim"/></name>'
    ) in xml
    assert (
        b'<name><family><extension url="http://example.org/fhir/StructureDefinition/note">' in xml
    )
    assert (
        b'<birthDate id="bd" value="2020-01-02"><extension '
        b'url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">'
        b'<valueDateTime value="2020-01-02T10:15:00+01:00"/></extension></birthDate>'
    ) in xml
    assert loads_xml(xml) == patient


def test_contained_resources_and_references() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "contained": [
            {"resourceType": "Patient", "id": "p", "gender": "male"},
            {"resourceType": "Practitioner", "id": "dr", "active": False},
        ],
        "status": "final",
        "code": {"text": "Lengte"},
        "subject": {"reference": "#p"},
        "performer": [{"reference": "#dr"}],
    }
    xml = dumps_xml(obs)
    assert (
        b'<contained><Patient><id value="p"/><gender value="male"/></Patient></contained>'
        b'<contained><Practitioner><id value="dr"/><active value="false"/></Practitioner>'
        b"</contained><status"
    ) in xml
    assert loads_xml(xml) == obs


DIV = (
    '<div xmlns="http://www.w3.org/1999/xhtml"><p class="x">Lengte &lt;1 m &amp; gewicht '
    "\u00e9\u00e9n kg</p><!-- opmerking --><table><tr><td>a</td></tr></table>"
    '<img src="data:x" alt=""/>\n  <a href="https://example.org/?a=1&amp;b=2">link</a></div>'
)


@pytest.mark.parametrize("pretty", [False, True])
def test_narrative_div_is_embedded_xhtml_and_survives(pretty: bool) -> None:
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div": DIV}}
    xml = dumps_xml(patient, pretty=pretty)
    root = etree.fromstring(xml)
    div = root.find(f"{F}text/{{http://www.w3.org/1999/xhtml}}div")
    assert div is not None and div.find("{http://www.w3.org/1999/xhtml}table") is not None
    assert loads_xml(xml) == patient  # byte-identical XHTML string, comment included


def test_div_without_xmlns_gets_the_xhtml_namespace() -> None:
    patient = {
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div><p>x</p></div>"},
    }
    xml = dumps_xml(patient)
    assert b'<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>' in xml
    assert (
        loads_xml(xml)["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'
    )


def test_div_with_html_entities_is_written_with_character_references() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml">a&nbsp;b &amp; &eacute;</div>'
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    xml = dumps_xml(patient)
    assert loads_xml(xml)["text"]["div"] == (
        '<div xmlns="http://www.w3.org/1999/xhtml">a\u00a0b &amp; \u00e9</div>'
    )


def test_div_does_not_leak_namespace_declarations_of_the_document() -> None:
    xml = (
        b'<Patient xmlns="http://hl7.org/fhir"'
        b' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="http://hl7.org/fhir ../patient.xsd">'
        b'<text><status value="generated"/>'
        b'<div xmlns="http://www.w3.org/1999/xhtml">x</div></text></Patient>'
    )
    assert loads_xml(xml)["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'


def test_bundle_with_entry_resources_and_outcome() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {"resourceType": "Patient", "id": "1", "meta": {"versionId": "1"}},
                "response": {
                    "status": "201 Created",
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "information", "code": "informational"}],
                    },
                },
            },
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "p", "resource": {"resourceType": "Basic", "id": "b"}},
                        {"name": "n", "valueDecimal": 0.001},
                    ],
                }
            },
        ],
    }
    xml = dumps_xml(bundle)
    assert (
        b'<entry><fullUrl value="urn:uuid:1"/><resource><Patient><id value="1"/><meta>'
        b'<versionId value="1"/></meta></Patient></resource><response><status value="201 Created"/>'
        b"<outcome><OperationOutcome><issue>"
    ) in xml
    assert b'<parameter><name value="p"/><resource><Basic><id value="b"/></Basic></resource>' in xml
    assert loads_xml(xml) == bundle


def test_choice_types_and_numbers() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Gewicht"},
        "effectiveDateTime": "2024-05-01",
        "valueQuantity": {"value": 75.5, "unit": "kg", "system": "http://unitsofmeasure.org"},
        "component": [
            {"code": {"text": "a"}, "valueInteger": -3},
            {"code": {"text": "b"}, "valueBoolean": False},
            {"code": {"text": "c"}, "valueQuantity": {"value": 3}},
            {"code": {"text": "d"}, "valueQuantity": {"value": 1.5e-7}},
        ],
    }
    xml = dumps_xml(obs)
    assert b'<effectiveDateTime value="2024-05-01"/><valueQuantity><value value="75.5"/>' in xml
    assert b'<valueInteger value="-3"/>' in xml and b'<valueBoolean value="false"/>' in xml
    assert b'<valueQuantity><value value="3"/></valueQuantity>' in xml
    back = loads_xml(xml)
    assert back == obs
    assert type(back["component"][2]["valueQuantity"]["value"]) is int
    assert type(back["valueQuantity"]["value"]) is float


def test_extension_url_and_element_id_are_attributes() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "extension": [
            {
                "id": "e1",
                "url": "http://example.org/complex",
                "extension": [{"url": "part", "valueCode": "x"}],
            },
            {"url": "http://example.org/meta", "valueMeta": {"versionId": "2"}},  # R4 only
        ],
        "modifierExtension": [{"url": "http://example.org/mod", "valueBoolean": True}],
        "identifier": [{"id": "i1", "system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": "1"}],
    }
    xml = dumps_xml(patient)
    assert (
        b'<Patient xmlns="http://hl7.org/fhir"><id value="p"/>'
        b'<extension id="e1" url="http://example.org/complex"><extension url="part">'
        b'<valueCode value="x"/></extension></extension>'
        b'<extension url="http://example.org/meta"><valueMeta><versionId value="2"/></valueMeta>'
        b'</extension><modifierExtension url="http://example.org/mod"><valueBoolean value="true"/>'
        b'</modifierExtension><identifier id="i1">'
    ) in xml
    assert loads_xml(xml) == patient


def test_string_values_are_exact() -> None:
    odd = "  spaties \t tab\nnieuwe regel\r\n\"quote\" & <tag> 'x' \u20ac \U0001f600 "
    patient = {"resourceType": "Patient", "name": [{"text": odd}]}
    xml = dumps_xml(patient)
    assert loads_xml(xml) == patient
    assert loads_xml(dumps_xml(patient, pretty=True)) == patient


def test_pretty_indents() -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "J"}]}
    xml = dumps_xml(patient, pretty=True)
    assert xml == DECL + (
        b'<Patient xmlns="http://hl7.org/fhir">\n  <id value="p"/>\n  <name>\n'
        b'    <family value="J"/>\n  </name>\n</Patient>\n'
    )
    assert loads_xml(xml) == patient


def test_comments_and_processing_instructions_are_ignored() -> None:
    xml = (
        b'<?xml version="1.0"?>\n<!-- a --><?pi x?><Patient xmlns="http://hl7.org/fhir">'
        b'<!-- b --><id value="p"/><?pi y?><name><!-- c --><given value="a"><!-- d --></given>'
        b"</name></Patient><!-- e -->"
    )
    assert loads_xml(xml) == {"resourceType": "Patient", "id": "p", "name": [{"given": ["a"]}]}


# ------------------------------------------------------------------------------------------------
# Errors


def test_malformed_xml_names_line_and_column() -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir">\n  <id value="p"/>\n  <name></nam>\n</Patient>'
    with pytest.raises(ParseError) as info:
        loads_xml(xml)
    assert "XML is not well-formed at line 3, column" in info.value.diagnostics
    assert info.value.status == 400


def test_empty_body_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not well-formed"):
        loads_xml(b"")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Patient xmlns="http://hl7.org/fhir"><name><text value="&lol3;"/></name></Patient>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><text value="&xxe;"/></name></Patient>"""
DOCTYPE_ONLY = b'<!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"><id value="p"/></Patient>'


@pytest.mark.parametrize(
    "xml", [BILLION_LAUGHS, XXE, DOCTYPE_ONLY], ids=["laughs", "xxe", "doctype"]
)
def test_doctype_and_entities_are_rejected(xml: bytes) -> None:
    with pytest.raises(ParseError) as info:
        loads_xml(xml)
    assert "root:" not in info.value.diagnostics  # no file content
    assert "DOCTYPE" in info.value.diagnostics or "not well-formed" in info.value.diagnostics


def test_unknown_element_is_named() -> None:
    xml = _patient(b'<name><family value="J"/><foo value="x"/></name>')
    with pytest.raises(ParseError) as info:
        loads_xml(xml)
    assert "Unknown element 'foo'" in info.value.diagnostics
    assert info.value.issues[0].expression == ("Patient.name[0].foo",)
    with pytest.raises(ParseError, match=r"Patient\.foo"):
        loads_xml(_patient(b'<foo value="x"/>'))


def test_unknown_resource_type_and_wrong_namespace() -> None:
    with pytest.raises(ParseError, match="Unknown resource type 'Patiënt'"):
        loads_xml('<Patiënt xmlns="http://hl7.org/fhir"/>'.encode())
    with pytest.raises(ParseError, match="Unknown resource type 'Resource'"):
        loads_xml(b'<Resource xmlns="http://hl7.org/fhir"/>')
    with pytest.raises(ParseError, match="namespace"):
        loads_xml(b'<Patient xmlns="http://hl7.org/fhir/wrong"><id value="p"/></Patient>')
    with pytest.raises(ParseError, match="namespace"):
        loads_xml(b'<Patient><id value="p"/></Patient>')
    with pytest.raises(ParseError, match="namespace"):
        loads_xml(_patient(b'<id xmlns="urn:x" value="p"/>'))


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (_patient(b'<active value="yes"/>'), "Invalid boolean value 'yes'"),
        (_patient(b'<multipleBirthInteger value="1.5"/>'), "Invalid integer value '1.5'"),
        (_patient(b'<multipleBirthInteger value="99999999999"/>'), "out of range"),
        (
            b'<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="abc"/>'
            b"</valueQuantity></Observation>",
            r"Invalid decimal value 'abc' at Observation\.valueQuantity\.value",
        ),
        (_patient(b'<photo><size value="-1"/></photo>'), "unsignedInt"),
        (_patient(b'<active value="true"/><active value="true"/>'), "must not repeat"),
        (_patient(b"<active/>"), "neither a value"),
        (_patient(b'<active value="true" foo="x"/>'), "Unexpected attribute"),
        (_patient(b"<gender>male</gender>"), "text content"),
        (_patient(b"<contained/>"), "resource"),
        (_patient(b'<text><div value="x"/></text>'), "Unknown element 'div'"),
    ],
)
def test_bad_content_is_a_parse_error(xml: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        loads_xml(xml)


@pytest.mark.parametrize(
    "resource",
    [
        {"id": "x"},
        {"resourceType": "Patient", "name": {"family": "x"}},
        {"resourceType": "Patient", "active": {"x": 1}},
        {"resourceType": "Patient", "name": [{"text": "bell \x07"}]},
        {"resourceType": "Patient", "text": {"status": "generated", "div": "<div><p></div>"}},
        {"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}},
        {"resourceType": "Patient", "name": [{"given": [None]}]},
        {"resourceType": "Patient", "name": [{"_family": {"extension": [], "bogus": 1}}]},
    ],
)
def test_dumps_rejects_what_is_not_fhir(resource: dict) -> None:
    with pytest.raises(ValueError):
        dumps_xml(resource)


def test_dumps_writes_unknown_elements_generically() -> None:
    patient = {
        "resourceType": "Patient",
        "foo": {"id": "f", "bar": ["x", None], "_bar": [None, {"id": "b"}], "n": 1},
        "id": "p",
    }
    xml = dumps_xml(patient)
    assert xml.endswith(
        b'<id value="p"/><foo id="f"><bar value="x"/><bar id="b"/><n value="1"/></foo></Patient>'
    )
    with pytest.raises(ParseError, match=r"Patient\.foo"):
        loads_xml(xml)


def test_conversion_does_not_mutate_the_input() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [{"given": ["a", None], "_given": [None, {"extension": [{"url": "u"}]}]}],
        "text": {"status": "generated", "div": "<div><p>x</p></div>"},
    }
    before = copy.deepcopy(resource)
    dumps_xml(resource, pretty=True)
    assert resource == before
