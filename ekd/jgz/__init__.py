"""The JGZ (youth health care) content of ekd: canonical URLs and code systems in one place.

Profiles live in `profiles/`, terminology in `terminology/` (FHIR JSON, loaded at start).
"""

from __future__ import annotations

#: The one canonical base of every ekd-defined conformance resource.
CANONICAL = "https://fhir.ekd.nl"

#: RIVM's BDS JGZ: element numbers and value lists are coded under this OID arc.
BDS_OID = "2.16.840.1.113883.2.4.4.40"
#: Code system of the BDS element numbers (HL7v3 uses it to code each element).
BDS_ELEMENTS = f"urn:oid:{BDS_OID}.267"
#: Code system of the BDS rubrics (R002, R003, ...).
BDS_RUBRICS = f"urn:oid:{BDS_OID}.391"


def value_list_system(n: int | str) -> str:
    """The code system of BDS value list `…40.<n>` (e.g. 76: RIVM vaccines)."""
    return f"urn:oid:{BDS_OID}.{n}"


def value_set_url(n: int | str) -> str:
    """The ValueSet with every code of BDS value list `…40.<n>`."""
    return f"{CANONICAL}/ValueSet/bds-40.{n}"


def profile_url(profile_id: str) -> str:
    """`jgz-Patient` -> its StructureDefinition canonical."""
    return f"{CANONICAL}/StructureDefinition/{profile_id}"
