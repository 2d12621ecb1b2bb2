"""System values: Date, DateTime, Time, Quantity and type descriptors.

FHIRPath's temporal values carry a precision and compare "as far as both are known": comparing
2012-04 with 2012-04-15 is neither true nor false but empty. Python's datetime cannot express
that (nor years without months, nor a time zone that was simply not given), so the values keep
their components as written and are only turned into datetimes for time-zone normalisation and
arithmetic. Quantities compare across units through a small UCUM subset: enough for the units
clinical data actually uses (mass, length, volume, time, amount, pressure, ...), not all of UCUM.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache

# --------------------------------------------------------------------------------------------
# Temporal values

_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_TIME_RE = re.compile(r"(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?")
_TZ_RE = re.compile(r"Z|([+-])(\d{2}):(\d{2})")
_DATETIME_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?T?"
)

# Digits of precision per component, as precision() and lowBoundary()/highBoundary() count them.
DATE_DIGITS = (4, 6, 8)
DATETIME_DIGITS = (4, 6, 8, 10, 12, 14, 17)
TIME_DIGITS = (2, 4, 6, 9)


def _tz_minutes(text: str | None) -> int | None:
    if text is None:
        return None
    if text == "Z":
        return 0
    m = _TZ_RE.fullmatch(text)
    if not m:
        raise ValueError(f"Invalid time zone {text!r}")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return -minutes if m.group(1) == "-" else minutes


def _tz_text(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _valid_date(y: int, m: int | None, d: int | None) -> bool:
    if m is not None and not 1 <= m <= 12:
        return False
    if d is not None:
        assert m is not None
        if not 1 <= d <= calendar.monthrange(y, m)[1]:
            return False
    return y >= 1


class Temporal:
    """Common base: components tuple (None where unknown), fraction digits and time zone."""

    __slots__ = ("frac", "parts", "tz")
    parts: tuple[int | None, ...]
    frac: str | None  # fractional second digits as written ("0", "123"), or None
    tz: int | None  # offset in minutes, or None when not given

    def precision(self) -> int:
        """Number of known components (seconds and their fraction count as one)."""
        n = 0
        for p in self.parts:
            if p is None:
                break
            n += 1
        return n

    def seconds(self) -> Decimal | None:
        s = self.parts[-1]
        if s is None:
            return None
        return Decimal(f"{s}.{self.frac}") if self.frac else Decimal(s)

    def __eq__(self, other: object) -> bool:  # structural identity, for caching/dedup only
        return (
            type(self) is type(other)
            and self.parts == other.parts  # type: ignore[attr-defined]
            and self.frac == other.frac  # type: ignore[attr-defined]
            and self.tz == other.tz  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.parts, self.frac, self.tz))

    def __repr__(self) -> str:
        return f"@{self}"


class Date(Temporal):
    __slots__ = ()

    def __init__(self, year: int, month: int | None = None, day: int | None = None) -> None:
        self.parts = (year, month, day)
        self.frac = None
        self.tz = None

    @classmethod
    def parse(cls, text: str) -> Date | None:
        m = _DATE_RE.fullmatch(text)
        if not m:
            return None
        y, mo, d = (int(g) if g else None for g in m.groups())
        assert y is not None
        if not _valid_date(y, mo, d):
            return None
        return cls(y, mo, d)

    def __str__(self) -> str:
        y, m, d = self.parts
        out = f"{y:04d}"
        if m is not None:
            out += f"-{m:02d}"
            if d is not None:
                out += f"-{d:02d}"
        return out

    def digits(self) -> int:
        return DATE_DIGITS[self.precision() - 1]

    def to_datetime(self) -> DateTime:
        y, m, d = self.parts
        return DateTime(y, m, d)  # type: ignore[arg-type]


class DateTime(Temporal):
    __slots__ = ()

    def __init__(
        self,
        year: int,
        month: int | None = None,
        day: int | None = None,
        hour: int | None = None,
        minute: int | None = None,
        second: int | None = None,
        frac: str | None = None,
        tz: int | None = None,
    ) -> None:
        self.parts = (year, month, day, hour, minute, second)
        self.frac = frac
        self.tz = tz

    @classmethod
    def parse(cls, text: str) -> DateTime | None:
        m = _DATETIME_RE.fullmatch(text)
        if not m:
            return None
        y, mo, d, h, mi, s = (int(g) if g else None for g in m.groups()[:6])
        assert y is not None
        if not _valid_date(y, mo, d):
            return None
        if (h is not None and h > 23) or (mi is not None and mi > 59) or (
            s is not None and s > 59
        ):
            return None
        if text.endswith("T") and h is not None:
            return None  # a trailing "T" is only allowed when no time follows
        return cls(y, mo, d, h, mi, s, m.group(7), _tz_minutes(m.group(8)))

    def __str__(self) -> str:
        y, mo, d, h, mi, s = self.parts
        out = f"{y:04d}"
        if mo is None:
            return out
        out += f"-{mo:02d}"
        if d is None:
            return out
        out += f"-{d:02d}"
        if h is None:
            return out
        out += f"T{h:02d}"
        if mi is not None:
            out += f":{mi:02d}"
            if s is not None:
                out += f":{s:02d}"
                if self.frac:
                    out += "." + self.frac
        if self.tz is not None:
            out += _tz_text(self.tz)
        return out

    def digits(self) -> int:
        n = self.precision()
        if n == 6 and self.frac:
            return 17
        return DATETIME_DIGITS[n - 1]

    def to_date(self) -> Date:
        y, m, d = self.parts[:3]
        return Date(y, m, d)  # type: ignore[arg-type]

    def utc_parts(self) -> tuple[tuple[int | None, ...], Decimal | None]:
        """Components shifted to UTC (time zone known and a time present), and the seconds."""
        y, mo, d, h, mi, _s = self.parts
        secs = self.seconds()
        if self.tz is None or self.tz == 0 or h is None:
            return self.parts[:5], secs
        base = datetime(y, mo or 1, d or 1, h, mi or 0, tzinfo=UTC)  # type: ignore[arg-type]
        base -= timedelta(minutes=self.tz)
        shifted = (base.year, base.month, base.day, base.hour, base.minute if mi is not None
                   else None)
        return shifted, secs


class Time(Temporal):
    __slots__ = ()

    def __init__(
        self,
        hour: int,
        minute: int | None = None,
        second: int | None = None,
        frac: str | None = None,
    ) -> None:
        self.parts = (hour, minute, second)
        self.frac = frac
        self.tz = None

    @classmethod
    def parse(cls, text: str) -> Time | None:
        m = _TIME_RE.fullmatch(text)
        if not m:
            return None
        h, mi, s = (int(g) if g else None for g in m.groups()[:3])
        assert h is not None
        if h > 23 or (mi is not None and mi > 59) or (s is not None and s > 59):
            return None
        return cls(h, mi, s, m.group(4))

    def __str__(self) -> str:
        h, mi, s = self.parts
        out = f"{h:02d}"
        if mi is not None:
            out += f":{mi:02d}"
            if s is not None:
                out += f":{s:02d}"
                if self.frac:
                    out += "." + self.frac
        return out

    def digits(self) -> int:
        n = self.precision()
        if n == 3 and self.frac:
            return 9
        return TIME_DIGITS[n - 1]


def _key(value: Temporal, utc: bool) -> list[int | Decimal]:
    """Known components, seconds with their fraction as one; shifted to UTC if asked."""
    if isinstance(value, Date):
        head: tuple[int | None, ...] = value.parts
        secs = None
    elif isinstance(value, DateTime):
        head, secs = value.utc_parts() if utc else (value.parts[:5], value.seconds())
    else:
        head, secs = value.parts[:2], value.seconds()
    out: list[int | Decimal] = []
    for p in head:
        if p is None:
            return out
        out.append(p)
    if secs is not None:
        out.append(secs)
    return out


def compare_temporal(a: Temporal, b: Temporal) -> int | None:
    """-1/0/1, or None when the answer depends on components only one side knows."""
    utc = False
    if (isinstance(a, DateTime) and isinstance(b, DateTime) and a.parts[3] is not None
            and b.parts[3] is not None):
        if (a.tz is None) != (b.tz is None):
            return None  # one side's offset is unknown: the instants cannot be ordered
        utc = True
    ka, kb = _key(a, utc), _key(b, utc)
    for x, y in zip(ka, kb, strict=False):
        if x != y:
            return -1 if x < y else 1
    return 0 if len(ka) == len(kb) else None


# --------------------------------------------------------------------------------------------
# Temporal arithmetic

CALENDAR_NORMAL = {
    "year": "year", "years": "year", "month": "month", "months": "month", "week": "week",
    "weeks": "week", "day": "day", "days": "day", "hour": "hour", "hours": "hour",
    "minute": "minute", "minutes": "minute", "second": "second", "seconds": "second",
    "millisecond": "millisecond", "milliseconds": "millisecond",
}
# UCUM codes that are definite durations and may be added to dates (not 'a' and 'mo', whose
# UCUM definitions are mean Julian years/months rather than calendar ones).
_UCUM_DURATIONS = {"wk": "week", "d": "day", "h": "hour", "min": "minute", "s": "second",
                   "ms": "millisecond"}
_MS = {"week": 604_800_000, "day": 86_400_000, "hour": 3_600_000, "minute": 60_000,
       "second": 1000, "millisecond": 1}


def duration_unit(q: Quantity) -> str | None:
    """The calendar unit a quantity stands for in date arithmetic, or None."""
    if q.calendar:
        return CALENDAR_NORMAL[q.unit]
    if q.unit in _UCUM_DURATIONS:
        return _UCUM_DURATIONS[q.unit]
    if q.unit in CALENDAR_NORMAL:  # '1 'month'' written as a quoted unit
        return CALENDAR_NORMAL[q.unit]
    return None


def _add_months(y: int, m: int, months: int) -> tuple[int, int]:
    total = y * 12 + (m - 1) + months
    return total // 12, total % 12 + 1


def add_duration(value: Temporal, amount: int, unit: str) -> Temporal:
    """value + amount units; precision and time zone of `value` are kept."""
    if isinstance(value, Time):
        if unit in ("year", "month", "week", "day"):
            raise ValueError(f"Cannot add {unit}s to a time")
        h, mi, s = value.parts
        ms = _MS[unit] * amount
        unit_ms = {1: 3_600_000, 2: 60_000, 3: 1 if value.frac else 1000}[value.precision()]
        ms = int(ms / unit_ms) * unit_ms
        frac_ms = int((value.frac or "0").ljust(3, "0")[:3])
        total = ((h * 60 + (mi or 0)) * 60 + (s or 0)) * 1000 + frac_ms + ms
        total %= 86_400_000
        nh, rest = divmod(total, 3_600_000)
        nmi, rest = divmod(rest, 60_000)
        ns, nms = divmod(rest, 1000)
        frac = f"{nms:03d}" if value.frac else None
        return Time(nh, nmi if mi is not None else None, ns if s is not None else None, frac)
    is_date = isinstance(value, Date)
    dt = value.to_datetime() if isinstance(value, Date) else value
    assert isinstance(dt, DateTime)
    y, mo, d, h, mi, s = dt.parts
    assert y is not None
    n = dt.precision()
    if unit in ("year", "month"):
        months = amount * 12 if unit == "year" else amount
        if n == 1:  # year precision: whole years only
            y += months // 12 if months >= 0 else -((-months) // 12)
            return Date(y) if is_date else DateTime(y, tz=dt.tz)
        ny, nm = _add_months(y, mo or 1, months)
        nd = None if d is None else min(d, calendar.monthrange(ny, nm)[1])
        parts = (ny, nm, nd, h, mi, s)
    else:
        ms = _MS[unit] * amount
        unit_ms = {1: None, 2: None, 3: 86_400_000, 4: 3_600_000, 5: 60_000,
                   6: 1 if dt.frac else 1000}[n]
        if unit_ms is None:  # year/month precision: the duration is below what is known
            if unit == "week" or unit == "day":
                days = ms // 86_400_000
                months = days // 30 if n == 2 else days // 365 * 12
                return add_duration(value, months, "month")
            return value
        if unit_ms > 1:
            ms = int(ms / unit_ms) * unit_ms  # drop the part finer than the value's precision
        frac_ms = int((dt.frac or "0").ljust(3, "0")[:3])
        base = datetime(y, mo or 1, d or 1, h or 0, mi or 0, s or 0, frac_ms * 1000)
        moved = base + timedelta(milliseconds=ms)
        parts = (moved.year, moved.month, moved.day, moved.hour, moved.minute, moved.second)
        if dt.frac:
            frac = f"{moved.microsecond // 1000:03d}"
            return DateTime(*_mask(parts, n), frac=frac, tz=dt.tz)  # type: ignore[misc]
    masked = _mask(parts, n)
    if is_date:
        return Date(*masked[:3])  # type: ignore[arg-type]
    return DateTime(*masked, frac=dt.frac, tz=dt.tz)  # type: ignore[misc]


def _mask(parts: tuple[int | None, ...], n: int) -> tuple[int | None, ...]:
    return tuple(p if i < n else None for i, p in enumerate(parts))


# --------------------------------------------------------------------------------------------
# Quantities and UCUM

UCUM = "http://unitsofmeasure.org"

# Base dimensions: m (length), g (mass), s (time), rad (angle), K (temperature), C (charge),
# cd (luminous intensity), mol (amount; UCUM treats it as 6.0221367e23 but keeping it as its own
# dimension is what makes mmol/L comparable only with amount concentrations).
_D = dict[str, int]

_ATOMS: dict[str, tuple[Decimal, _D, bool]] = {}  # code -> (factor, dimensions, metric)


def _atom(code: str, factor: str | Decimal, dims: _D, metric: bool = True) -> None:
    _ATOMS[code] = (Decimal(factor), dims, metric)


for _code, _dims in (("m", {"m": 1}), ("g", {"g": 1}), ("s", {"s": 1}), ("rad", {"rad": 1}),
                     ("K", {"K": 1}), ("C", {"C": 1}), ("cd", {"cd": 1}), ("mol", {"mol": 1})):
    _atom(_code, 1, _dims)
_atom("L", "0.001", {"m": 3})
_atom("l", "0.001", {"m": 3})
_atom("min", 60, {"s": 1}, False)
_atom("h", 3600, {"s": 1}, False)
_atom("d", 86400, {"s": 1}, False)
_atom("wk", 604800, {"s": 1}, False)
_atom("a", "31557600", {"s": 1}, False)  # Julian year, 365.25 d
_atom("mo", "2629800", {"s": 1}, False)  # a/12
_atom("Hz", 1, {"s": -1})
_atom("N", 1000, {"g": 1, "m": 1, "s": -2})
_atom("Pa", 1000, {"g": 1, "m": -1, "s": -2})
_atom("J", 1000, {"g": 1, "m": 2, "s": -2})
_atom("W", 1000, {"g": 1, "m": 2, "s": -3})
_atom("A", 1, {"C": 1, "s": -1})
_atom("V", 1000, {"g": 1, "m": 2, "s": -2, "C": -1})
_atom("bar", 100_000_000, {"g": 1, "m": -1, "s": -2})
_atom("mm[Hg]", "133322", {"g": 1, "m": -1, "s": -2}, False)
_atom("cm[H2O]", "98066.5", {"g": 1, "m": -1, "s": -2}, False)
_atom("cal", "4184", {"g": 1, "m": 2, "s": -2})
_atom("kat", 1, {"mol": 1, "s": -1})
_atom("U", Decimal(1) / Decimal(60_000_000), {"mol": 1, "s": -1})  # umol/min
_atom("eq", 1, {"mol": 1})
_atom("osm", 1, {"mol": 1})
_atom("t", 1_000_000, {"g": 1})
_atom("[lb_av]", "453.59237", {"g": 1}, False)
_atom("[oz_av]", "28.349523125", {"g": 1}, False)
_atom("[in_i]", "0.0254", {"m": 1}, False)
_atom("[ft_i]", "0.3048", {"m": 1}, False)
_atom("[yd_i]", "0.9144", {"m": 1}, False)
_atom("[mi_i]", "1609.344", {"m": 1}, False)
_atom("[degF]", 1, {"K": 1}, False)  # affine scale: only comparable, never converted
_atom("Cel", 1, {"K": 1}, False)
_atom("deg", "0.0174532925199432957692369", {"rad": 1}, False)
_atom("%", "0.01", {}, False)
_atom("[ppm]", "0.000001", {}, False)
_atom("[iU]", 1, {"[iU]": 1})
_atom("[IU]", 1, {"[iU]": 1})
_atom("[drp]", "0.00000005", {"m": 3}, False)
_atom("[pH]", 1, {"[pH]": 1}, False)
_atom("[HPF]", 1, {"[HPF]": 1}, False)
_atom("[LPF]", 1, {"[LPF]": 1}, False)

_PREFIXES = {
    "Y": Decimal("1e24"), "Z": Decimal("1e21"), "E": Decimal("1e18"), "P": Decimal("1e15"),
    "T": Decimal("1e12"), "G": Decimal("1e9"), "M": Decimal("1e6"), "k": Decimal("1e3"),
    "h": Decimal("1e2"), "da": Decimal("1e1"), "d": Decimal("1e-1"), "c": Decimal("1e-2"),
    "m": Decimal("1e-3"), "u": Decimal("1e-6"), "n": Decimal("1e-9"), "p": Decimal("1e-12"),
    "f": Decimal("1e-15"), "a": Decimal("1e-18"), "z": Decimal("1e-21"), "y": Decimal("1e-24"),
}
_CALENDAR_AS_UCUM = {"week": "wk", "day": "d", "hour": "h", "minute": "min", "second": "s",
                     "millisecond": "ms"}


class UnitError(ValueError):
    """A unit string that is not (supported) UCUM."""


def _simple_unit(text: str) -> tuple[Decimal, _D]:
    if text in _ATOMS:
        f, dims, _metric = _ATOMS[text]
        return f, dims
    for plen in (2, 1):
        prefix, rest = text[:plen], text[plen:]
        if prefix in _PREFIXES and rest in _ATOMS and _ATOMS[rest][2]:
            f, dims, _metric = _ATOMS[rest]
            return _PREFIXES[prefix] * f, dims
    raise UnitError(f"Unknown unit {text!r}")


_COMPONENT = re.compile(r"(\[[^\]]*\]|[^.\/()\[\]{}\d+-]+(?:\[[^\]]*\])?)([+-]?\d+)?")


@lru_cache(maxsize=1024)
def canonical(unit: str) -> tuple[Decimal, tuple[tuple[str, int], ...]]:
    """(factor to base units, dimensions) of a UCUM unit expression."""
    factor = Decimal(1)
    dims: dict[str, int] = {}
    # Annotations are dimensionless: dropped after a unit, "1" where they stand alone.
    text = re.sub(
        r"\{[^}]*\}",
        lambda m: "1" if m.start() == 0 or m.string[m.start() - 1] in "./(" else "",
        unit,
    )
    i = 0
    sign = 1
    if text.startswith("/"):
        sign = -1
        i = 1
    if text in ("", "1"):
        return Decimal(1), ()
    while i < len(text):
        if text[i] == "(":
            depth, j = 1, i + 1
            while j < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            f, d = canonical(text[i + 1 : j - 1])
            exp = 1
            m = re.match(r"[+-]?\d+", text[j:])
            if m:
                exp = int(m.group(0))
                j += m.end()
            factor *= f ** (sign * exp)
            for k, v in d:
                dims[k] = dims.get(k, 0) + v * sign * exp
            i = j
        elif text[i].isdigit():
            m = re.match(r"(\d+)(?:[*^]([+-]?\d+))?", text[i:])
            assert m is not None
            number = Decimal(m.group(1)) ** (int(m.group(2)) if m.group(2) else 1)
            factor *= number**sign
            i += m.end()
        else:
            m = _COMPONENT.match(text, i)
            if not m:
                raise UnitError(f"Invalid unit {unit!r}")
            f, d = _simple_unit(m.group(1))
            exp = int(m.group(2)) if m.group(2) else 1
            factor *= f ** (sign * exp)
            for k, v in d.items():
                dims[k] = dims.get(k, 0) + v * sign * exp
            i = m.end()
        if i < len(text):
            if text[i] == ".":
                sign = 1
            elif text[i] == "/":
                sign = -1
            else:
                raise UnitError(f"Invalid unit {unit!r}")
            i += 1
    return factor, tuple(sorted((k, v) for k, v in dims.items() if v))


@dataclass(frozen=True, slots=True)
class Quantity:
    value: Decimal
    unit: str  # UCUM code, or a calendar keyword when `calendar`
    calendar: bool = False

    def __str__(self) -> str:
        value = format(self.value, "f")
        return f"{value} {self.unit}" if self.calendar else f"{value} '{self.unit}'"

    def ucum(self) -> str | None:
        """The UCUM unit this quantity can be converted with, None for years/months."""
        if self.calendar:
            return _CALENDAR_AS_UCUM.get(CALENDAR_NORMAL[self.unit])
        return self.unit

    def in_base(self) -> tuple[Decimal, tuple[tuple[str, int], ...]] | None:
        unit = self.ucum()
        if unit is None:
            return None
        try:
            factor, dims = canonical(unit)
        except UnitError:
            return None
        if unit in ("Cel", "[degF]"):
            return None
        return self.value * factor, dims


def _calendar_months(q: Quantity) -> Decimal | None:
    if q.calendar and CALENDAR_NORMAL[q.unit] in ("year", "month"):
        return q.value * 12 if CALENDAR_NORMAL[q.unit] == "year" else q.value
    return None


def quantity_pair(a: Quantity, b: Quantity) -> tuple[Decimal, Decimal] | None:
    """Both values in one common unit, or None when the units cannot be compared."""
    if a.unit == b.unit and a.calendar == b.calendar:
        return a.value, b.value
    ma, mb = _calendar_months(a), _calendar_months(b)
    if ma is not None or mb is not None:
        if ma is not None and mb is not None:
            return ma, mb
        return None
    ba, bb = a.in_base(), b.in_base()
    if ba is None or bb is None or ba[1] != bb[1]:
        return None
    return ba[0], bb[0]


def convert_quantity(q: Quantity, unit: str, calendar_unit: bool = False) -> Quantity | None:
    target = Quantity(Decimal(1), unit, calendar_unit)
    pair = quantity_pair(q, target)
    if pair is None:
        return None
    return Quantity(pair[0] / pair[1], unit, calendar_unit)


def comparable_units(a: Quantity, b: Quantity) -> bool:
    return quantity_pair(a, b) is not None


def multiply_units(a: str, b: str, op: str) -> str:
    def wrap(u: str) -> str:
        return f"({u})" if any(c in u for c in "./") else u

    if op == "*":
        if a == "1":
            return b
        if b == "1":
            return a
        return f"{wrap(a)}.{wrap(b)}"
    if b == "1":
        return a
    if a == b:
        return "1"
    return f"{wrap(a)}/{wrap(b)}"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """Result of type(): a SimpleTypeInfo/ClassInfo reduced to what expressions can read."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}.{self.name}"
