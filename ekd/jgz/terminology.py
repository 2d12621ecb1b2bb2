"""Generate the JGZ terminology (`terminology/`) from the shared BDS JGZ data files.

The resources are built only from facts in the data files beside `DOMAIN.md`:

- `bds-4.2.0-rubrics-groups-elements.tsv`: every rubric, group and element of BDS JGZ 4.2.0
  (sections headed `## <OID> <name>`; rows `number<TAB>name<TAB>code system OID`);
- `value-lists-seen-in-hl7v3-examples.json`: value-list OID -> code -> display, as seen in real
  HL7v3 transfer messages (so usually only part of each list).

A value list is `complete` only when its full content is known (stated in `DOMAIN.md` and all
codes seen in the messages); otherwise it is a `fragment` and says so. No code is invented.

Run: `python -m ekd.jgz.terminology [shared-data-dir] [output-dir]`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ekd.jgz import BDS_ELEMENTS, BDS_OID, BDS_RUBRICS, CANONICAL, value_list_system, value_set_url

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared/jgz"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "terminology"

TSV = "bds-4.2.0-rubrics-groups-elements.tsv"
VALUE_LISTS = "value-lists-seen-in-hl7v3-examples.json"
BDS_VERSION = "4.2.0"
BDS_GROUPS = value_list_system(393)
SNOMED = "http://snomed.info/sct"
CONCEPTMAP_VACCINES = f"{CANONICAL}/ConceptMap/rivm-vaccine-to-snomed"


@dataclass(frozen=True)
class ValueList:
    """One BDS value list (waardelijst `…40.<n>`) that a profile binds to."""

    n: int
    name: str
    title: str
    used_by: str
    complete: bool = False
    note: str = ""


#: The value lists the JGZ profiles bind to, with the elements that use them (from
#: `elements-seen-in-hl7v3-examples.txt`, the HL7v3 examples and DOMAIN.md).
VALUE_LISTS_BOUND: tuple[ValueList, ...] = (
    ValueList(308, "BdsSoortContactmoment", "Soort contactmoment",
              "element 494 Soort contactmoment (HL7v3: encounter/code)"),
    ValueList(424, "BdsVormActiviteit", "Vorm activiteit", "element 1577 Vorm activiteit"),
    ValueList(434, "BdsStatusActiviteit", "Status activiteit", "element 1605 Status activiteit",
              complete=True,
              note="DOMAIN.md lists the codes 01 to 07 without omission and all seven are seen "
                   "in the transfer messages, so the list is taken as complete."),
    ValueList(153, "BdsW0175PlusMin", "W0175 +/-",
              "Van Wiechen milestones and other +/- findings (e.g. 840/841 rode fundusreflex, "
              "1203-1214 testtonen)", complete=True,
              note="W0175 has exactly the answers 1 (+) and 2 (-) (DOMAIN.md)."),
    ValueList(343, "BdsW0438PlusMinM", "W0438 +/-/M",
              "Van Wiechen milestones marked (M) (e.g. 886, 900, 927-950)", complete=True,
              note="W0438 has exactly the answers 1 (+), 2 (-) and 3 (M) (DOMAIN.md)."),
    ValueList(76, "BdsSoortVaccinatie", "RIVM Soort vaccinatie",
              "element 461 Soort vaccinatie (HL7v3: substanceAdministration, administrable "
              "medicine code; codeSystemName 'RIVM Soort Vaccinatie')"),
    ValueList(325, "BdsVoldoendeOnvoldoende", "Voldoende/onvoldoende",
              "hearing screening results 439/441, 442/444, 445/447, 865, 1239; also 869, 1618",
              complete=True,
              note="The list has exactly the answers 1 (voldoende) and 2 (onvoldoende) "
                   "(DOMAIN.md)."),
    ValueList(422, "BdsKolomVanWiechen", "Kolom Van Wiechen onderzoek",
              "element 1531 Kolom Van Wiechen onderzoek (the age column)"),
    ValueList(394, "BdsBezwaarVaccinatie", "Bezwaar (vaccinatie)",
              "element 683 Bezwaar (vaccination objection)", complete=True,
              note="The list has exactly 1 (medisch bezwaar) and 2 (afzien van deelname) "
                   "(DOMAIN.md)."),
    ValueList(376, "BdsStatusInZorg", "Status in zorg",
              "element 1197 Status in zorg (HL7v3: careStatus/reasonCode)",
              note="DOMAIN.md also names 'geen gebruik JGZ op eigen verzoek' and 'alleen "
                   "vaccinaties', whose codes are not in the data files and are left out."),
    ValueList(82, "BdsRedenZorgbeeindiging", "Reden zorgbeëindiging",
              "element 487 Zorgbeëindiging (HL7v3: careStatus/reasonCode)"),
    ValueList(435, "BdsBronToestemming", "Bron toestemming",
              "element 1535 Bron toestemming gegevensuitwisseling RVP (HL7v3: consentEvent "
              "author/responsibleParty/code)",
              note="Seen only as the source of consent 1533 (RVP); the data files do not show "
                   "which list the sources 1164 and 1396 (consent/objection to transfer) use."),
    ValueList(258, "BdsRedenVanEnting", "Reden van enting", "element 686 Reden van enting"),
    ValueList(386, "BdsScreeningsinstrumentNgs", "Screeningsinstrument NGS",
              "element 1331 Screeningsinstrument NGS"),
    ValueList(427, "BdsSoortVisuskaart", "Soort visuskaart", "element 1590 Soort visuskaart"),
    ValueList(428, "BdsUitslagVisus", "Uitslag visus",
              "elements 1591/1592 Uitslag visus rechts/links"),
    ValueList(333, "BdsConclusieVisusbepaling", "Conclusie visusbepaling",
              "element 408 Conclusie visusbepaling"),
    ValueList(443, "BdsGroeidiagram", "Welk groeidiagram wordt gebruikt",
              "element 1616 Welk groeidiagram wordt gebruikt"),
)

#: RIVM vaccine (value list 76) -> SNOMED CT, only where the mapping is stated in DOMAIN.md.
VACCINE_TO_SNOMED: dict[str, tuple[str, str]] = {
    "01": ("871878002", "Vaccine product containing only Bordetella pertussis and Clostridium "
                        "tetani and Corynebacterium diphtheriae and Human poliovirus antigens"),
}


def _sort_key(code: str) -> tuple[int, int | str]:
    return (0, int(code)) if code.isdigit() else (1, code)


def read_tsv(data: Path) -> dict[str, list[tuple[str, str]]]:
    """TSV rows per code system OID: [(number, name), ...] in file order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for line in (data / TSV).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("##"):
            continue
        number, name, oid = line.split("\t")
        sections.setdefault(oid.strip(), []).append((number.strip(), name.strip()))
    return sections


def _base(resource_type: str, rid: str, url: str, name: str, title: str,
          description: str) -> dict:
    return {
        "resourceType": resource_type,
        "id": rid,
        "url": url,
        "version": BDS_VERSION,
        "name": name,
        "title": title,
        "status": "active",
        "publisher": "ekd",
        "description": description,
    }


def _code_system(rid: str, url: str, name: str, title: str, description: str,
                 concepts: list[tuple[str, str | None]], complete: bool,
                 valueset: str | None = None) -> dict:
    cs = _base("CodeSystem", rid, url, name, title, description)
    cs["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": url}]
    cs["caseSensitive"] = True
    if valueset:
        cs["valueSet"] = valueset
    cs["content"] = "complete" if complete else "fragment"
    cs["count"] = len(concepts)
    cs["concept"] = [{"code": c, "display": d} if d else {"code": c} for c, d in concepts]
    return cs


def _value_set(n: int, name: str, title: str, description: str) -> dict:
    vs = _base("ValueSet", f"bds-40.{n}", value_set_url(n), name, title, description)
    vs["immutable"] = False
    vs["compose"] = {"include": [{"system": value_list_system(n)}]}
    return vs


def build(data: Path = DEFAULT_DATA) -> dict[str, dict]:
    """All resources, keyed by file name."""
    sections = read_tsv(data)
    seen: dict[str, dict[str, str | None]] = json.loads(
        (data / VALUE_LISTS).read_text(encoding="utf-8"))
    out: dict[str, dict] = {}

    elements = sections[BDS_ELEMENTS.removeprefix("urn:oid:")]
    out["CodeSystem-bds-elements.json"] = _code_system(
        "bds-elements", BDS_ELEMENTS, "BdsElementen", "BDS JGZ elementen",
        f"The element numbers of the Basisdataset JGZ (BDS JGZ) {BDS_VERSION} with their names, "
        f"from the BDS {BDS_VERSION} element list (value list W0647 BDS Elementen). HL7v3 "
        "transfer messages code each BDS element by its number in this code system.",
        elements, complete=True)
    rubrics = sections[BDS_RUBRICS.removeprefix("urn:oid:")]
    out["CodeSystem-bds-rubrics.json"] = _code_system(
        "bds-rubrics", BDS_RUBRICS, "BdsRubrieken", "BDS JGZ rubrieken",
        f"The rubrics (R0xx) of the Basisdataset JGZ {BDS_VERSION}, from the BDS "
        f"{BDS_VERSION} list of rubrics (value list W0639 RubriekID).",
        rubrics, complete=True)
    groups = sections[BDS_GROUPS.removeprefix("urn:oid:")]
    out["CodeSystem-bds-groups.json"] = _code_system(
        "bds-groups", BDS_GROUPS, "BdsGroepen", "BDS JGZ groepen",
        f"The groups (G0xx) of the Basisdataset JGZ {BDS_VERSION}, from the BDS "
        f"{BDS_VERSION} list of groups (value list W0646 GroepID).",
        groups, complete=True)

    for vl in VALUE_LISTS_BOUND:
        codes = seen.get(f"{BDS_OID}.{vl.n}")
        if not codes:
            raise ValueError(f"value list {BDS_OID}.{vl.n} is not in {VALUE_LISTS}")
        concepts = sorted(codes.items(), key=lambda item: _sort_key(item[0]))
        source = (f"BDS JGZ {BDS_VERSION} value list {BDS_OID}.{vl.n} ({vl.title}), used by "
                  f"{vl.used_by}. Codes and displays as seen in real HL7v3 transfer messages.")
        extent = (" " + vl.note if vl.note else "")
        if not vl.complete:
            extent = (" Fragment: only the codes seen in the transfer messages are listed; the "
                      "BDS list has or may have more codes, so a code not listed here is not "
                      "known to be wrong." + extent)
        out[f"CodeSystem-bds-40.{vl.n}.json"] = _code_system(
            f"bds-40.{vl.n}", value_list_system(vl.n), vl.name, vl.title, source + extent,
            concepts, complete=vl.complete, valueset=value_set_url(vl.n))
        out[f"ValueSet-bds-40.{vl.n}.json"] = _value_set(
            vl.n, vl.name, vl.title,
            f"Every code of BDS JGZ {BDS_VERSION} value list {BDS_OID}.{vl.n} ({vl.title}), "
            f"for {vl.used_by}." + (" The code system is a fragment, so this value set "
                                    "cannot be expanded in full." if not vl.complete else ""))

    vaccines = sorted(seen[f"{BDS_OID}.76"].items(), key=lambda item: _sort_key(item[0]))
    elements_map = []
    for code, display in vaccines:
        element: dict = {"code": code, "display": display}
        if code in VACCINE_TO_SNOMED:
            target, target_display = VACCINE_TO_SNOMED[code]
            element["target"] = [{"code": target, "display": target_display,
                                  "equivalence": "equivalent"}]
        else:
            element["target"] = [{
                "equivalence": "unmatched",
                "comment": "No SNOMED CT mapping stated in our sources; not guessed."}]
        elements_map.append(element)
    cm = _base("ConceptMap", "rivm-vaccine-to-snomed", CONCEPTMAP_VACCINES,
               "RivmVaccineToSnomed", "RIVM soort vaccinatie naar SNOMED CT",
               f"Maps the RIVM vaccine types of BDS JGZ {BDS_VERSION} value list {BDS_OID}.76 "
               "(element 461 Soort vaccinatie, codes as seen in transfer messages) to SNOMED CT "
               "vaccine products, as used by the Nictiz FHIR vaccination profiles. Only mappings "
               "stated in our sources are given (DKTP -> 871878002); the other codes are "
               "marked 'unmatched' until a confirmed mapping is available.")
    cm["sourceUri"] = value_set_url(76)
    cm["group"] = [{"source": value_list_system(76), "target": SNOMED,
                    "element": elements_map}]
    out["ConceptMap-rivm-vaccine-to-snomed.json"] = cm
    return out


def dump(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, indent=2) + "\n"


def write(out_dir: Path = DEFAULT_OUT, data: Path = DEFAULT_DATA) -> list[Path]:
    """Write every resource as pretty-printed JSON; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, resource in build(data).items():
        path = out_dir / name
        path.write_text(dump(resource), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    data = Path(args[0]) if args else DEFAULT_DATA
    out_dir = Path(args[1]) if len(args) > 1 else DEFAULT_OUT
    for path in write(out_dir, data):
        print(path)


if __name__ == "__main__":
    main()
