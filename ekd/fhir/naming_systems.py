"""Dutch identifier systems (https://simplifier.net/nictiz: NamingSystem), one place for all."""

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
URA = "http://fhir.nl/fhir/NamingSystem/ura"
UZI_PERSON = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers"
