"""Synthetic JGZ dossiers for demos and load tests: one FHIR transaction Bundle per child.

Everything is derived from a seed and a reference date ("today" of the generated world), so the
same arguments always give the same Bundles. No global random state and no wall clock is used.

Per child: Patient (test-range BSN passing the 11-test), parents (RelatedPerson), the national
contact-moment schedule up to the child's age (Encounter), growth (BodyHeight, BodyWeight,
HeadCircumference, following a per-child Z-score on the Dutch 1997 references), BirthWeight and
GestationalAge, Van Wiechen milestones, RVP vaccinations (Immunization), neonatal hearing
screening, vision screening, EpisodeOfCare per organisation, and a TransferConsent (permit, or
an objection for about 5%). Organisations (a thuiszorg 0-4 and a GGD 4-18 per region) and their
professionals are shared: each Bundle creates them conditionally (`ifNoneExist`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ekd.fhir import naming_systems
from ekd.jgz import BDS_ELEMENTS, profile_url, value_list_system

DEFAULT_REFERENCE_DATE = dt.date(2026, 11, 1)

BSN_SYSTEM = naming_systems.BSN
URA_SYSTEM = naming_systems.URA
UZI_PERSON_SYSTEM = naming_systems.UZI_PERSON
URA_OID = "2.16.528.1.1007.3.3"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VITAL_SIGNS = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "vital-signs", "display": "Vital Signs"}]}
RIGHT_EYE, LEFT_EYE = "18944008", "8966001"
RIGHT_EAR, LEFT_EAR = "25577004", "89644007"

AMSTERDAM = ZoneInfo("Europe/Amsterdam")

#: BSNs are 999xxxxxx: the test range of the public examples (999901795, 999900183, ...).
BSN_PREFIX = "999"
def bsn_check_digit(first8: str) -> int | None:
    """The ninth digit that makes `first8` pass the 11-test, or None when no digit does."""
    total = sum((9 - i) * int(d) for i, d in enumerate(first8))
    check = total % 11
    return check if check < 10 else None


def is_valid_bsn(value: str) -> bool:
    """The BSN 11-test: 9 digits, 9*d1 + 8*d2 + ... + 2*d8 - d9 divisible by 11, not all zero."""
    if len(value) != 9 or not value.isdigit() or value == "000000000":
        return False
    total = sum((9 - i) * int(d) for i, d in enumerate(value[:8])) - int(value[8])
    return total % 11 == 0


def _valid_bodies() -> list[str]:
    out = []
    for body in range(100_000):
        first8 = f"{BSN_PREFIX}{body:05d}"
        check = bsn_check_digit(first8)
        if check is not None:
            out.append(f"{first8}{check}")
    return out


_BSNS = _valid_bodies()
#: How many people one run can give a distinct BSN (each child uses three: child and parents).
BSN_CAPACITY = len(_BSNS)
PEOPLE_PER_CHILD = 3
MAX_CHILDREN = BSN_CAPACITY // PEOPLE_PER_CHILD


def bsn_pool(seed: int) -> list[str]:
    """Every test-range BSN once, in an order that depends on the seed."""
    pool = list(_BSNS)
    random.Random(f"ekd-demo-bsn:{seed}").shuffle(pool)
    return pool


# -- names, places, organisations ----------------------------------------------------------------

GIRL_NAMES = ("Emma", "Julia", "Mila", "Sophie", "Tess", "Zoë", "Sara", "Nora", "Yara", "Eva",
              "Liv", "Anna", "Noor", "Lotte", "Saar", "Fenna", "Roos", "Isa", "Lieke", "Fleur",
              "Maud", "Evi", "Femke", "Ilse", "Amira", "Hanna", "Jasmijn", "Lina", "Sanne", "Vera")
BOY_NAMES = ("Noah", "Luuk", "Lucas", "Sem", "Daan", "Levi", "Finn", "Milan", "Bram", "Jesse",
             "Thijs", "Sam", "Ties", "Mees", "Adam", "Gijs", "Jens", "Ruben", "Stijn", "Tijn",
             "Joep", "Hugo", "Olivier", "Mohamed", "Youssef", "Lars", "Pieter", "Koen", "Wout",
             "Jan")
FAMILY_NAMES = (
    ("", "Jansen"), ("de", "Jong"), ("de", "Vries"), ("van den", "Berg"), ("van", "Dijk"),
    ("", "Bakker"), ("", "Janssen"), ("", "Visser"), ("", "Smit"), ("", "Meijer"),
    ("de", "Boer"), ("", "Mulder"), ("de", "Groot"), ("", "Bos"), ("", "Vos"),
    ("", "Peters"), ("", "Hendriks"), ("van", "Leeuwen"), ("", "Dekker"), ("", "Brouwer"),
    ("de", "Wit"), ("", "Dijkstra"), ("", "Smits"), ("de", "Graaf"), ("van der", "Meer"),
    ("van der", "Linden"), ("", "Kok"), ("", "Jacobs"), ("de", "Haan"), ("", "Vermeulen"),
    ("van den", "Heuvel"), ("van der", "Veen"), ("van den", "Broek"), ("de", "Bruijn"),
    ("", "Schouten"), ("", "Willems"), ("van", "Vliet"), ("", "Yilmaz"), ("El", "Amrani"),
    ("", "Kramer"), ("", "Postma"), ("", "Hoekstra"), ("van", "Beek"), ("", "Verhoeven"),
)


@dataclass(frozen=True)
class Region:
    number: int
    name: str
    cities: tuple[tuple[str, str], ...]  # (city, first two postcode digits)


REGIONS = (
    Region(1, "Utrecht", (("Utrecht", "35"), ("Amersfoort", "38"), ("Zeist", "37"))),
    Region(2, "Gelderland-Midden", (("Arnhem", "68"), ("Ede", "67"), ("Wageningen", "67"))),
    Region(3, "Hollands Noorden", (("Alkmaar", "18"), ("Den Helder", "17"), ("Hoorn", "16"))),
    Region(4, "Fryslân", (("Leeuwarden", "89"), ("Sneek", "86"), ("Heerenveen", "84"))),
    Region(5, "Brabant-Zuidoost", (("Eindhoven", "56"), ("Helmond", "57"), ("Geldrop", "56"))),
    Region(6, "Zeeland", (("Middelburg", "43"), ("Goes", "44"), ("Terneuzen", "45"))),
)


@dataclass(frozen=True)
class Professional:
    uzi: str
    family: str
    given: str
    role: str  # "nurse" or "doctor"


@dataclass(frozen=True)
class Org:
    key: str
    ura: str
    name: str
    professionals: tuple[Professional, ...]


def _organisations() -> dict[int, tuple[Org, Org]]:
    """Per region a thuiszorg (0-4) and a GGD (4-18); fixed, so every seed shares them."""
    rng = random.Random("ekd-demo-organisations")
    out: dict[int, tuple[Org, Org]] = {}
    for region in REGIONS:
        pair = []
        for kind, name in ((1, f"Thuiszorg JGZ {region.name}"), (2, f"GGD {region.name}")):
            ura = f"9{region.number:03d}{kind:02d}00"[:8].ljust(8, "0")
            staff = []
            for i, role in enumerate(("nurse", "nurse", "doctor", "nurse")):
                prefix, family = rng.choice(FAMILY_NAMES)
                given = rng.choice(GIRL_NAMES + BOY_NAMES)
                uzi = f"99{region.number:02d}{kind}{i:04d}"
                full_family = f"{prefix} {family}".strip()
                staff.append(Professional(uzi, full_family, given, role))
            pair.append(Org(f"r{region.number}k{kind}", ura, name, tuple(staff)))
        out[region.number] = (pair[0], pair[1])
    return out


ORGANISATIONS = _organisations()

# -- growth references ---------------------------------------------------------------------------

#: Dutch growth references (Fredriks 1997, nl): LMS at selected ages (years), linearly
#: interpolated between them. Heights and head circumference in cm, weight in kg.
LMS: dict[tuple[str, str], tuple[tuple[float, float, float, float], ...]] = {
    ("hgt", "male"): (
        (0, 1, 51.320, 0.0405), (0.0833, 1, 54.736, 0.0399), (0.1667, 1, 58.130, 0.0391),
        (0.25, 1, 61.194, 0.0383), (0.333, 1, 63.807, 0.0377), (0.5, 1, 67.976, 0.0368),
        (0.75, 1, 72.649, 0.0361), (1, 1, 76.549, 0.0359), (1.25, 1, 79.983, 0.0359),
        (1.5, 1, 83.110, 0.0361), (2, 1, 88.850, 0.0366), (3, 1, 98.070, 0.0374),
        (4, 1, 105.820, 0.0381), (5, 1, 113.110, 0.0394), (6, 1, 120.080, 0.0410),
        (8, 1, 132.830, 0.0438), (10, 1, 143.240, 0.0460), (12, 1, 154.000, 0.0484),
        (13, 1, 160.920, 0.0491), (14, 1, 168.180, 0.0480), (15, 1, 174.390, 0.0452),
        (16, 1, 178.740, 0.0424), (18, 1, 182.550, 0.0395)),
    ("hgt", "female"): (
        (0, 1, 50.900, 0.0376), (0.0833, 1, 53.865, 0.0372), (0.1667, 1, 56.818, 0.0367),
        (0.25, 1, 59.623, 0.0361), (0.333, 1, 62.187, 0.0356), (0.5, 1, 66.446, 0.0349),
        (0.75, 1, 71.129, 0.0345), (1, 1, 75.142, 0.0346), (1.25, 1, 78.831, 0.0347),
        (1.5, 1, 82.050, 0.0351), (2, 1, 87.490, 0.0360), (3, 1, 96.650, 0.0383),
        (4, 1, 104.450, 0.0397), (5, 1, 111.780, 0.0408), (6, 1, 118.720, 0.0419),
        (8, 1, 131.490, 0.0437), (10, 1, 143.310, 0.0449), (12, 1, 155.270, 0.0440),
        (13, 1, 160.840, 0.0422), (14, 1, 164.730, 0.0406), (15, 1, 167.120, 0.0396),
        (16, 1, 168.560, 0.0389), (18, 1, 169.750, 0.0383)),
    ("wgt", "male"): (
        (0, 0.629, 3.550, 0.1150), (0.0833, 0.576, 4.399, 0.1150), (0.1667, 0.526, 5.243, 0.1140),
        (0.25, 0.479, 6.023, 0.1140), (0.333, 0.434, 6.723, 0.1130), (0.5, 0.356, 7.900, 0.1130),
        (0.75, 0.265, 9.224, 0.1120), (1, 0.195, 10.242, 0.1120), (1.25, 0.139, 11.067, 0.1130),
        (1.5, 0.092, 11.780, 0.1130), (2, 0.014, 13.020, 0.1140), (3, -0.116, 15.190, 0.1170),
        (4, -0.239, 17.420, 0.1220), (5, -0.359, 19.820, 0.1270), (6, -0.469, 22.370, 0.1340),
        (8, -0.627, 27.860, 0.1480), (10, -0.651, 33.790, 0.1620), (12, -0.464, 41.480, 0.1750),
        (13, -0.302, 46.770, 0.1790), (14, -0.180, 52.870, 0.1760),
        (15, -0.138, 58.820, 0.1670), (16, -0.148, 63.770, 0.1560),
        (18, -0.199, 70.060, 0.1400)),
    ("wgt", "female"): (
        (0, 0.369, 3.340, 0.1150), (0.0833, 0.325, 4.092, 0.1150), (0.1667, 0.283, 4.849, 0.1133),
        (0.25, 0.242, 5.567, 0.1125), (0.333, 0.203, 6.229, 0.1120), (0.5, 0.136, 7.340, 0.1100),
        (0.75, 0.060, 8.586, 0.1100), (1, 0.001, 9.562, 0.1100), (1.25, -0.047, 10.365, 0.1101),
        (1.5, -0.087, 11.060, 0.1110), (2, -0.158, 12.320, 0.1130),
        (3, -0.281, 14.680, 0.1180), (4, -0.390, 16.940, 0.1240), (5, -0.488, 19.210, 0.1320),
        (6, -0.579, 21.770, 0.1410), (8, -0.698, 27.800, 0.1610), (10, -0.648, 34.520, 0.1810),
        (12, -0.432, 43.210, 0.1900), (13, -0.366, 48.320, 0.1780),
        (14, -0.420, 52.700, 0.1620), (15, -0.552, 56.000, 0.1500),
        (16, -0.700, 58.370, 0.1430), (18, -0.923, 61.270, 0.1360)),
    ("hdc", "male"): (
        (0, 1, 35.670, 0.0375), (0.0833, 1, 37.609, 0.0364), (0.1667, 1, 39.449, 0.0347),
        (0.25, 1, 40.935, 0.0331), (0.333, 1, 42.185, 0.0318), (0.5, 1, 44.134, 0.0306),
        (0.75, 1, 45.987, 0.0308), (1, 1, 47.182, 0.0316), (1.25, 1, 47.932, 0.0324),
        (1.5, 1, 48.454, 0.0328), (2, 1, 49.279, 0.0331)),
    ("hdc", "female"): (
        (0, 1, 35.040, 0.0359), (0.0833, 1, 36.688, 0.0351), (0.1667, 1, 38.366, 0.0338),
        (0.25, 1, 39.822, 0.0330), (0.333, 1, 41.043, 0.0321), (0.5, 1, 42.886, 0.0310),
        (0.75, 1, 44.646, 0.0306), (1, 1, 45.865, 0.0308), (1.25, 1, 46.702, 0.0311),
        (1.5, 1, 47.291, 0.0313), (2, 1, 48.075, 0.0318)),
}


def lms_at(measure: str, sex: str, age: float) -> tuple[float, float, float]:
    """L, M, S of `measure` ("hgt", "wgt", "hdc") at `age` years, clamped to the table."""
    table = LMS[(measure, sex)]
    if age <= table[0][0]:
        return table[0][1:]
    for (x0, l0, m0, s0), (x1, l1, m1, s1) in itertools.pairwise(table):
        if age <= x1:
            t = (age - x0) / (x1 - x0)
            return l0 + t * (l1 - l0), m0 + t * (m1 - m0), s0 + t * (s1 - s0)
    return table[-1][1:]


def value_at_z(measure: str, sex: str, age: float, z: float) -> float:
    """The measurement with Z-score `z` at `age` (inverse of the LMS transformation)."""
    lam, mu, sigma = lms_at(measure, sex, age)
    if abs(lam) < 0.01:
        return mu * math.exp(sigma * z)
    return mu * (1 + lam * sigma * z) ** (1 / lam)


def z_score(measure: str, sex: str, age: float, y: float) -> float:
    """The Z-score (SDS) of measurement `y` at `age`."""
    lam, mu, sigma = lms_at(measure, sex, age)
    if abs(lam) < 0.01:
        return math.log(y / mu) / sigma
    return ((y / mu) ** lam - 1) / (lam * sigma)


# -- the schedule --------------------------------------------------------------------------------

WEEK = 7
MONTH = 30.4375
YEAR = 365.25


@dataclass(frozen=True)
class Visit:
    """One contact moment of the national schedule."""

    age_days: float
    soort: str  # 40.308
    vw_months: tuple[int, ...] = ()  # Van Wiechen age columns examined here
    spread: float = 3  # +/- days around the nominal age


#: The national JGZ contact-moment schedule (landelijk contactmomentenschema), 0-18 years.
SCHEDULE: tuple[Visit, ...] = (
    Visit(5, "01", spread=1),
    Visit(2 * WEEK, "37"),
    Visit(4 * WEEK, "37", (1,)),
    Visit(8 * WEEK, "37", (2,)),
    Visit(3 * MONTH, "37", (3,)),
    Visit(4 * MONTH, "37"),
    Visit(6 * MONTH, "37", (6,), spread=7),
    Visit(7.5 * MONTH, "38", spread=7),
    Visit(9 * MONTH, "38", (9,), spread=7),
    Visit(11 * MONTH, "38", (12,), spread=7),
    Visit(14 * MONTH, "39", (15,), spread=10),
    Visit(18 * MONTH, "39", (18,), spread=10),
    Visit(2 * YEAR, "39", (24,), spread=14),
    Visit(3 * YEAR, "39", (30, 36), spread=14),
    Visit(3.75 * YEAR, "39", (45,), spread=14),
    Visit(5.5 * YEAR, "40", (54,), spread=60),
    Visit(10 * YEAR, "40", spread=90),
    Visit(13.5 * YEAR, "41", spread=90),
    Visit(15.5 * YEAR, "41", spread=90),
)

#: Van Wiechen column codes (value list 40.422) that exist, by age in months.
VW_COLUMN = {1: "01", 2: "02", 3: "03", 6: "05", 15: "09", 24: "13"}

#: Van Wiechen milestones by age (months): BDS element numbers; "M" items are answered from
#: W0438 (+/-/M), others from W0175 (+/-). Items split right/left have one element per side.
VW_ITEMS: dict[int, tuple[str, ...]] = {
    1: ("879", "881", "883", "884", "885", "927", "955", "956", "958", "959", "961", "964"),
    2: ("881", "883", "886", "928", "955", "956", "958", "959", "962", "966"),
    3: ("884", "885", "886", "887", "888", "889", "930", "962", "968"),
    6: ("890", "891", "892", "893", "931", "970", "971", "975"),
    9: ("891", "894", "896", "897", "898", "932", "933", "973", "977", "978", "980"),
    12: ("897", "898", "900", "905", "934", "935", "978", "1278", "982", "984"),
    15: ("902", "903", "905", "909", "936", "937", "986", "996"),
    18: ("906", "907", "909", "912", "913", "938", "939", "986", "991"),
    24: ("910", "913", "916", "940", "941", "986", "989"),
    30: ("914", "917", "920", "943", "945", "993", "994", "999"),
    36: ("918", "921", "922", "947", "948", "998", "999"),
    45: ("923", "926", "949", "950", "951", "1001", "1002"),
    54: ("953", "954", "1001", "1002"),
}
VW_M_ITEMS = frozenset((
    "886", "892", "893", "900", "905", "909", "913", "921", "927", "928", "930", "931", "932",
    "933", "934", "935", "936", "937", "938", "939", "940", "941", "943", "947", "948", "949",
    "950", "953", "954", "973", "980", "982", "984", "998", "1278"))


@dataclass(frozen=True)
class Vaccination:
    age_days: float
    code: str  # 40.76
    display: str
    spread: float = 7


#: RVP vaccinations with a code in value list 40.76 (MenC/MenACWY, DTP at 9 years, hepatitis B
#: at birth and rotavirus have no code there and are left out).
RVP: tuple[Vaccination, ...] = (
    Vaccination(3 * MONTH, "11", "DKTP-Hib-Hepatitis B"),
    Vaccination(3 * MONTH, "08", "Pneu"),
    Vaccination(5 * MONTH, "11", "DKTP-Hib-Hepatitis B"),
    Vaccination(5 * MONTH, "08", "Pneu"),
    Vaccination(11 * MONTH, "11", "DKTP-Hib-Hepatitis B"),
    Vaccination(11 * MONTH, "08", "Pneu"),
    Vaccination(14 * MONTH, "04", "BMR"),
    Vaccination(4 * YEAR, "01", "DKTP", spread=30),
    Vaccination(9 * YEAR, "04", "BMR", spread=60),
    Vaccination(10 * YEAR, "09", "HPV", spread=60),
    Vaccination(10.5 * YEAR, "09", "HPV", spread=60),
)
#: RIVM vaccine -> SNOMED CT where terminology/ConceptMap-rivm-vaccine-to-snomed has a match.
VACCINE_SNOMED = {"01": "871878002"}

SOORT_DISPLAY = {
    "01": "Contact 4-7 dagen", "35": "Neonatale gehoorscreening",
    "37": "Contact week 2 t/m 6 maanden", "38": "Contact 7-12 maanden",
    "39": "Contact 1 tot 4 jaar", "40": "Contact 4 tot 12 jaar", "41": "Contact 12 tot 18 jaar",
}
VORM_DISPLAY = {"03": "Face-to-face, anders dan huisbezoek of inloopspreekuur",
                "06": "Huisbezoek", "09": "Telefonisch", "01": "Beeldbellen"}
STATUS_DISPLAY = {"01": "Gerealiseerd", "02": "Niet gerealiseerd zonder bericht",
                  "03": "Niet gerealiseerd met bericht", "07": "Afgezegd door JGZ"}
VISUS = {"07": "0,4", "08": "0,5", "10": "0,8", "11": "1,0"}

# -- building blocks -----------------------------------------------------------------------------


def _cc(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return {"coding": [coding]}


def _meta(profile_id: str) -> dict:
    return {"profile": [profile_url(profile_id)]}


def _ref(full_url: str) -> dict:
    return {"reference": full_url}


@dataclass
class _Child:
    """Working state while one child's Bundle is built."""

    rng: random.Random
    reference_date: dt.date
    entries: list[dict] = field(default_factory=list)
    counter: int = 0
    serial: int = 0
    prefix: str = ""

    def uuid(self) -> str:
        """A version-4-shaped UUID: a random per-child prefix and a serial number (fast)."""
        if not self.prefix:
            self.prefix = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))[:24]
        self.serial += 1
        return f"urn:uuid:{self.prefix}{self.serial:012x}"

    def add(self, resource: dict, full_url: str | None = None,
            if_none_exist: str | None = None) -> str:
        full_url = full_url or self.uuid()
        request = {"method": "POST", "url": resource["resourceType"]}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url


def _moment(rng: random.Random, day: dt.date) -> str:
    """A time during office hours on `day`, in Dutch local time with its UTC offset."""
    minute = rng.randrange(8 * 60 + 30, 16 * 60 + 30, 5)
    moment = dt.datetime(day.year, day.month, day.day, minute // 60, minute % 60,
                         tzinfo=AMSTERDAM)
    return moment.isoformat()


def _org_resources(child: _Child, org: Org) -> tuple[str, dict[str, str]]:
    """Conditional creates for `org` and its professionals: (org fullUrl, uzi -> fullUrl)."""
    org_url = child.add({
        "resourceType": "Organization", "meta": _meta("jgz-Organization"),
        "identifier": [{"system": URA_SYSTEM, "value": org.ura}],
        "active": True, "name": org.name,
    }, if_none_exist=f"identifier={URA_SYSTEM}|{org.ura}")
    staff: dict[str, str] = {}
    for prof in org.professionals:
        staff[prof.uzi] = child.add({
            "resourceType": "Practitioner", "meta": _meta("jgz-Practitioner"),
            "identifier": [{"system": UZI_PERSON_SYSTEM, "value": prof.uzi}],
            "active": True,
            "name": [{"family": prof.family, "given": [prof.given],
                      "text": f"{prof.given} {prof.family}"}],
        }, if_none_exist=f"identifier={UZI_PERSON_SYSTEM}|{prof.uzi}")
    return org_url, staff


def _quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _observation(profile_id: str, coding: list[dict], patient: str, encounter: str | None,
                 when: str, performer: str | None, *, vital: bool = False) -> dict:
    obs: dict = {"resourceType": "Observation", "meta": _meta(profile_id), "status": "final"}
    if vital:
        obs["category"] = [VITAL_SIGNS]
    obs["code"] = {"coding": coding}
    obs["subject"] = _ref(patient)
    if encounter:
        obs["encounter"] = _ref(encounter)
    obs["effectiveDateTime"] = when
    if performer:
        obs["performer"] = [_ref(performer)]
    return obs


def _bds(element: str) -> dict:
    return {"system": BDS_ELEMENTS, "code": element}


# -- one child -----------------------------------------------------------------------------------


def child_bundle(index: int, seed: int, reference_date: dt.date = DEFAULT_REFERENCE_DATE,
                 bsns: list[str] | None = None) -> dict:
    """The transaction Bundle of child number `index` (0-based) of the run with `seed`."""
    if bsns is None:
        bsns = bsn_pool(seed)
    if PEOPLE_PER_CHILD * index + 2 >= len(bsns):
        raise ValueError(f"at most {MAX_CHILDREN} children per run (test-range BSNs run out)")
    rng = random.Random(f"ekd-demo:{seed}:{index}")
    child = _Child(rng, reference_date)
    sex = rng.choice(("male", "female"))
    age_days = rng.randrange(0, int(18 * YEAR))
    birth = reference_date - dt.timedelta(days=age_days)
    region = rng.choice(REGIONS)
    city, pc2 = rng.choice(region.cities)
    letters = "ABCDEGHJKLMNPRTVWXZ"
    postcode = f"{pc2}{rng.randrange(10, 100)}{rng.choice(letters)}{rng.choice(letters)}"
    prefix, family = rng.choice(FAMILY_NAMES)
    given = rng.choice(GIRL_NAMES if sex == "female" else BOY_NAMES)
    name = {"use": "official", "family": f"{prefix} {family}".strip(), "given": [given]}

    thuiszorg, ggd = ORGANISATIONS[region.number]
    tz_url, tz_staff = _org_resources(child, thuiszorg)
    ggd_url = ggd_staff = None
    if age_days >= 4 * YEAR:
        ggd_url, ggd_staff = _org_resources(child, ggd)

    patient_url = child.add({
        "resourceType": "Patient", "meta": _meta("jgz-Patient"),
        "identifier": [{"system": BSN_SYSTEM, "value": bsns[PEOPLE_PER_CHILD * index]}],
        "active": True, "name": [name], "gender": sex, "birthDate": birth.isoformat(),
        "address": [{"use": "home", "city": city, "postalCode": postcode, "country": "NL"}],
    })

    # parents: mother and (mostly) father
    parents = [("MTH", "mother", "female")]
    if rng.random() < 0.9:
        parents.append(("FTH", "father", "male"))
    for offset, (role, display, psex) in enumerate(parents, start=1):
        parent_age = rng.randrange(int(22 * YEAR), int(41 * YEAR))
        pprefix, pfamily = (prefix, family) if role == "FTH" or rng.random() < 0.3 \
            else rng.choice(FAMILY_NAMES)
        pgiven = rng.choice(GIRL_NAMES if psex == "female" else BOY_NAMES)
        related: dict = {"resourceType": "RelatedPerson", "meta": _meta("jgz-RelatedPerson")}
        if rng.random() < 0.95:
            related["identifier"] = [
                {"system": BSN_SYSTEM, "value": bsns[PEOPLE_PER_CHILD * index + offset]}]
        related.update({
            "active": True, "patient": _ref(patient_url),
            "relationship": [_cc(ROLE_CODE, role, display)],
            "name": [{"family": f"{pprefix} {pfamily}".strip(), "given": [pgiven]}],
            "gender": psex,
            "birthDate": (birth - dt.timedelta(days=parent_age)).isoformat(),
            "address": [{"use": "home", "city": city, "postalCode": postcode, "country": "NL"}],
        })
        child.add(related)

    # episodes of care: thuiszorg from birth until 4, GGD from 4
    episodes: list[tuple[float, float | None, str, str]] = []  # (start, end, org, episode)
    episode_system = f"urn:oid:{URA_OID}.{thuiszorg.ura}.1"
    tz_end = birth + dt.timedelta(days=int(4 * YEAR))
    tz_episode = child.add({
        "resourceType": "EpisodeOfCare", "meta": _meta("jgz-EpisodeOfCare"),
        "identifier": [{"system": episode_system, "value": f"D-{rng.randrange(10**7):07d}"}],
        "status": "finished" if ggd_url else "active",
        "type": [_cc(value_list_system(376), "01", "Regulier")],
        "patient": _ref(patient_url), "managingOrganization": _ref(tz_url),
        "period": {"start": (birth + dt.timedelta(days=min(age_days, 5))).isoformat(),
                   **({"end": tz_end.isoformat()} if ggd_url else {})},
    })
    episodes.append((0, 4 * YEAR, tz_url, tz_episode))
    if ggd_url:
        ggd_episode = child.add({
            "resourceType": "EpisodeOfCare", "meta": _meta("jgz-EpisodeOfCare"),
            "identifier": [{"system": f"urn:oid:{URA_OID}.{ggd.ura}.1",
                            "value": f"D-{rng.randrange(10**7):07d}"}],
            "status": "active",
            "type": [_cc(value_list_system(376), "01", "Regulier")],
            "patient": _ref(patient_url), "managingOrganization": _ref(ggd_url),
            "period": {"start": tz_end.isoformat()},
        })
        episodes.append((4 * YEAR, None, ggd_url, ggd_episode))

    def provider(age: float) -> tuple[str, str, dict[str, str], Org]:
        if age >= 4 * YEAR and ggd_url and ggd_staff is not None:
            return ggd_url, episodes[1][3], ggd_staff, ggd
        return tz_url, tz_episode, tz_staff, thuiszorg

    def encounter(day: dt.date, soort: str, vorm: str, status: str = "01") -> tuple[str, str]:
        age = (day - birth).days
        org_url, episode_url, staff, org = provider(age)
        prof = rng.choice(org.professionals)
        when = _moment(rng, day)
        child.counter += 1
        resource = {
            "resourceType": "Encounter", "meta": _meta("jgz-Encounter"),
            "identifier": [{"system": f"urn:oid:{URA_OID}.{org.ura}.2",
                            "value": f"{rng.getrandbits(40):010x}-{child.counter}"}],
            "status": "finished" if status == "01" else "cancelled",
            "class": {"system": ACT_CODE, "code": "HH" if vorm == "06" else "AMB"},
            "type": [_cc(value_list_system(308), soort, SOORT_DISPLAY[soort]),
                     _cc(value_list_system(424), vorm, VORM_DISPLAY[vorm]),
                     _cc(value_list_system(434), status, STATUS_DISPLAY[status])],
            "subject": _ref(patient_url),
            "episodeOfCare": [_ref(episode_url)],
            "participant": [{"individual": _ref(staff[prof.uzi])}],
            "period": {"start": when},
            "serviceProvider": _ref(org_url),
        }
        if status == "01":  # a held consult has ended: without an end, date search sees it
            # as still going on (http://hl7.org/fhir/R4/search.html#date, open periods)
            minutes = 45 if vorm == "06" else 20
            end = dt.datetime.fromisoformat(when) + dt.timedelta(minutes=minutes)
            resource["period"]["end"] = end.isoformat()
        return child.add(resource), when

    # pregnancy and birth
    preterm = rng.random() < 0.07
    ga_days = rng.randrange(224, 259) if preterm else rng.randrange(259, 295)
    z_hgt = max(-2.8, min(2.8, rng.gauss(0, 1)))
    z_wgt = max(-2.8, min(2.8, 0.6 * z_hgt + 0.8 * rng.gauss(0, 1)))
    z_hdc = max(-2.8, min(2.8, 0.5 * z_hgt + 0.85 * rng.gauss(0, 1)))
    birth_weight = value_at_z("wgt", sex, 0, z_wgt) * 1000 + (ga_days - 280) * 22
    birth_weight = int(round(max(1300, min(5200, birth_weight)) / 5) * 5)
    first_staff = tz_staff[thuiszorg.professionals[0].uzi]

    # contact moments
    scheduled = []
    for visit in SCHEDULE:
        jitter = rng.uniform(-visit.spread, visit.spread)
        day = birth + dt.timedelta(days=max(3, round(visit.age_days + jitter)))
        if day <= reference_date:
            scheduled.append((visit, day))
    birth_record_day = birth + dt.timedelta(days=min(age_days, 5))
    birth_when = birth_record_day.isoformat()

    birth_enc = None
    drift_rate = rng.uniform(-1, 1)  # a small per-child drift over the years
    for visit, day in scheduled:
        age = (day - birth).days
        age_y = age / YEAR
        roll = rng.random()
        status = "01" if roll < 0.95 else rng.choice(("02", "03", "07"))
        vorm = "06" if visit.soort == "01" else ("09" if roll > 0.93 and status == "01" and
                                                 age_y > 4 else "03")
        enc_url, when = encounter(day, visit.soort, vorm, status)
        if visit.soort == "01" and status == "01":
            birth_enc = enc_url
        if status != "01" or vorm == "09":
            continue
        _, _, staff, org = provider(age)
        performer = staff[rng.choice(org.professionals).uzi]
        drift = drift_rate * min(age_y, 12) / 40
        # growth (preterm babies start lower and catch up in the first two years)
        catch_up = -1.2 * max(0.0, 1 - age_y / 2) if preterm else 0.0
        zw = z_wgt + drift + catch_up + rng.gauss(0, 0.12)
        weight_kg = value_at_z("wgt", sex, age_y, zw)
        if age_y < 2:
            weight = _quantity(int(round(weight_kg * 1000 / 5) * 5), "g")
        else:
            weight = _quantity(round(weight_kg, 1), "kg")
        child.add({**_observation("jgz-BodyWeight", [
            {"system": LOINC, "code": "29463-7", "display": "Body weight"}, _bds("245")],
            patient_url, enc_url, when, performer, vital=True), "valueQuantity": weight})
        if visit.soort != "01":
            zh = z_hgt + drift + catch_up + rng.gauss(0, 0.1)
            height = round(value_at_z("hgt", sex, age_y, zh), 1)
            obs = _observation("jgz-BodyHeight", [
                {"system": LOINC, "code": "8302-2", "display": "Body height"}, _bds("235")],
                patient_url, enc_url, when, performer, vital=True)
            obs["valueQuantity"] = _quantity(height, "cm")
            child.add(obs)
        if age_y < 1.5:
            zc = z_hdc + catch_up + rng.gauss(0, 0.15)
            child.add({**_observation("jgz-HeadCircumference", [
                {"system": LOINC, "code": "9843-4",
                 "display": "Head Occipital-frontal circumference"}, _bds("252")],
                patient_url, enc_url, when, performer, vital=True),
                "valueQuantity": _quantity(round(value_at_z("hdc", sex, age_y, zc), 1), "cm")})
        # Van Wiechen
        for months in visit.vw_months:
            column = VW_COLUMN.get(months)
            for element in VW_ITEMS[months]:
                r = rng.random()
                if element in VW_M_ITEMS:
                    system, answer = value_list_system(343), \
                        ("1", "+") if r < 0.9 else (("2", "-") if r < 0.96 else ("3", "M"))
                else:
                    system, answer = value_list_system(153), \
                        ("1", "+") if r < 0.91 else ("2", "-")
                obs = _observation("jgz-VanWiechen", [_bds(element)], patient_url, enc_url,
                                   when, performer)
                obs["valueCodeableConcept"] = _cc(system, answer[0], answer[1])
                if column:
                    obs["component"] = [{"code": {"coding": [_bds("1531")]},
                                         "valueCodeableConcept": _cc(value_list_system(422),
                                                                     column)}]
                child.add(obs)
        # vision: red fundus reflex at 4 weeks, visual acuity at 3y9m and 5-6 years
        if visit.vw_months == (1,):
            for element, eye in (("840", RIGHT_EYE), ("841", LEFT_EYE)):
                ok = rng.random() < 0.995
                obs = _observation("jgz-VisionScreening", [_bds(element)], patient_url,
                                   enc_url, when, performer)
                obs["valueCodeableConcept"] = _cc(value_list_system(153), *(
                    ("1", "+") if ok else ("2", "-")))
                obs["bodySite"] = _cc(SNOMED, eye)
                child.add(obs)
        if visit.vw_months in ((45,), (54,)):
            chart = ("01", "LEA 4 meter") if visit.vw_months == (45,) else ("02", "LEA 5 meter")
            obs = _observation("jgz-VisionScreening", [_bds("1590")], patient_url, enc_url,
                               when, performer)
            obs["valueCodeableConcept"] = _cc(value_list_system(427), *chart)
            child.add(obs)
            choices = ("07", "08", "10", "11") if visit.vw_months == (45,) else ("08", "10", "11")
            weights = (1, 3, 4, 2) if visit.vw_months == (45,) else (1, 3, 6)
            results = []
            for element, eye in (("1591", RIGHT_EYE), ("1592", LEFT_EYE)):
                code = rng.choices(choices, weights)[0]
                results.append(code)
                obs = _observation("jgz-VisionScreening", [_bds(element)], patient_url,
                                   enc_url, when, performer)
                obs["valueCodeableConcept"] = _cc(value_list_system(428), code, VISUS[code])
                obs["bodySite"] = _cc(SNOMED, eye)
                child.add(obs)
            if all(code >= "08" for code in results):
                obs = _observation("jgz-VisionScreening", [_bds("408")], patient_url, enc_url,
                                   when, performer)
                obs["valueCodeableConcept"] = _cc(value_list_system(333), "1", "Voldoende")
                child.add(obs)

    # birth weight and gestational age, recorded at the first contact
    child.add({**_observation("jgz-BirthWeight", [
        {"system": LOINC, "code": "8339-4", "display": "Birth weight Measured"}, _bds("110")],
        patient_url, birth_enc, birth_when, first_staff),
        "valueQuantity": _quantity(birth_weight, "g")})
    child.add({**_observation("jgz-GestationalAge", [_bds("82")], patient_url, birth_enc,
                              birth_when, first_staff),
               "valueQuantity": _quantity(ga_days, "d")})

    # neonatal hearing screening (OAE) in the first week, repeated after an insufficient result
    rounds = (("439", "441", 5), ("442", "444", 12), ("445", "447", 21))
    for right, left, day_nr in rounds:
        day = birth + dt.timedelta(days=day_nr + rng.randrange(0, 3))
        if day > reference_date:
            break
        enc_url, when = encounter(day, "35", "06" if day_nr == 5 else "03")
        performer = tz_staff[thuiszorg.professionals[-1].uzi]
        passed = True
        for element, ear in ((right, RIGHT_EAR), (left, LEFT_EAR)):
            ok = rng.random() < 0.97
            passed = passed and ok
            obs = _observation("jgz-HearingScreening", [_bds(element)], patient_url, enc_url,
                               when, performer)
            obs["valueCodeableConcept"] = _cc(value_list_system(325), *(
                ("1", "Voldoende") if ok else ("2", "Onvoldoende")))
            obs["bodySite"] = _cc(SNOMED, ear)
            if right != "445":
                obs["method"] = _cc(value_list_system(386), "01", "OAE")
            child.add(obs)
        if passed:
            break

    # RVP vaccinations
    refuses = rng.random() < 0.03
    for vac in RVP:
        day = birth + dt.timedelta(days=round(vac.age_days + rng.uniform(0, vac.spread)))
        if day > reference_date:
            break
        coding = [{"system": value_list_system(76), "code": vac.code, "display": vac.display}]
        if vac.code in VACCINE_SNOMED:
            coding.append({"system": SNOMED, "code": VACCINE_SNOMED[vac.code]})
        imm: dict = {"resourceType": "Immunization", "meta": _meta("jgz-Immunization")}
        if refuses:
            imm["status"] = "not-done"
            imm["statusReason"] = _cc(value_list_system(394), "2", "Afzien van deelname")
        else:
            imm["status"] = "completed"
        imm.update({"vaccineCode": {"coding": coding}, "patient": _ref(patient_url),
                    "occurrenceDateTime": day.isoformat(), "primarySource": True})
        if not refuses:
            imm["lotNumber"] = f"{rng.choice('ABCDHKLMPRSTX')}{rng.randrange(10000, 99999)}"
            org_url = provider((day - birth).days)[0]
            imm["performer"] = [{"actor": _ref(org_url)}]
        imm["reasonCode"] = [_cc(value_list_system(258), "01", "Rijksvaccinatieprogramma")]
        child.add(imm)

    # transfer consent: asked after birth; most permit, about 5% object
    roll = rng.random()
    if roll < 0.95:
        objection = roll < 0.05
        category, kind, rule = ("1395", "deny", "OPTOUT") if objection \
            else ("1163", "permit", "OPTIN")
        source = ("01", "Cliënt/Jeugdige") if age_days >= 16 * YEAR else \
            ("03", "Gezaghebbende (Geen toestemming van andere gezaghebbende vereist)")
        asked = birth + dt.timedelta(days=min(age_days, 5 + rng.randrange(0, 30)))
        child.add({
            "resourceType": "Consent", "meta": _meta("jgz-TransferConsent"),
            "extension": [{"url": profile_url("jgz-consent-source"),
                           "valueCodeableConcept": _cc(value_list_system(435), *source)}],
            "status": "active",
            "scope": _cc("http://terminology.hl7.org/CodeSystem/consentscope",
                         "patient-privacy"),
            "category": [_cc(BDS_ELEMENTS, category)],
            "patient": _ref(patient_url),
            "dateTime": min(asked, reference_date).isoformat(),
            "organization": [_ref(tz_url)],
            "policyRule": _cc(ACT_CODE, rule),
            "provision": {"type": kind},
        })

    return {"resourceType": "Bundle", "type": "transaction", "entry": child.entries}


def shared_bundle() -> dict:
    """A transaction with every organisation and professional (conditional creates).

    Loading it first means concurrent child Bundles only ever find them, never race to create.
    """
    child = _Child(random.Random("ekd-demo-shared"), DEFAULT_REFERENCE_DATE)
    for pair in ORGANISATIONS.values():
        for org in pair:
            _org_resources(child, org)
    return {"resourceType": "Bundle", "type": "transaction", "entry": child.entries}


def generate(children: int, seed: int = 1,
             reference_date: dt.date = DEFAULT_REFERENCE_DATE) -> Iterator[dict]:
    """`children` transaction Bundles, one per child, deterministic for (seed, reference_date)."""
    if children > MAX_CHILDREN:
        raise ValueError(f"at most {MAX_CHILDREN} children per run (test-range BSNs run out)")
    bsns = bsn_pool(seed)
    for index in range(children):
        yield child_bundle(index, seed, reference_date, bsns)
