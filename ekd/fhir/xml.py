"""FHIR R4 XML <-> JSON conversion (http://hl7.org/fhir/R4/xml.html).

ekd stores and processes resources as JSON dicts; XML is only a wire format. Converting through
the fhir.resources pydantic models would validate every resource twice and their XML output has
fidelity bugs, so this module walks the trees directly. It needs per-element metadata that JSON
alone cannot give (does the element repeat, is it a primitive and of which JSON kind, is it an
XML attribute, in which order must elements be written). That metadata is read once per type from
the ``fhir.resources.R4B`` model classes and cached, so a conversion is a plain tree walk with no
pydantic involved.

Writing: XML is generated as text, not through lxml elements, because creating an lxml element
and setting its attributes costs several times more than escaping a string. Well-formedness is
still guaranteed: element names come from the metadata (or are checked against the XML Name
production), values are escaped, characters XML cannot carry are rejected, and the narrative is
parsed and re-serialised by lxml. Reading uses lxml.

R4B instead of R4: fhir.resources ships no R4 package. R4B is R4 with a few changes (R4 resource
types such as the MedicinalProduct* family, EffectEvidenceSynthesis, RiskEvidenceSynthesis and
SubstanceSpecification are gone, Evidence/EvidenceVariable were redesigned, some elements were
added). To stay useful for R4 content, ``dumps_xml`` writes what it has no metadata for
generically (dict -> complex element, scalar -> ``value`` attribute, dict with ``resourceType``
-> resource wrapper; an unknown resource type gets the DomainResource elements in order, then the
rest in JSON order). ``loads_xml`` cannot guess types and reports such elements as unknown.
"""

from __future__ import annotations

import copy
import html.entities
import math
import re
import threading
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from lxml import etree

from ekd.errors import ParseError

__all__ = ["FHIR_NS", "XHTML_NS", "dumps_xml", "loads_xml"]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_F = "{" + FHIR_NS + "}"
_X = "{" + XHTML_NS + "}"
_XSI = "{" + _XSI_NS + "}"
_XHTML_DIV = _X + "div"

# Element kinds.
_PRIMITIVE = 0
_COMPLEX = 1
_RESOURCE = 2
_XHTML = 3

# JSON kinds of primitives.
_STR = 0
_BOOL = 1
_INT = 2
_DEC = 3

_INT_TYPES = {"integer": _INT, "positiveInt": _INT, "unsignedInt": _INT, "integer64": _INT}
_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})


@dataclass(frozen=True, slots=True)
class _Elem:
    """What the walkers need to know about one element of a type."""

    name: str  # JSON property name == XML local name (choice types carry the type suffix)
    ext_name: str  # "_" + name: JSON property of a primitive's id/extensions
    index: int  # position in definition (= XML) order
    repeats: bool
    kind: int
    json_kind: int  # for primitives
    fhir_type: str  # primitive type code or complex type name, for messages
    model: type | None  # model class of a complex element


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    """Element table of one complex type or resource."""

    name: str
    order: tuple[_Elem, ...]  # definition (= XML) order
    by_key: dict[str, int]  # JSON property (name and _name) -> index in order
    by_tag: dict[str, _Elem]  # Clark-notation XML tag -> element
    attributes: frozenset[str]  # properties that are XML attributes (Element.id, Extension.url)
    is_resource: bool


# --------------------------------------------------------------------------------------------
# Metadata from fhir.resources.R4B


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        # Only FHIRResourceModel.id has two alternatives (Id | String): both are strings.
        return args[0]
    return annotation


def _primitive_code(annotation: Any) -> str | None:
    """FHIR primitive type code of an annotation, or None when it is not a primitive."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        for m in meta:
            code = getattr(m, "__visit_name__", None)
            if code:
                return code
        annotation = base
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is Decimal or annotation is float:
        return "decimal"
    module = getattr(annotation, "__module__", "")
    if module == "uuid":
        return "uuid"
    if annotation in (str, bytes) or module == "datetime":
        return "string"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return "string"  # e.g. Annotated[Union[AnyUrl, str], Url]: the visit name decides
    return None


def _element(name: str, index: int, annotation: Any) -> _Elem:
    ann = _strip_optional(annotation)
    repeats = False
    if typing.get_origin(ann) is list:
        repeats = True
        ann = _strip_optional(typing.get_args(ann)[0])
    model_getter = getattr(ann, "get_model_klass", None)
    if model_getter is not None:
        model = model_getter()
        if model.has_resource_base():
            return _Elem(name, "_" + name, index, repeats, _RESOURCE, _STR, "Resource", None)
        return _Elem(name, "_" + name, index, repeats, _COMPLEX, _STR, model.__name__, model)
    code = _primitive_code(ann)
    if code is None:
        raise TypeError(f"cannot derive the FHIR type of {name}: {annotation!r}")
    if code == "xhtml":
        return _Elem(name, "_" + name, index, repeats, _XHTML, _STR, code, None)
    if code == "boolean":
        json_kind = _BOOL
    elif code == "decimal":
        json_kind = _DEC
    else:
        json_kind = _INT_TYPES.get(code, _STR)
    return _Elem(name, "_" + name, index, repeats, _PRIMITIVE, json_kind, code, None)


# R4 elements that R4B dropped although their types still exist, so that R4 content using them
# can be read: type -> (element, inserted after, element type). That is only the Meta choice of
# the open value[x] elements; R4's Evidence/EvidenceVariable (redesigned in R4B) are not patched.
_R4_ADDITIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "Extension": (("valueMeta", "valueDosage", "Meta"),),
    "ElementDefinitionExample": (("valueMeta", "valueDosage", "Meta"),),
    "ElementDefinition": (
        ("defaultValueMeta", "defaultValueDosage", "Meta"),
        ("fixedMeta", "fixedDosage", "Meta"),
        ("patternMeta", "patternDosage", "Meta"),
    ),
}


@cache
def _type_info(model: type) -> _TypeInfo:
    """Element table of a model class: built on first use, then every conversion reuses it."""
    by_alias = {}
    for field_name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("element_property"):
            # Skips the ``_x`` primitive extension fields and fhir_comments.
            by_alias[field.alias or field_name] = field
    is_resource = model.has_resource_base()
    order: list[_Elem] = []
    attributes: set[str] = set()
    additions = {
        after: (name, type_name) for name, after, type_name in _R4_ADDITIONS.get(model.__name__, ())
    }
    for alias in model.elements_sequence():
        field = by_alias.get(alias)
        if field is None:
            continue
        if not is_resource and (
            alias == "id" or (alias == "url" and model.__name__ == "Extension")
        ):
            attributes.add(alias)
            continue
        order.append(_element(alias, len(order), field.annotation))
        if alias in additions:
            name, type_name = additions[alias]
            model_of_type = _model(type_name)
            order.append(
                _Elem(name, "_" + name, len(order), False, _COMPLEX, _STR, type_name, model_of_type)
            )
    by_key: dict[str, int] = {}
    by_tag: dict[str, _Elem] = {}
    for e in order:
        by_key[e.name] = e.index
        by_key[e.ext_name] = e.index
        by_tag[(_XHTML_DIV if e.kind == _XHTML else _F + e.name)] = e
    return _TypeInfo(
        model.__name__, tuple(order), by_key, by_tag, frozenset(attributes), is_resource
    )


@lru_cache(maxsize=2048)  # bounded: the names come from clients (root elements, resourceType)
def _model(type_name: str) -> type | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(type_name)
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def _resource_info(resource_type: str) -> _TypeInfo | None:
    """Element table of a concrete resource type, None when R4B does not know the type."""
    if resource_type in _ABSTRACT_RESOURCES:
        return None
    model = _model(resource_type)
    if model is None or not model.has_resource_base():
        return None
    return _type_info(model)


@cache
def _named_info(type_name: str) -> _TypeInfo:
    model = _model(type_name)
    if model is None:
        raise LookupError(type_name)
    return _type_info(model)


# Paths are linked tuples (parent, name, index) and only become strings for error messages, so
# the happy path does not pay for building them.
_Path = tuple


def _path_str(path: _Path | None) -> str:
    parts: list[str] = []
    while path is not None:
        parent, name, index = path
        parts.append(name if index is None else f"{name}[{index}]")
        path = parent
    return ".".join(reversed(parts))


# --------------------------------------------------------------------------------------------
# JSON -> XML


def dumps_xml(resource: dict, *, pretty: bool = False) -> bytes:
    """Serialise a FHIR JSON resource as FHIR XML (UTF-8, with XML declaration).

    Raises ValueError when the dict cannot be a FHIR resource (no resourceType, values of the
    wrong shape, characters XML cannot carry, a narrative that is not well-formed XHTML).
    """
    if not isinstance(resource, dict):
        raise ValueError("a FHIR resource must be a JSON object")
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _w_resource(out, resource, None, root=True)
    try:
        data = "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text that cannot be encoded as UTF-8: {e}") from e
    if pretty:
        data = _pretty(data)
    return data


def _err(msg: str, path: _Path | None) -> ValueError:
    where = _path_str(path)
    return ValueError(f"{where}: {msg}" if where else msg)


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _w_resource(out: list[str], res: Any, path: _Path | None, root: bool = False) -> None:
    if not isinstance(res, dict):
        raise _err("a resource must be a JSON object", path)
    rt = res.get("resourceType")
    if not isinstance(rt, str) or not _NAME_RE.fullmatch(rt):
        raise _err("resourceType is missing or not a valid name", path)
    info = _resource_info(rt)
    if info is None:
        # Not in R4B (e.g. R4's MedicinalProduct): known DomainResource elements, rest generic.
        info = _named_info("DomainResource")
    path = (path, rt, None) if path is None else path
    _w_complex(out, rt, res, info, path, ' xmlns="' + FHIR_NS + '"' if root else "")


def _w_complex(
    out: list[str], tag: str, obj: dict, info: _TypeInfo, path: _Path, attrs: str = ""
) -> None:
    by_key = info.by_key
    present: list[int] = []
    unknown: list[str] | None = None
    for key in obj:
        i = by_key.get(key)
        if i is None:
            if unknown is None:
                unknown = []
            unknown.append(key)
        else:
            present.append(i)
    if unknown is not None:
        rest = []
        for key in unknown:
            if key in info.attributes:
                v = obj[key]
                if v is not None:
                    attrs += f' {key}="{_attr_value(v, (path, key, None))}"'
            elif not (key == "resourceType" and info.is_resource) and key != "fhir_comments":
                rest.append(key)
        unknown = rest or None
    if not present and unknown is None:
        out.append(f"<{tag}{attrs}/>")
        return
    out.append(f"<{tag}{attrs}>")
    if len(present) > 1:
        present.sort()
    order = info.order
    last = -1
    for i in present:
        if i == last:
            continue  # name and _name of the same primitive
        last = i
        elem = order[i]
        name = elem.name
        value = obj.get(name)
        kind = elem.kind
        if kind == _PRIMITIVE:
            ext = obj.get(elem.ext_name)
            if elem.repeats:
                _w_primitive_list(out, name, value, ext, path)
            elif ext is not None:
                _w_primitive(out, name, value, ext, path)
            elif value is not None:  # the common case, inlined
                if type(value) is str and _attr_special(value) is None:
                    out.append(f'<{name} value="{value}"/>')
                else:
                    out.append(f'<{name} value="{_attr_value(value, (path, name, None))}"/>')
        elif value is None:
            continue
        elif kind == _COMPLEX:
            child_info = _type_info(elem.model)  # type: ignore[arg-type]
            if elem.repeats:
                if not isinstance(value, list):
                    raise _err("expected a JSON array", (path, name, None))
                for n, item in enumerate(value):
                    if not isinstance(item, dict):
                        raise _err("expected a JSON object", (path, name, n))
                    _w_complex(out, name, item, child_info, (path, name, n))
            else:
                if not isinstance(value, dict):
                    raise _err("expected a JSON object", (path, name, None))
                _w_complex(out, name, value, child_info, (path, name, None))
        elif kind == _RESOURCE:
            if elem.repeats:
                if not isinstance(value, list):
                    raise _err("expected a JSON array", (path, name, None))
                for n, item in enumerate(value):
                    out.append(f"<{name}>")
                    _w_resource(out, item, (path, name, n))
                    out.append(f"</{name}>")
            else:
                out.append(f"<{name}>")
                _w_resource(out, value, (path, name, None))
                out.append(f"</{name}>")
        else:  # _XHTML
            out.append(_xhtml(value, (path, name, None)))
    if unknown is not None:
        _w_unknown(out, obj, unknown, info, path)
    out.append(f"</{tag}>")


def _w_unknown(out: list[str], obj: dict, keys: list[str], info: _TypeInfo, path: _Path) -> None:
    """Write properties without R4B metadata generically, after the known ones."""
    for key in keys:
        if isinstance(key, str) and key.startswith("_"):
            name = key[1:]
            if name in obj:
                continue  # written together with its value
            if name in info.attributes:
                raise _err(
                    "extensions on an XML attribute cannot be represented", (path, key, None)
                )
            _w_generic(out, name, None, obj[key], (path, name, None))
        else:
            _w_generic(out, key, obj[key], obj.get("_" + key), (path, key, None))


def _w_generic(out: list[str], name: str, value: Any, ext: Any, path: _Path) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _err(f"{name!r} is not a valid element name", path)
    if isinstance(value, list) or isinstance(ext, list):
        values = value if isinstance(value, list) else []
        exts = ext if isinstance(ext, list) else []
        parent, _, _ = path
        for n in range(max(len(values), len(exts))):
            _w_generic(
                out,
                name,
                values[n] if n < len(values) else None,
                exts[n] if n < len(exts) else None,
                (parent, name, n),
            )
        return
    if isinstance(value, dict):
        if "resourceType" in value:
            out.append(f"<{name}>")
            _w_resource(out, value, path)
            out.append(f"</{name}>")
        else:
            # Element is the least we know: id attribute, then extension/modifierExtension.
            _w_complex(out, name, value, _named_info("BackboneElement"), path)
        return
    if value is None and ext is None:
        return
    _w_primitive(out, name, value, ext, path)


def _w_primitive(out: list[str], name: str, value: Any, ext: Any, path: _Path) -> None:
    value_attr = "" if value is None else f' value="{_attr_value(value, (path, name, None))}"'
    if ext is None:
        out.append(f"<{name}{value_attr}/>")
        return
    if not isinstance(ext, dict):
        raise _err("expected a JSON object", (path, "_" + name, None))
    x_id = ext.get("id")
    attrs = "" if x_id is None else f' id="{_attr_value(x_id, (path, "_" + name, None))}"'
    attrs += value_attr
    extensions = ext.get("extension")
    if len(ext) > (x_id is not None) + (extensions is not None):
        extra = sorted(set(ext) - {"id", "extension"})
        raise _err(f"unsupported properties {extra} of a primitive", (path, "_" + name, None))
    if not extensions:
        out.append(f"<{name}{attrs}/>")
        return
    if not isinstance(extensions, list):
        raise _err("expected a JSON array", (path, "_" + name, None))
    out.append(f"<{name}{attrs}>")
    info = _named_info("Extension")
    for n, item in enumerate(extensions):
        if not isinstance(item, dict):
            raise _err("expected a JSON object", ((path, "_" + name, None), "extension", n))
        _w_complex(out, "extension", item, info, ((path, "_" + name, None), "extension", n))
    out.append(f"</{name}>")


def _w_primitive_list(out: list[str], name: str, value: Any, ext: Any, path: _Path) -> None:
    values = [] if value is None else value
    exts = [] if ext is None else ext
    if not isinstance(values, list) or not isinstance(exts, list):
        raise _err("expected a JSON array", (path, name, None))
    if not exts:
        for n, v in enumerate(values):
            if v is None:
                raise _err("null without an extension", (path, name, n))
            out.append(f'<{name} value="{_attr_value(v, (path, name, n))}"/>')
        return
    for n in range(max(len(values), len(exts))):
        v = values[n] if n < len(values) else None
        x = exts[n] if n < len(exts) else None
        if v is None and x is None:
            raise _err("neither a value nor an extension", (path, name, n))
        _w_primitive(out, name, v, x, (path, name, n))


_ATTR_SPECIAL = re.compile(r'[&<>"\t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_attr_special = _ATTR_SPECIAL.search
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _attr_value(value: Any, path: _Path) -> str:
    if isinstance(value, str):
        if _ATTR_SPECIAL.search(value) is None:
            return value
        if _XML_INVALID.search(value):
            raise _err("contains characters that XML cannot represent", path)
        return (
            value.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
            .replace("\t", "&#9;")
            .replace("\n", "&#10;")
            .replace("\r", "&#13;")
        )
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _err(f"{value!r} is not a FHIR decimal", path)
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _err(f"{value!r} is not a FHIR decimal", path)
        return str(value)
    raise _err(f"expected a primitive value, got {type(value).__name__}", path)


class _Parsers(threading.local):
    """lxml parsers keep state and must not be shared between threads."""

    def __init__(self) -> None:
        # Comments are kept so that comments inside the XHTML narrative survive; the FHIR walker
        # skips them everywhere else. No DTDs, entities or network: XXE and entity expansion
        # are impossible, and documents with a DOCTYPE are rejected after parsing.
        self.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=True,
        )


_parsers = _Parsers()


_HTML_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_XML_ENTITIES = frozenset({"amp", "lt", "gt", "quot", "apos"})


def _numeric_entity(match: re.Match[str]) -> str:
    name = match[1]
    codepoint = html.entities.name2codepoint.get(name)
    if codepoint is None or name in _XML_ENTITIES:
        return match[0]
    return f"&#{codepoint};"


def _xhtml(value: Any, path: _Path) -> str:
    """The narrative re-serialised by lxml, which proves it is well-formed XHTML."""
    if not isinstance(value, str):
        raise _err("the narrative must be an XHTML string", path)
    try:
        div = etree.fromstring(value, _parsers.parser)
    except (etree.XMLSyntaxError, ValueError) as e:
        # HTML entities such as &nbsp; are not XML; they are common enough in stored narratives
        # that failing the whole response for them would be worse than writing &#160;.
        fixed = _HTML_ENTITY.sub(_numeric_entity, value)
        try:
            div = etree.fromstring(fixed, _parsers.parser)
        except (etree.XMLSyntaxError, ValueError):
            raise _err(f"the narrative is not well-formed XHTML: {e}", path) from e
    if div.getroottree().docinfo.doctype:
        raise _err("the narrative must not have a DOCTYPE", path)
    if div.tag == "div":
        # JSON writers sometimes leave out the xmlns; XML needs it to tell XHTML from FHIR.
        # lxml's own output starts with "<div", so the declaration can go right after it.
        text = etree.tostring(div, encoding="unicode", with_tail=False)
        try:
            div = etree.fromstring(f'<div xmlns="{XHTML_NS}"{text[4:]}', _parsers.parser)
        except etree.XMLSyntaxError as e:
            raise _err(f"the narrative is not well-formed XHTML: {e}", path) from e
    if div.tag != _XHTML_DIV:
        raise _err("the narrative must be an XHTML <div>", path)
    return etree.tostring(div, encoding="unicode", with_tail=False)


def _pretty(data: bytes) -> bytes:
    root = etree.fromstring(data, _parsers.parser)
    _indent(root, 0)
    body = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def _indent(el: etree._Element, level: int) -> None:
    """Indent FHIR elements only: whitespace inside the XHTML narrative would change it."""
    if el.tag == _XHTML_DIV or len(el) == 0:
        return
    inner = "\n" + "  " * (level + 1)
    el.text = inner
    child = None
    for child in el:
        _indent(child, level + 1)
        child.tail = inner
    if child is not None:
        child.tail = "\n" + "  " * level


# --------------------------------------------------------------------------------------------
# XML -> JSON


def _fail(msg: str, path: _Path | None) -> typing.NoReturn:
    where = _path_str(path)
    raise ParseError(f"{msg} at {where}" if where else msg, expression=where or None)


def loads_xml(data: bytes) -> dict:
    """Parse FHIR XML into the FHIR JSON dict.

    Raises ParseError for XML that is not well-formed, has a DOCTYPE (entity expansion attacks),
    is not in the FHIR namespace, or does not match the R4B definitions (unknown resource types,
    elements and attributes, values that do not fit their primitive type).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        root = etree.fromstring(data, _parsers.parser)
    except etree.XMLSyntaxError as e:
        line, column = e.position if e.position else (e.lineno, e.offset)
        msg = re.sub(r", line \d+, column \d+$", "", e.msg or str(e))
        raise ParseError(f"XML is not well-formed at line {line}, column {column}: {msg}") from e
    except ValueError as e:  # e.g. a str with an encoding declaration
        raise ParseError(f"XML is not well-formed: {e}") from e
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise ParseError("XML with a DOCTYPE is not accepted (no DTDs or entity declarations)")
    return _r_resource(root, None)


def _r_resource(el: etree._Element, path: _Path | None) -> dict:
    tag = el.tag
    if not tag.startswith(_F):
        q = etree.QName(el)
        _fail(
            f"Element <{q.localname}> is in namespace {q.namespace or '(none)'}, "
            f"expected a resource in {FHIR_NS}",
            path,
        )
    rt = tag[len(_F) :]
    info = _resource_info(rt)
    if info is None:
        _fail(f"Unknown resource type {rt!r}", path)
    out: dict[str, Any] = {"resourceType": rt}
    _r_complex(el, info, out, (path, rt, None) if path is None else path)
    return out


def _check_text(text: str | None, path: _Path) -> None:
    if text is not None and not text.isspace():
        _fail("Unexpected text content", path)


def _bad_attribute(key: str, path: _Path) -> None:
    if not key.startswith(_XSI):  # xsi:schemaLocation is common and harmless
        _fail(f"Unexpected attribute {key!r}", path)


def _r_complex(el: etree._Element, info: _TypeInfo, out: dict, path: _Path) -> None:
    attributes = info.attributes
    for key, v in el.items():
        if key in attributes:
            out[key] = v
        else:
            _bad_attribute(key, path)
    text = el.text
    if text is not None and not text.isspace():
        _fail("Unexpected text content", path)
    by_tag = info.by_tag
    lists: list[str] | None = None
    for child in el:
        tail = child.tail
        if tail is not None and not tail.isspace():
            _fail("Unexpected text content", path)
        elem = by_tag.get(child.tag)
        if elem is None:
            if not isinstance(child.tag, str):
                continue  # comment
            _unknown_child(child, path)
        name = elem.name
        kind = elem.kind
        if elem.repeats:
            if kind == _PRIMITIVE:
                values = out.get(name)
                if values is None:
                    values = out[name] = []
                    out[elem.ext_name] = []
                    if lists is None:
                        lists = []
                    lists.append(name)
                v, x = _r_primitive(child, elem, (path, name, len(values)))
                values.append(v)
                out[elem.ext_name].append(x)
                continue
            items = out.get(name)
            if items is None:
                items = out[name] = []
            if kind == _COMPLEX:
                obj: dict[str, Any] = {}
                _r_complex(child, _type_info(elem.model), obj, (path, name, len(items)))  # type: ignore[arg-type]
                items.append(obj)
            else:
                items.append(_r_contained(child, (path, name, len(items))))
            continue
        if name in out or elem.ext_name in out:
            _fail(f"Element '{name}' must not repeat", (path, name, None))
        if kind == _PRIMITIVE:
            attrs = child.items()
            if (
                len(attrs) == 1 and attrs[0][0] == "value" and child.text is None and not len(child)
            ):  # the common case, inlined
                raw = attrs[0][1]
                out[name] = raw if elem.json_kind == _STR else _convert(raw, elem, path)
                continue
            v, x = _r_primitive(child, elem, (path, name, None))
            if v is not None:
                out[name] = v
            if x is not None:
                out[elem.ext_name] = x
        elif kind == _COMPLEX:
            obj = {}
            _r_complex(child, _type_info(elem.model), obj, (path, name, None))  # type: ignore[arg-type]
            out[name] = obj
        elif kind == _RESOURCE:
            out[name] = _r_contained(child, (path, name, None))
        else:
            out[name] = _r_xhtml(child)
    if lists is not None:
        # JSON keeps value and extension arrays aligned with nulls; drop an array of only nulls.
        for name in lists:
            if all(v is None for v in out[name]):
                del out[name]
            if all(x is None for x in out["_" + name]):
                del out["_" + name]


def _unknown_child(child: etree._Element, path: _Path) -> typing.NoReturn:
    q = etree.QName(child)
    if q.namespace == FHIR_NS:
        _fail(f"Unknown element '{q.localname}'", (path, q.localname, None))
    _fail(
        f"Element <{q.localname}> in namespace {q.namespace or '(none)'} is not allowed",
        (path, q.localname, None),
    )


def _r_contained(el: etree._Element, path: _Path) -> dict:
    for key, _ in el.items():
        _bad_attribute(key, path)
    _check_text(el.text, path)
    inner = None
    for child in el:
        _check_text(child.tail, path)
        if not isinstance(child.tag, str):
            continue
        if inner is not None:
            _fail("Expected exactly one resource", path)
        inner = child
    if inner is None:
        _fail("Expected a resource", path)
    return _r_resource(inner, path)


_INT_RE = re.compile(r"-?[0-9]+")
_DEC_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _r_primitive(el: etree._Element, elem: _Elem, path: _Path) -> tuple[Any, dict | None]:
    raw: str | None = None
    ext: dict[str, Any] | None = None
    for key, v in el.items():
        if key == "value":
            raw = v
        elif key == "id":
            ext = {"id": v}
        else:
            _bad_attribute(key, path)
    text = el.text
    if text is not None and not text.isspace():
        _fail("Unexpected text content (primitive values go in the value attribute)", path)
    if len(el):
        extensions: list[dict] = []
        info = _named_info("Extension")
        for child in el:
            _check_text(child.tail, path)
            tag = child.tag
            if tag != _F + "extension":
                if not isinstance(tag, str):
                    continue
                _unknown_child(child, path)
            obj: dict[str, Any] = {}
            _r_complex(child, info, obj, (path, "extension", len(extensions)))
            extensions.append(obj)
        if extensions:
            if ext is None:
                ext = {}
            ext["extension"] = extensions
    if raw is None:
        if ext is None:
            _fail("Primitive element has neither a value nor extensions", path)
        return None, ext
    if elem.json_kind == _STR:
        return raw, ext
    return _convert(raw, elem, path[0], path[2]), ext


def _convert(raw: str, elem: _Elem, parent: _Path, index: int | None = None) -> Any:
    """The JSON value of a non-string primitive; the element's path is built only on failure."""
    kind = elem.json_kind
    if kind == _BOOL:
        if raw == "true":
            return True
        if raw == "false":
            return False
        _fail(f"Invalid boolean value {raw!r}", (parent, elem.name, index))
    if kind == _INT:
        if not _INT_RE.fullmatch(raw):
            _fail(f"Invalid {elem.fhir_type} value {raw!r}", (parent, elem.name, index))
        value = int(raw)
        code = elem.fhir_type
        low = 1 if code == "positiveInt" else 0 if code == "unsignedInt" else -(2**31)
        if not low <= value < 2**31:
            _fail(f"{code} value {raw!r} is out of range", (parent, elem.name, index))
        return value
    if kind == _DEC:
        if not _DEC_RE.fullmatch(raw):
            _fail(f"Invalid decimal value {raw!r}", (parent, elem.name, index))
        if "." in raw or "e" in raw or "E" in raw:
            return float(raw)
        return int(raw)
    return raw


def _r_xhtml(div: etree._Element) -> str:
    """The narrative as JSON wants it: the div with only the namespace declarations it uses."""
    if len(div.nsmap) > 1:  # declarations in scope from the FHIR ancestors would leak into it
        div = copy.deepcopy(div)
        etree.cleanup_namespaces(div)
    return etree.tostring(div, encoding="unicode", with_tail=False)
