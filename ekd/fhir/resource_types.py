"""The resource types ekd serves: every concrete resource type that `fhir.resources` models.

fhir.resources 8 ships R4B (4.3.0) models; for the resources a JGZ dossier uses they are
wire-compatible with R4 (4.0.1), which is the version ekd declares.
"""

from __future__ import annotations

import re

from fhir.resources.R4B import fhirtypes, get_fhir_model_class

ABSTRACT = frozenset({"Resource", "DomainResource"})

#: http://hl7.org/fhir/R4/datatypes.html#id
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


#: Every concrete resource type of the fhir.resources R4B models. A literal, because asking the
#: models means building all ~700 pydantic classes (seconds of start-up); a test checks that this
#: list still matches the installed fhir.resources.
RESOURCE_TYPES: frozenset[str] = frozenset(
    {
        "Account", "ActivityDefinition", "AdministrableProductDefinition", "AdverseEvent",
        "AllergyIntolerance", "Appointment", "AppointmentResponse", "AuditEvent", "Basic",
        "Binary", "BiologicallyDerivedProduct", "BodyStructure", "Bundle",
        "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry", "ChargeItem",
        "ChargeItemDefinition", "Citation", "Claim", "ClaimResponse", "ClinicalImpression",
        "ClinicalUseDefinition", "CodeSystem", "Communication", "CommunicationRequest",
        "CompartmentDefinition", "Composition", "ConceptMap", "Condition", "Consent",
        "Contract", "Coverage", "CoverageEligibilityRequest", "CoverageEligibilityResponse",
        "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric", "DeviceRequest",
        "DeviceUseStatement", "DiagnosticReport", "DocumentManifest", "DocumentReference",
        "Encounter", "Endpoint", "EnrollmentRequest", "EnrollmentResponse", "EpisodeOfCare",
        "EventDefinition", "Evidence", "EvidenceReport", "EvidenceVariable",
        "ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal",
        "GraphDefinition", "Group", "GuidanceResponse", "HealthcareService", "ImagingStudy",
        "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation",
        "ImplementationGuide", "Ingredient", "InsurancePlan", "Invoice", "Library",
        "Linkage", "List", "Location", "ManufacturedItemDefinition", "Measure",
        "MeasureReport", "Media", "Medication", "MedicationAdministration",
        "MedicationDispense", "MedicationKnowledge", "MedicationRequest",
        "MedicationStatement", "MedicinalProductDefinition", "MessageDefinition",
        "MessageHeader", "MolecularSequence", "NamingSystem", "NutritionOrder",
        "NutritionProduct", "Observation", "ObservationDefinition", "OperationDefinition",
        "OperationOutcome", "Organization", "OrganizationAffiliation",
        "PackagedProductDefinition", "Parameters", "Patient", "PaymentNotice",
        "PaymentReconciliation", "Person", "PlanDefinition", "Practitioner",
        "PractitionerRole", "Procedure", "Provenance", "Questionnaire",
        "QuestionnaireResponse", "RegulatedAuthorization", "RelatedPerson", "RequestGroup",
        "ResearchDefinition", "ResearchElementDefinition", "ResearchStudy",
        "ResearchSubject", "RiskAssessment", "Schedule", "SearchParameter",
        "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition", "StructureDefinition",
        "StructureMap", "Subscription", "SubscriptionStatus", "SubscriptionTopic",
        "Substance", "SubstanceDefinition", "SupplyDelivery", "SupplyRequest", "Task",
        "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet",
        "VerificationResult", "VisionPrescription",
    }
)


def resource_types() -> frozenset[str]:
    return RESOURCE_TYPES


def model_resource_types() -> frozenset[str]:
    """The resource types as the installed models define them (slow: builds every model)."""
    from fhir.resources.R4B.resource import Resource

    found: set[str] = set()
    for attr in dir(fhirtypes):
        if not attr.endswith("Type") or not attr[:1].isupper():
            continue
        name = attr[:-4]
        try:
            cls = get_fhir_model_class(name)
        except (ValueError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, Resource) and name not in ABSTRACT:
            found.add(name)
    return frozenset(found)


def is_resource_type(name: str) -> bool:
    return name in RESOURCE_TYPES


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


#: Conformance, terminology and knowledge resources: shared by every organisation (stored
#: without an owner), readable by all authenticated clients. Everything else belongs to the
#: organisation that holds the dossier.
SHARED_TYPES = frozenset({
    "CapabilityStatement", "StructureDefinition", "ImplementationGuide", "SearchParameter",
    "MessageDefinition", "OperationDefinition", "CompartmentDefinition", "StructureMap",
    "GraphDefinition", "ExampleScenario", "CodeSystem", "ValueSet", "ConceptMap",
    "NamingSystem", "TerminologyCapabilities", "Questionnaire", "ActivityDefinition",
    "PlanDefinition", "Library", "Measure",
})
