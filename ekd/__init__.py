"""ekd: an HL7 FHIR R4 backend for the Dutch Digitaal Dossier JGZ."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
