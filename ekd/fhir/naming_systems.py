"""Dutch identifier systems (https://simplifier.net/nictiz: NamingSystem), one place for all."""

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
URA = "http://fhir.nl/fhir/NamingSystem/ura"
UZI_PERSON = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers"


def bsn_of(patient: dict) -> str | None:
    """The BSN a Patient carries (its first identifier in the BSN system), if any."""
    for identifier in patient.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == BSN:
            value = identifier.get("value")
            return value if isinstance(value, str) else None
    return None
