"""FHIR search (http://hl7.org/fhir/R4/search.html): index extraction and query execution."""
