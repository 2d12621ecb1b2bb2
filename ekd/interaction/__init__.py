"""The FHIR RESTful interactions (http://hl7.org/fhir/R4/http.html), one module each.

They take a framework-free `FhirRequest` and return a `FhirResponse`, so the HTTP layer and
batch/transaction processing share one implementation of every interaction.
"""
