"""A QuestionnaireResponse checked against the Questionnaire it answers.

StructureDefinitions cannot say that an answer to a `date` question must be a `valueDate`, or
that item `q1` is required: the Questionnaire says that. When the registry (or the response's
contained resources) has the Questionnaire named in `QuestionnaireResponse.questionnaire`, the
response's items are matched to it by `linkId`, level by level, and checked for: unknown
linkIds, repetition, required items, answer count (`questionnaire-minOccurs`/`maxOccurs`),
answer type, `answerOption`/`answerValueSet`, exclusive options, min/max value and length,
decimal places, regex, attachment type and size, quantity units and limits, and reference
target types. An unknown Questionnaire is reported as a warning (it cannot be checked).

Messages never contain answer values.
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ekd.validation.validator import ProfileValidator
    from ekd.validation.walker import Frame, Walk

SD = "http://hl7.org/fhir/StructureDefinition/"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"

#: Questionnaire item type -> the answer value[x] types it accepts.
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("Boolean",), "decimal": ("Decimal",), "integer": ("Integer",),
    "date": ("Date",), "dateTime": ("DateTime",), "time": ("Time",), "string": ("String",),
    "text": ("String",), "url": ("Uri",), "choice": ("Coding",),
    "open-choice": ("Coding", "String"), "attachment": ("Attachment",),
    "reference": ("Reference",), "quantity": ("Quantity",),
}
_TYPE_NAMES = {"Uri": "uri"}
_NO_ANSWERS = frozenset({"group", "display"})


def check_response(v: ProfileValidator, walk: Walk, response: dict, frame: Frame) -> None:
    canonical = response.get("questionnaire")
    if not isinstance(canonical, str):
        return
    questionnaire = _find(v, response, canonical)
    if questionnaire is None:
        walk.report("warning", "not-found", f"{frame.path}.questionnaire",
                    f"The questionnaire {canonical} could not be found, so the answers were not "
                    "checked against it")
        return
    # Required items may still be missing while the response is being filled in.
    strict = response.get("status") not in ("in-progress", "stopped")
    _items(v, walk, questionnaire.get("item") or [], response.get("item") or [],
           frame.path, frame, strict)


def _find(v: ProfileValidator, response: dict, canonical: str) -> dict | None:
    if canonical.startswith("#"):
        for c in response.get("contained") or []:
            if isinstance(c, dict) and c.get("id") == canonical[1:] and \
                    c.get("resourceType") == "Questionnaire":
                return c
        return None
    for candidate in (canonical, canonical.partition("|")[0]):
        found = v.registry.get(candidate, "Questionnaire")
        if found is None and v.resolve_canonical is not None:
            found = v.resolve_canonical(candidate, "Questionnaire")
        if found is not None:
            return found
    return None


def _items(v: ProfileValidator, walk: Walk, q_items: list, r_items: list, path: str,
           frame: Frame, strict: bool) -> None:
    by_link = {qi.get("linkId"): qi for qi in q_items if isinstance(qi, dict)}
    seen: dict[str, int] = {}
    for i, ri in enumerate(r_items):
        if not isinstance(ri, dict):
            continue
        where = f"{path}.item[{i}]"
        link = ri.get("linkId")
        qi = by_link.get(link)
        if qi is None:
            walk.report("error", "not-found", where, "LinkId not found in the questionnaire")
            continue
        seen[link] = seen.get(link, 0) + 1
        if seen[link] > 1 and not qi.get("repeats"):
            walk.report("error", "invalid", where,
                        "Only one response item with this linkId is allowed")
        _item(v, walk, qi, ri, where, frame, strict)
    for qi in q_items:
        if not isinstance(qi, dict) or qi.get("linkId") in seen:
            continue
        if qi.get("required") and strict and _enabled_unknown(qi):
            walk.report("error", "required", path,
                        f"No response answer found for required item '{qi.get('linkId')}'")
        elif _ext(qi, SD + "questionnaire-minOccurs") and strict:
            walk.report("error", "invalid", path,
                        f"The minimum number of answers is "
                        f"{_ext(qi, SD + 'questionnaire-minOccurs')} but none were found for "
                        f"'{qi.get('linkId')}'")


def _enabled_unknown(qi: dict) -> bool:
    """Conditional items (enableWhen) are only required when enabled; not evaluated here."""
    return not qi.get("enableWhen")


def _item(v: ProfileValidator, walk: Walk, qi: dict, ri: dict, path: str, frame: Frame,
          strict: bool) -> None:
    qtype = qi.get("type")
    answers = ri.get("answer") or []
    if qtype in _NO_ANSWERS:
        if answers:
            walk.report("error", "structure", path,
                        f"Items of type {qtype} should not have answers")
        _items(v, walk, qi.get("item") or [], ri.get("item") or [], path, frame, strict)
        return
    count = len(answers)
    if count > 1 and not qi.get("repeats"):
        walk.report("error", "invalid", path,
                    "Only one response answer item with this linkId allowed")
    low = _ext(qi, SD + "questionnaire-minOccurs")
    high = _ext(qi, SD + "questionnaire-maxOccurs")
    if isinstance(low, int) and count < low:
        walk.report("error", "invalid", path,
                    f"The minimum number of answers is {low} but this has {count} answers")
    if isinstance(high, int) and count > high:
        walk.report("error", "invalid", path,
                    f"The maximum number of answers is {high} but this has {count} answers")
    if qi.get("required") and strict and count == 0:
        walk.report("error", "required", path,
                    f"No response answer found for required item '{qi.get('linkId')}'")
    exclusive = _exclusive_options(qi)
    for j, answer in enumerate(answers):
        if not isinstance(answer, dict):
            continue
        where = f"{path}.answer[{j}]"
        key = next((k for k in answer if k.startswith("value")), None)
        if key is not None:
            _answer(v, walk, qi, key, answer[key], where, frame)
            if exclusive and count > 1 and key == "valueCoding" and \
                    any(_same_coding(answer[key], o) for o in exclusive):
                walk.report("error", "invariant", where,
                            "The selected answer is an exclusive option - nothing else can be "
                            "selected at the same time")
        nested = answer.get("item")
        if nested:
            _items(v, walk, qi.get("item") or [], nested, where, frame, strict)
    if ri.get("item") and qtype not in _NO_ANSWERS:
        _items(v, walk, qi.get("item") or [], ri.get("item") or [], path, frame, strict)


def _answer(v: ProfileValidator, walk: Walk, qi: dict, key: str, value: Any, path: str,
            frame: Frame) -> None:
    qtype = str(qi.get("type"))
    suffix = key[len("value"):]
    allowed = ANSWER_TYPES.get(qtype)
    type_name = suffix[:1].lower() + suffix[1:] if suffix in _PRIMS else suffix
    where = f"{path}.value.ofType({type_name})"
    if allowed is not None and suffix not in allowed:
        expected = _TYPE_NAMES.get(allowed[0], allowed[0][:1].lower() + allowed[0][1:]
                                   if allowed[0] in _PRIMS else allowed[0])
        walk.report("error", "invariant", where,
                    f"Answer value must be of the type {expected} not {suffix}")
        return
    options = qi.get("answerOption")
    if options and qtype in ("choice", "integer", "date", "time", "string", "open-choice"):
        values = [o.get(key) for o in options if isinstance(o, dict) and key in o]
        ok = any(_same_coding(value, o) for o in values) if suffix == "Coding" \
            else value in values
        if not ok and not (qtype == "open-choice" and suffix == "String"):
            walk.report("error", "invariant", path if suffix == "Coding" else where,
                        "The answer is not in the set of permitted values")
    vs = qi.get("answerValueSet")
    if isinstance(vs, str) and suffix == "Coding" and isinstance(value, dict) and \
            v.registry.get(vs.partition("|")[0], "ValueSet") is not None:
        result = v._check_code(vs, value.get("system"), str(value.get("code")),
                               value.get("display"))
        if result is not None and result.valid is False:
            walk.report("error", "code-invalid", path,
                        f"The code is not in the options value set {vs}")
        elif result is not None and result.valid and result.display and \
                isinstance(value.get("display"), str) and \
                value["display"].strip().lower() != str(result.display).strip().lower():
            walk.report("warning", "invalid", f"{where}.display",
                        "Wrong display name for the code")
    low = _ext_value(qi, SD + "minValue")
    high = _ext_value(qi, SD + "maxValue")
    if suffix in ("Integer", "Decimal", "Date", "DateTime", "Time"):
        if low is not None and _less(value, low):
            walk.report("error", "invariant", where,
                        "The value is less than the allowed minimum")
        if high is not None and _less(high, value):
            walk.report("error", "invariant", where,
                        "The value is greater than the allowed maximum")
    if suffix == "Decimal":
        places = _ext(qi, SD + "maxDecimalPlaces")
        if isinstance(places, int) and isinstance(value, int | float):
            exponent = Decimal(repr(value)).as_tuple().exponent
            if isinstance(exponent, int) and -exponent > places:
                walk.report("error", "invariant", where,
                            f"The value has too many decimal places (limit = {places})")
    if suffix == "String" and isinstance(value, str):
        min_length = _ext(qi, SD + "minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            walk.report("error", "invariant", where,
                        f"The answer is shorter than the required minimum length of "
                        f"{min_length}")
        max_length = qi.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            walk.report("error", "invariant", where,
                        f"The answer is longer than the allowed maximum length of {max_length}")
        regex = _ext(qi, SD + "regex")
        if isinstance(regex, str):
            try:
                if re.search(regex, value) is None:
                    walk.report("error", "invariant", where,
                                "The answer does not conform to the expected format")
            except re.error:
                pass
    if suffix == "Attachment" and isinstance(value, dict):
        _attachment(walk, qi, value, path, where)
    if suffix == "Quantity" and isinstance(value, dict):
        _quantity(v, walk, qi, value, where)
    if suffix == "Reference" and isinstance(value, dict):
        _reference(v, walk, qi, value, where)


_PRIMS = frozenset({"Boolean", "Decimal", "Integer", "Date", "DateTime", "Time", "String", "Uri"})


def _attachment(walk: Walk, qi: dict, value: dict, path: str, where: str) -> None:
    types = [e.get("valueCode") for e in qi.get("extension") or []
             if isinstance(e, dict) and e.get("url") == SD + "mimeType"]
    content_type = value.get("contentType")
    if types and content_type not in types:
        walk.report("error", "required", path,
                    f"The mime type is not valid for this answer (allowed = {', '.join(types)})")
    size = None
    data = value.get("data")
    if isinstance(data, str):
        try:
            size = len(base64.b64decode("".join(data.split()), validate=False))
        except (binascii.Error, ValueError):
            size = None
    stated = value.get("size")
    if isinstance(stated, int) and size is not None and stated != size:
        walk.report("error", "structure", where,
                    "The stated attachment size does not match the actual attachment size")
    limit = _ext(qi, SD + "maxSize")
    actual = size if size is not None else stated
    if isinstance(limit, int | float) and isinstance(actual, int) and actual > limit:
        walk.report("error", "required", path,
                    f"The attachment is too large (allowed = {limit})")


def _quantity(v: ProfileValidator, walk: Walk, qi: dict, value: dict, where: str) -> None:
    from ekd.validation.validator import _to_base

    units = [e.get("valueCoding") for e in qi.get("extension") or []
             if isinstance(e, dict) and e.get("url") == SD + "questionnaire-unitOption"]
    if units and not any(isinstance(u, dict) and u.get("code") == value.get("code") and
                         u.get("system") == value.get("system") for u in units):
        walk.report("error", "invariant", where, "The unit of the answer is not one of the "
                    "allowed units")
    unit_vs = _ext(qi, SD + "questionnaire-unitValueSet")
    if isinstance(unit_vs, str):
        code = value.get("code")
        result = v._check_code(unit_vs, value.get("system"), code, None) \
            if isinstance(code, str) else None
        if not isinstance(code, str) or (result is not None and result.valid is False):
            walk.report("error", "invariant", where,
                        f"The unit of the answer is not in the unit value set {unit_vs}")
    amount = value.get("value")
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        return
    for url, is_min in ((SDC + "sdc-questionnaire-minQuantity", True),
                        (SDC + "sdc-questionnaire-maxQuantity", False)):
        limit = _ext(qi, url)
        if not isinstance(limit, dict) or not isinstance(limit.get("value"), int | float):
            continue
        mine = _to_base(Decimal(str(amount)), value.get("code"), value.get("system"))
        theirs = _to_base(Decimal(str(limit["value"])), limit.get("code"), limit.get("system"))
        if value.get("code") is None or limit.get("code") is None or mine is None or \
                theirs is None or mine[1] != theirs[1]:
            walk.report("error", "invariant", where,
                        f"The quantity cannot be compared to the allowed "
                        f"{'minimum' if is_min else 'maximum'} because no formal (comparable) "
                        "units are specified")
            continue
        if is_min and mine[0] < theirs[0]:
            walk.report("error", "invariant", where, "The quantity is less than the allowed "
                        "minimum")
        if not is_min and mine[0] > theirs[0]:
            walk.report("error", "invariant", where, "The quantity is greater than the allowed "
                        "maximum")


def _reference(v: ProfileValidator, walk: Walk, qi: dict, value: dict, where: str) -> None:
    ref = value.get("reference")
    if not isinstance(ref, str):
        return
    target_type = None
    m = re.match(r"^(?:.*/)?([A-Za-z]+)/[^/]+$", ref)
    if m is not None:
        target_type = m.group(1)
        if target_type not in v.compiler.resource_types():
            walk.report("error", "invariant", where,
                        "The resource type in the reference is not valid")
            return
    allowed = [e.get("valueCode") for e in qi.get("extension") or []
               if isinstance(e, dict) and e.get("url") == SD + "questionnaire-referenceResource"]
    if allowed and target_type and target_type not in allowed:
        walk.report("error", "invariant", where,
                    f"The resource type '{target_type}' in the reference is not allowed "
                    f"(allowed = {','.join(map(str, allowed))})")


def _exclusive_options(qi: dict) -> list[dict]:
    out = []
    for o in qi.get("answerOption") or []:
        if isinstance(o, dict) and _ext(o, SD + "questionnaire-optionExclusive") is True \
                and isinstance(o.get("valueCoding"), dict):
            out.append(o["valueCoding"])
    return out


def _same_coding(a: Any, b: Any) -> bool:
    return isinstance(a, dict) and isinstance(b, dict) and a.get("code") == b.get("code") and \
        a.get("system") == b.get("system")


def _ext(node: dict, url: str) -> Any:
    for e in node.get("extension") or []:
        if isinstance(e, dict) and e.get("url") == url:
            for k, val in e.items():
                if k.startswith("value"):
                    return val
    return None


def _ext_value(node: dict, url: str) -> Any:
    return _ext(node, url)


def _less(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a < b
    if isinstance(a, str) and isinstance(b, str):
        # Dates of different precision: "2022-06-30" is after "2022-06" (as the Java
        # validator reads a maximum of "2022-06").
        return a < b
    return False
