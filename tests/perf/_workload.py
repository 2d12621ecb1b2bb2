"""Synthetic, deterministic JGZ-like workload for the core benchmark.

Why synthetic: the benchmark must run anywhere (CI, a laptop) without patient data, and every
target must receive byte-for-byte the same documents so that their figures are comparable.
Why JGZ-shaped: the sizes and shapes (a child, ~14 contact moments, growth measurements) are
what ekd will actually store, so per-resource costs are realistic rather than toy-sized.

A "chart" is one child: a Patient followed by, per contact moment, an Encounter and its
Observations (height, weight, and head circumference in the first 14 months). A chart is
about 50 resources, which is also the transaction-bundle size the benchmark uses.
References between resources are kept symbolic (``Chart`` keys) so the same chart can be
rendered as separate creates (server-assigned ids) or as one transaction (urn:uuid refs).
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

#: Fixed "today" so that the generated ages (and so the resource count) never drift.
REFERENCE_DATE = date(2025, 6, 1)
#: JGZ contact moments 0-4 years (age in days), roughly the national schedule.
CONTACT_MOMENTS = (10, 28, 56, 91, 122, 183, 228, 274, 335, 426, 548, 730, 1095, 1424)
#: Head circumference is only measured in the first 14 months.
HEAD_CIRCUMFERENCE_UNTIL_DAYS = 430
try:  # local time of the JGZ organisation, with summer time
    AMSTERDAM: tzinfo = ZoneInfo("Europe/Amsterdam")
except ZoneInfoNotFoundError:  # no tz database on this machine: winter time is close enough
    AMSTERDAM = timezone(timedelta(hours=1))

GIVEN_GIRLS = ("Emma", "Julia", "Mila", "Tess", "Sophie", "Zoë", "Sara", "Nora", "Yara", "Eva",
               "Saar", "Noor", "Liv", "Lotte", "Fenna", "Anna", "Lieke", "Fleur", "Maud", "Isa")
GIVEN_BOYS = ("Noah", "Liam", "Luca", "Lucas", "Sem", "Daan", "Finn", "Levi", "Milan", "Bram",
              "Mees", "Jesse", "Thijs", "Sam", "Teun", "Adam", "Mohammed", "Ruben", "Luuk", "Jens")
FAMILY = (("", "Jansen"), ("de", "Vries"), ("van den", "Berg"), ("van", "Dijk"), ("", "Bakker"),
          ("", "Janssen"), ("", "Visser"), ("", "Smit"), ("", "Meijer"), ("de", "Boer"),
          ("", "Mulder"), ("de", "Groot"), ("", "Bos"), ("", "Vos"), ("", "Peters"),
          ("", "Hendriks"), ("van", "Leeuwen"), ("", "Dekker"), ("", "Brouwer"), ("de", "Wit"))
CITIES = (("Utrecht", "35"), ("Amersfoort", "38"), ("Zeist", "37"), ("Houten", "39"),
          ("Nieuwegein", "34"), ("Amsterdam", "10"), ("Rotterdam", "30"), ("Den Haag", "25"))
STREETS = ("Kerkstraat", "Schoolstraat", "Dorpsstraat", "Molenweg", "Julianalaan", "Beatrixstraat",
           "Wilhelminastraat", "Stationsweg", "Eikenlaan", "Lindelaan")

#: (age in days, median) points of a rough Dutch growth curve; values are interpolated + noise.
HEIGHT_CM = ((0, 51.0), (91, 61.0), (183, 68.0), (365, 75.5), (548, 82.0), (730, 88.0),
             (1095, 97.0), (1460, 104.5))
WEIGHT_KG = ((0, 3.5), (91, 6.0), (183, 7.8), (365, 9.8), (548, 11.1), (730, 12.5),
             (1095, 14.5), (1460, 16.5))
HEAD_CM = ((0, 35.0), (91, 40.5), (183, 43.5), (365, 46.5), (548, 47.8))


def bsn_is_valid(bsn: str) -> bool:
    """The BSN 11-test: 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 must be divisible by 11."""
    if len(bsn) != 9 or not bsn.isdigit():
        return False
    weights = (9, 8, 7, 6, 5, 4, 3, 2, -1)
    return sum(w * int(d) for w, d in zip(weights, bsn, strict=True)) % 11 == 0


class BsnGenerator:
    """Unique, valid BSNs from the 9999xxxxx block.

    Why that block: it is the range Dutch test data sets draw from, so a synthetic record can
    never carry a number that is likely to be a real citizen's.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[str] = set()

    def next(self) -> str:
        for _ in range(100_000):
            body = "9999" + "".join(str(self._rng.randrange(10)) for _ in range(4))
            total = sum(w * int(d) for w, d in zip((9, 8, 7, 6, 5, 4, 3, 2), body, strict=True))
            check = total % 11
            if check == 10:  # no digit satisfies the 11-test for this prefix
                continue
            bsn = body + str(check)
            if bsn not in self._seen:
                self._seen.add(bsn)
                assert bsn_is_valid(bsn)
                return bsn
        raise RuntimeError("ran out of unique test BSNs; use a smaller --n")


def _interpolate(curve: tuple[tuple[int, float], ...], age_days: int) -> float:
    if age_days <= curve[0][0]:
        return curve[0][1]
    for (a0, v0), (a1, v1) in itertools.pairwise(curve):
        if age_days <= a1:
            return v0 + (v1 - v0) * (age_days - a0) / (a1 - a0)
    return curve[-1][1]


@dataclass
class Item:
    """One resource of a chart.

    ``key`` is a chart-local symbolic name; ``refs`` maps a dotted element path in ``body``
    (``subject`` or ``encounter``) to the key of the resource it must point at.
    """

    key: str
    resource_type: str
    body: dict[str, Any]
    refs: dict[str, str] = field(default_factory=dict)

    def render(self, resolve: Callable[[str], str]) -> dict[str, Any]:
        """The resource with its references filled in by ``resolve(key) -> reference``."""
        out = dict(self.body)
        for element, key in self.refs.items():
            out[element] = {"reference": resolve(key)}
        return out


@dataclass
class Chart:
    """One child's dossier: the Patient first, dependants after their targets."""

    items: list[Item]

    def __len__(self) -> int:
        return len(self.items)

    def transaction_bundle(self) -> dict[str, Any]:
        """A transaction Bundle with urn:uuid fullUrls that the server must rewrite."""
        urns = {it.key: f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, it.key)}" for it in self.items}
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": urns[it.key],
                    "resource": it.render(urns.__getitem__),
                    "request": {"method": "POST", "url": it.resource_type},
                }
                for it in self.items
            ],
        }


def _patient(rng: random.Random, bsns: BsnGenerator, birth: date, n: int) -> dict[str, Any]:
    girl = rng.random() < 0.49
    given = rng.choice(GIVEN_GIRLS if girl else GIVEN_BOYS)
    prefix, own = rng.choice(FAMILY)
    family = f"{prefix} {own}".strip()
    city, pc2 = rng.choice(CITIES)
    letters = chr(65 + rng.randrange(26)) + chr(65 + rng.randrange(26))
    postal = f"{pc2}{rng.randrange(10, 99)} {letters}"
    house = str(rng.randrange(1, 250))
    street = rng.choice(STREETS)
    family_el: dict[str, Any] = {"family": family}
    if prefix:  # nl-core style split of the voorvoegsel, as the Dutch profiles expect
        family_el["_family"] = {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
             "valueString": prefix},
            {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
             "valueString": own},
        ]}
    return {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": BSN_SYSTEM, "value": bsns.next()}],
        "active": True,
        "name": [{"use": "official", **family_el, "given": [given]}],
        "gender": "female" if girl else "male",
        "birthDate": birth.isoformat(),
        "address": [{
            "use": "home",
            "type": "physical",
            "line": [f"{street} {house}"],
            "_line": [{"extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName",
                 "valueString": street},
                {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-houseNumber",
                 "valueString": house},
            ]}],
            "city": city,
            "postalCode": postal,
            "country": "NL",
        }],
        "multipleBirthBoolean": n % 37 == 36,  # the odd twin
    }


def _observation(code: str, display: str, value: float, unit: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs",
                                  "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _chart(rng: random.Random, bsns: BsnGenerator, n: int) -> Chart:
    # Children aged 4-6 at the reference date, so that every contact moment has happened and
    # each chart has the same shape (and the resource count is stable for a given --n).
    birth = REFERENCE_DATE - timedelta(days=rng.randrange(4 * 365 + 30, 6 * 365))
    pkey = f"c{n}/Patient"
    items = [Item(pkey, "Patient", _patient(rng, bsns, birth, n))]
    height_sd, weight_sd = rng.gauss(0, 1), rng.gauss(0, 1)  # a child stays on its own curve
    for v, age in enumerate(CONTACT_MOMENTS):
        day = birth + timedelta(days=age + rng.randrange(-3, 4))
        start = datetime(day.year, day.month, day.day, 8 + rng.randrange(9),
                         rng.choice((0, 15, 30, 45)), tzinfo=AMSTERDAM)
        end = start + timedelta(minutes=rng.choice((15, 20, 30)))
        ekey = f"c{n}/Encounter/{v}"
        items.append(Item(ekey, "Encounter", {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "type": [{"text": f"JGZ contactmoment {age} dagen"}],
            "period": {"start": start.isoformat(), "end": end.isoformat()},
        }, {"subject": pkey}))
        when = (start + timedelta(minutes=5)).isoformat()
        height = _interpolate(HEIGHT_CM, age) * (1 + 0.035 * height_sd) + rng.gauss(0, 0.3)
        weight = _interpolate(WEIGHT_KG, age) * (1 + 0.10 * weight_sd) + rng.gauss(0, 0.08)
        measures = [("8302-2", "Body height", round(height, 1), "cm"),
                    ("29463-7", "Body weight", round(weight, 3), "kg")]
        if age <= HEAD_CIRCUMFERENCE_UNTIL_DAYS:
            head = _interpolate(HEAD_CM, age) + rng.gauss(0, 0.6)
            measures.append(("9843-4", "Head Occipital-frontal circumference", round(head, 1),
                             "cm"))
        for code, display, value, unit in measures:
            items.append(Item(f"c{n}/Observation/{v}/{code}", "Observation",
                              _observation(code, display, value, unit, when),
                              {"subject": pkey, "encounter": ekey}))
    return Chart(items)


def make_charts(n_resources: int, seed: int) -> list[Chart]:
    """Whole charts until at least ``n_resources`` resources exist (charts are not split)."""
    rng = random.Random(seed)
    bsns = BsnGenerator(rng)
    charts: list[Chart] = []
    total = 0
    while total < n_resources:
        charts.append(_chart(rng, bsns, len(charts)))
        total += len(charts[-1])
    return charts


def iter_items(charts: list[Chart]) -> Iterator[Item]:
    for chart in charts:
        yield from chart.items
