"""The canonical JSON a dossier is signed over (`ekd.transfer.seal.jcs`, behind `canonical`).

Why these tests: the sender signs RFC 8785 bytes and the receiver canonicalises again to
verify, so one byte of difference from RFC 8785 breaks every signature with a peer that uses
another implementation (or an older ekd). `jcs` takes a fast path through orjson and falls back
to the `rfc8785` package; every test here compares it with `rfc8785.dumps` byte for byte, and
for values rfc8785 refuses, checks that `jcs` refuses them with the same exception type.

Covered: the assumptions the fast path rests on (string escaping for every Unicode scalar
value, key order), RFC 8785's own examples (Appendix B numbers, the §3.2.3 sorting example),
floats of every magnitude and random bit patterns, integer limits, strings and keys that
matter, non-JSON Python types, nesting limits, all 719 example instances of the FHIR R4
package, demo dossiers, and a property test over arbitrary JSON-like values.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import math
import random
import struct
import uuid
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekd.jgz import demo
from ekd.transfer import seal
from ekd.transfer.seal import SealError
from tests.examples_corpus import load_corpus

SURROGATES = range(0xD800, 0xE000)


def outcome(dump: Any, value: Any) -> bytes | type[BaseException]:
    """The bytes, or the type of the exception raised."""
    try:
        return dump(value)
    except (ValueError, TypeError, RecursionError) as exc:
        return type(exc)


def assert_rfc8785(value: Any) -> bytes | type[BaseException]:
    expected = outcome(rfc8785.dumps, value)
    assert outcome(seal.jcs, value) == expected
    return expected


def fast(value: Any) -> bool:
    """Whether `jcs` serves `value` without rfc8785 (floats aside)."""
    try:
        seal._jcs_ready(value)
    except seal._NotPlain:
        return False
    return True


def scalar_values() -> list[str]:
    return [chr(c) for c in range(0x110000) if c not in SURROGATES]


# --- what the fast path rests on --------------------------------------------------------------

def test_orjson_escapes_every_character_as_rfc8785_does() -> None:
    """Per character, so that it holds for every string: only `"`, `\\` and U+0000-U+001F
    are escaped (short forms, lowercase `\\u00xx`), all else is UTF-8, U+2028/9 and DEL
    included."""
    different = [hex(ord(c)) for c in scalar_values() if orjson.dumps(c) != rfc8785.dumps(c)]
    assert different == []
    assert seal.jcs("\x00\x1f\x7f\b\t\n\f\r\x0b\u2028\u2029/\"\\") == (
        b'"\\u0000\\u001f\x7f\\b\\t\\n\\f\\r\\u000b\xe2\x80\xa8\xe2\x80\xa9/\\"\\\\"')


def test_every_key_below_u_e000_takes_the_fast_path_in_rfc8785_order() -> None:
    keys = {c: i for i, c in enumerate(reversed(scalar_values())) if c < "\ue000"}
    assert fast(keys)
    assert seal.jcs(keys) == rfc8785.dumps(keys)


def test_utf16_order_of_keys_beyond_the_bmp() -> None:
    """"\\U0001f600" (D83D DE00 in UTF-16) sorts before "\\ue000" in RFC 8785, after it by
    code point (orjson): such keys go to rfc8785."""
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert not fast(value)
    assert seal.jcs(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != seal.jcs(value)
    for key in ("\uffff", "\ufeff", "x\ue000", "\U00010000", "\U0010ffff"):
        nested = {"a": [{"b": {key: 1, "\U0001f600": 2, "\ue001": 3, "z": None}}]}
        assert not fast(nested)
        assert_rfc8785(nested)


def test_rfc8785_sorting_example() -> None:
    """RFC 8785 §3.2.3."""
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return",
             "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
             "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
             "\u00f6": "Latin Small Letter O With Diaeresis"}
    order = [key for key, _ in sorted(value.items(), key=lambda kv: kv[0].encode("utf-16be"))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    expected = "{" + ",".join(f'{orjson.dumps(k).decode()}:{orjson.dumps(value[k]).decode()}'
                              for k in order) + "}"
    assert seal.jcs(value) == expected.encode() == rfc8785.dumps(value)


# --- numbers ----------------------------------------------------------------------------------

#: RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical form (None: refused).
APPENDIX_B = [
    ("0000000000000000", "0"), ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"), ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"), ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("7fffffffffffffff", None), ("7ff0000000000000", None),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"), ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def from_bits(bits: int) -> float:
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


@pytest.mark.parametrize(("bits", "text"), APPENDIX_B)
def test_rfc8785_number_samples(bits: str, text: str | None) -> None:
    number = from_bits(int(bits, 16))
    for value in (number, [number], {"v": number, "w": [1, number, "x"]}):
        result = assert_rfc8785(value)
        if text is None:
            assert result is rfc8785.FloatDomainError
        else:
            assert isinstance(result, bytes) and text.encode() in result


def float_samples() -> list[float]:
    samples = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
               1e21, 1e-7, 1e-6, 1e20, 9.999999999999999e20, 1e16, 1e15, 0.1, 0.2 + 0.1,
               2.0**53, 2.0**53 + 2, -(2.0**53), 2.0**63, 2.0**64, 2.0**1023, 0.5, 1 / 3]
    for exponent in range(-325, 309):
        for mantissa in (1.0, 1.5, 2.5, 9.87654321, 7.0):
            value = float(f"{mantissa}e{exponent}")
            samples += [value, -value, math.nextafter(value, math.inf),
                        math.nextafter(value, -math.inf)]
    samples += [float(n) for n in range(-1000, 1001)]  # integral: "5", never "5.0"
    rng = random.Random(8785)
    samples += [from_bits(rng.getrandbits(64)) for _ in range(20000)]
    return [x for x in samples if math.isfinite(x)]


def test_floats_of_every_magnitude() -> None:
    samples = float_samples()
    assert len(samples) > 30000
    for value in samples:
        assert seal.jcs(value) == rfc8785.dumps(value), repr(value)
    assert seal.jcs(samples) == rfc8785.dumps(samples)
    assert seal.jcs({"a": {"b": samples}}) == rfc8785.dumps({"a": {"b": samples}})
    assert seal.jcs([5.0, -0.0, 1e21, 1e-7, 5e-324, 34.0, 15.25]) == (
        b"[5,0,1e+21,1e-7,5e-324,34,15.25]")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float) -> None:
    assert assert_rfc8785({"a": [1, value]}) is rfc8785.FloatDomainError
    with pytest.raises(SealError) as caught:
        seal.canonical({"resourceType": "Bundle", "x": value})
    assert caught.value.code == "malformed"


@pytest.mark.parametrize("value", [
    0, 1, -1, 2**53 - 1, -(2**53) + 1, 2**31, -(2**31), 2**53, -(2**53), 2**63 - 1, 2**63,
    2**64, -(2**64), 10**30, 10**18])
def test_integers(value: int) -> None:
    result = assert_rfc8785({"n": value, "l": [value]})
    assert isinstance(result, bytes) == (abs(value) <= 2**53 - 1)
    rng = random.Random(value)
    numbers = [rng.randint(-(2**53) + 1, 2**53 - 1) for _ in range(2000)]
    assert seal.jcs(numbers) == rfc8785.dumps(numbers)


# --- strings, structure, types ----------------------------------------------------------------

ADVERSARIAL: list[Any] = [
    "", "plain", "é ü ß", "".join(map(chr, range(0x20))), "\x7f", "\u2028\u2029",
    "\ufeff\ue000\uffff", "😀 \U00010000 \U0010ffff", '"\\/', "</script>",
    {"": "", " ": " ", "\x00": "\x1f", '"': "\\", "\u2028": "\u2029"},
    {"é": 1, "z": 2, "ÿ": 3, "Ā": 4, "\u07ff": 5, "\u0800": 6, "\ud7ff": 7},
    {"😀": "😀", "\U0001f600x": "\ue000"}, {"\ue000": {"😀": [True, False, None]}},
    [], {}, [[]], [{}], {"a": []}, {"a": {}}, [[[[[]]]]], {"a": {"b": {"c": {}}}},
    [True, False, None], {"t": True, "f": False, "n": None},
    {"b": 1, "a": [True, False, None, -(2**53) + 1]}, {"x": [1, 1.0, "1", True]},
    {"10": 1, "9": 2, "a": 3, "A": 4, "_": 5, "aa": 6, "a\x00": 7},
]


@pytest.mark.parametrize("value", ADVERSARIAL)
def test_adversarial_values(value: Any) -> None:
    assert isinstance(assert_rfc8785(value), bytes)
    assert isinstance(assert_rfc8785({"nested": [value, {"again": value}]}), bytes)


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb", "\udc00\ud800", {"\ud800": 1},
                                   {"a": ["\udbff"]}])
def test_lone_surrogates_are_refused_as_rfc8785_does(value: Any) -> None:
    assert not isinstance(assert_rfc8785(value), bytes)
    with pytest.raises(SealError):
        seal.canonical({"resourceType": "Bundle", "x": value})


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Number(float):
    pass


@pytest.mark.parametrize("value", [
    (1, "a", None), {"a": (1.5, 2)}, Colour.RED, {"c": Colour.RED}, Text("x"), {Text("k"): 1},
    Number(2.0), collections.OrderedDict(b=1, a=2.0), {1: "a"}, {None: 1}, {(1,): 1},
    uuid.UUID(int=1), dt.date(2025, 1, 1), decimal.Decimal("1.5"), b"bytes", {1, 2},
    {"a": {"b": [dt.datetime(2025, 1, 1)]}}, orjson.Fragment(b"1"), object()])
def test_other_python_types_behave_as_in_rfc8785(value: Any) -> None:
    """Not JSON, so not the fast path: whatever rfc8785 does with them, `jcs` does."""
    assert not fast(value) or not fast({"v": value})
    assert_rfc8785(value)
    assert_rfc8785({"v": [value]})


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value, {"k": 1.0}]
    return value


@pytest.mark.parametrize("depth", [250, 260, 400])
def test_nesting_beyond_orjsons_limit_goes_to_rfc8785(depth: int) -> None:
    value = nested(depth)
    assert seal.jcs(value) == rfc8785.dumps(value)


def test_too_deep_nesting_is_refused() -> None:
    value = nested(5000)
    assert assert_rfc8785(value) is RecursionError
    with pytest.raises(SealError) as caught:
        seal.canonical({"resourceType": "Bundle", "x": value})
    assert caught.value.code == "malformed"


def test_shared_and_unchanged_containers() -> None:
    """Copy on write: the input is never changed, containers without floats are reused."""
    shared = {"coding": [{"code": "x"}], "value": 2.0}
    value = {"a": shared, "b": [shared, shared], "c": {"d": "e"}}
    assert seal.jcs(value) == rfc8785.dumps(value)
    assert shared == {"coding": [{"code": "x"}], "value": 2.0}
    assert type(shared["value"]) is float
    ready = seal._jcs_ready(value)
    assert ready["c"] is value["c"] and ready["a"] is not shared


# --- real documents ---------------------------------------------------------------------------

def test_every_fhir_r4_example() -> None:
    examples = load_corpus().examples
    assert len(examples) == 719
    refused = []
    for name, resource in examples:
        result = assert_rfc8785(resource)
        if not isinstance(result, bytes):
            refused.append(name)
        else:
            assert fast(resource), name
    # a decimal written as a 19-digit integer: beyond 2**53, refused by RFC 8785 (rfc8785)
    assert refused == ["Observation-decimal.json"]


@pytest.mark.parametrize("seed", [1, 3, 11])
def test_demo_dossiers(seed: int) -> None:
    for bundle in demo.generate(5, seed=seed):
        parsed = orjson.loads(orjson.dumps(bundle))  # as a receiver sees it
        for value in (bundle, parsed):
            assert fast(value)
            assert seal.jcs(value) == rfc8785.dumps(value)
        content = {k: v for k, v in parsed.items() if k not in ("id", "meta", "signature")}
        assert seal.canonical({**parsed, "id": "x", "meta": {"versionId": "1"}}) == (
            rfc8785.dumps(content))


# --- property ---------------------------------------------------------------------------------

#: Characters where the encodings disagree or escaping happens, mixed with arbitrary ones.
_TRICKY = st.sampled_from(["a", "Z", "0", "é", "\x00", "\x1f", "\x7f", '"', "\\", "/", "\b",
                           "\u2028", "\ud7ff", "\ue000", "\uffff", "\ufeff", "\U00010000",
                           "\U0001f600", "\U0010ffff", "\ud800", "\udc00"])
_TEXT = st.text(st.one_of(_TRICKY, st.characters()), max_size=6)
_KEYS = st.one_of(st.text(st.sampled_from("abcxyz_-0189"), max_size=4), _TEXT)
_SCALARS = st.one_of(
    st.none(), st.booleans(), _TEXT,
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**53 - 1, -(2**53) + 1, 2**53, -(2**53)]),
    st.floats(), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(min_value=-(10**6), max_value=10**6).map(float))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=40)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON)
def test_property_same_bytes_or_same_refusal_as_rfc8785(value: Any) -> None:
    assert_rfc8785(value)
    assert_rfc8785({"resourceType": "Bundle", "entry": [{"resource": value}]})
