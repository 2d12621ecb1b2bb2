"""Conformance resources (StructureDefinition, ValueSet, CodeSystem, ...) known to the server."""
