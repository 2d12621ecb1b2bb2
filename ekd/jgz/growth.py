"""Dutch growth references as LMS tables, and standard deviation scores (SDS) against them.

ekd ships no reference data: the tables are configured (`EKD_GROWTH_REFERENCES`, a folder of
`nl_1997_<measure>_<sex>_nl.txt` files in the nlreferences text format: `key = value` header,
`[data]`, then `x L M S` rows with x the age in years). SDS by the LMS method: interpolate L, M,
S linearly at the age, z = ((y/M)^L - 1) / (L*S), or ln(y/M)/S when |L| < 0.01.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path

MEASURES = ("hgt", "wgt", "hdc")  # height/length cm, weight kg, head circumference cm
SEXES = ("male", "female")


@dataclass(frozen=True, slots=True)
class LmsTable:
    ages: tuple[float, ...]
    rows: tuple[tuple[float, float, float], ...]

    def sds(self, age: float, value: float) -> float | None:
        """None outside the table's age range: no extrapolation."""
        if value <= 0 or not self.ages or age < self.ages[0] or age > self.ages[-1]:
            return None
        i = bisect.bisect_left(self.ages, age)
        if self.ages[i] == age or i == 0:
            lam, mu, sigma = self.rows[i]
        else:
            a0, a1 = self.ages[i - 1], self.ages[i]
            t = (age - a0) / (a1 - a0)
            lam, mu, sigma = (p0 + t * (p1 - p0)
                              for p0, p1 in zip(self.rows[i - 1], self.rows[i], strict=True))
        if abs(lam) < 0.01:
            return math.log(value / mu) / sigma
        return ((value / mu) ** lam - 1) / (lam * sigma)


def read_table(path: Path) -> LmsTable:
    ages: list[float] = []
    rows: list[tuple[float, float, float]] = []
    in_data = header_seen = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not in_data:
            in_data = line.strip() == "[data]"
            continue
        if not header_seen:
            header_seen = True  # the "x L M S" column line
            continue
        parts = line.split("\t")
        if len(parts) >= 4:
            ages.append(float(parts[0]))
            rows.append((float(parts[1]), float(parts[2]), float(parts[3])))
    return LmsTable(tuple(ages), tuple(rows))


class GrowthReferences:
    def __init__(self, tables: dict[tuple[str, str], LmsTable]) -> None:
        self.tables = tables

    @classmethod
    def load(cls, folder: Path) -> GrowthReferences:
        tables = {}
        for measure in MEASURES:
            for sex in SEXES:
                path = folder / f"nl_1997_{measure}_{sex}_nl.txt"
                if path.is_file():
                    tables[(measure, sex)] = read_table(path)
        return cls(tables)

    def sds(self, measure: str, sex: str, age: float, value: float) -> float | None:
        table = self.tables.get((measure, sex))
        return table.sds(age, value) if table is not None else None
