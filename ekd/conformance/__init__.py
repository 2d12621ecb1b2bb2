"""Runners that score ekd against external conformance corpora (HL7 test cases)."""
