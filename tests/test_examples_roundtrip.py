"""Round trip of the official FHIR R4 examples through the HTTP API (issue #2), on both backends.

Every example instance of hl7.fhir.r4.examples-4.0.1 (719: the package's resources without the
conformance/terminology definitions) is written as JSON (PUT with its own id, so references
between examples keep meaning something), read back as JSON and as XML, and compared with the
original: meta.versionId/meta.lastUpdated are ignored (the server sets them), numbers compare by
value, everything else exactly, except that in the XML read a narrative div may come back
re-serialised (`&quot;` -> `"`, `<td></td>` -> `<td/>`, CR LF -> LF) and then counts as equal
when its canonical XML (C14N) is. The report lists every failure with its reason.

The server validates with the fhir.resources R4B models, so some R4 examples cannot be stored.
Each is in KNOWN_EXCEPTIONS with the outcome it must have and the checked reason; the test fails
when an example fails that is not listed, fails differently than listed, or passes while listed.

Run with `-s` to see the report also when the test passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from ekd.interaction.base import Services
from ekd.store.database import Database
from tests.app_helpers import fhir_client
from tests.examples_corpus import (
    CATEGORIES,
    EXAMPLES_TGZ,
    NARRATIVE_C14N,
    OK,
    Corpus,
    Outcome,
    load_corpus,
    roundtrip,
)

#: How many example instances issue #2 counts, and what load_corpus() finds: the package has
#: 5307 members = package/package.json + 5306 resources, of which 4587 are conformance and
#: terminology definitions (StructureDefinition, ValueSet, CodeSystem, SearchParameter, ...).
#: The package has no .index.json and package.json gives no count.
EXPECTED_EXAMPLES = 719

_R4B_DROPPED = (
    "R4 resource type {rtype} was removed in R4B (replaced by {by}), so the server's "
    "fhir.resources R4B models do not know it: 404, 'resource type not supported' (http.html)"
)


def _dropped(rtype: str, by: str) -> tuple[str, str]:
    return "rejected: 404", _R4B_DROPPED.format(rtype=rtype, by=by)


#: Examples that cannot round-trip: file name -> (start of the expected outcome, checked reason).
KNOWN_EXCEPTIONS: dict[str, tuple[str, str]] = {
    # R4 resource types that R4B removed (medication definition and evidence redesigns).
    "MedicinalProduct-example.json": _dropped("MedicinalProduct", "MedicinalProductDefinition"),
    "MedicinalProductAuthorization-example.json": _dropped(
        "MedicinalProductAuthorization", "RegulatedAuthorization"
    ),
    "MedicinalProductContraindication-example.json": _dropped(
        "MedicinalProductContraindication", "ClinicalUseDefinition"
    ),
    "MedicinalProductIndication-example.json": _dropped(
        "MedicinalProductIndication", "ClinicalUseDefinition"
    ),
    "MedicinalProductIngredient-example.json": _dropped("MedicinalProductIngredient", "Ingredient"),
    "MedicinalProductInteraction-example.json": _dropped(
        "MedicinalProductInteraction", "ClinicalUseDefinition"
    ),
    "MedicinalProductManufactured-example.json": _dropped(
        "MedicinalProductManufactured", "ManufacturedItemDefinition"
    ),
    "MedicinalProductPackaged-example.json": _dropped(
        "MedicinalProductPackaged", "PackagedProductDefinition"
    ),
    "MedicinalProductPharmaceutical-example.json": _dropped(
        "MedicinalProductPharmaceutical", "AdministrableProductDefinition"
    ),
    "MedicinalProductUndesirableEffect-example.json": _dropped(
        "MedicinalProductUndesirableEffect", "ClinicalUseDefinition"
    ),
    "SubstanceSpecification-example.json": _dropped(
        "SubstanceSpecification", "SubstanceDefinition"
    ),
    "EffectEvidenceSynthesis-example.json": _dropped(
        "EffectEvidenceSynthesis", "the redesigned Evidence/EvidenceVariable/EvidenceReport"
    ),
    "RiskEvidenceSynthesis-example.json": _dropped(
        "RiskEvidenceSynthesis", "the redesigned Evidence/EvidenceVariable/EvidenceReport"
    ),
    # Invalid R4 examples: the profile validator's findings, each checked by hand against the
    # example and the R4 definition (the official examples are known not to be all valid).
    "ActivityDefinition-blood-tubes-supply.json": (
        "rejected: 422 ActivityDefinition.text.div: Constraint failed: txt-2",
        "the narrative div holds only whitespace (txt-2 is an error in R4)",
    ),
    "ActivityDefinition-heart-valve-replacement.json": (
        "rejected: 422 ActivityDefinition.text.div: Constraint failed: txt-2",
        "the narrative div holds only whitespace (txt-2)",
    ),
    "EventDefinition-example.json": (
        "rejected: 422 EventDefinition.text.div: Constraint failed: txt-2",
        "the narrative div holds only whitespace (txt-2)",
    ),
    "Questionnaire-zika-virus-exposure-assessment.json": (
        "rejected: 422 Questionnaire.text.div: Constraint failed: txt-2",
        "the narrative div holds only whitespace (txt-2)",
    ),
    "Basic-referral.json": (
        "rejected: 422 Basic.modifierExtension[0]: The extension",
        "a modifierExtension whose definition nobody can know (http://example.org/do-not-use/...):"
        " an unknown modifier extension changes the meaning of the resource, so ekd refuses it",
    ),
    "Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json": (
        "rejected: 422 Bundle.entry[2]: The fullUrl does not match",
        "entry fullUrl .../Patient/pat12 but the resource id is pat2",
    ),
    "Bundle-3a0707d3-549e-4467-b8b8-5a2ab3800efe.json": (
        "rejected: 422 Bundle.entry[3]: The fullUrl does not match",
        "entry fullUrl and resource id differ (same pattern as Bundle-10bb101f)",
    ),
    "Bundle-lri-example.json": (
        "rejected: 422 Bundle.entry[1]: The fullUrl does not match",
        "entry fullUrl and resource id differ",
    ),
    "Bundle-dataelements.json": (
        "rejected: 422 Bundle: Constraint failed: bdl-7",
        "several entries share a fullUrl (e.g. .../de-Quantity.value) with no versionId to tell "
        "them apart (bdl-7)",
    ),
    "Bundle-father.json": (
        "rejected: 422 Bundle.signature.who.reference: Can't find the referenced resource",
        "a document Bundle whose signature.who (Device/software) is not an entry of the document",
    ),
    "Bundle-valueset-expansions.json": (
        "rejected: 422 Bundle.entry[354].resource.expansion.parameter[2].value.ofType(uri): OIDs "
        "must be valid",
        "valueUri 'urn:oid:1.2.36...16592|4.0.1': a version suffix makes it no valid OID",
    ),
    "Library-zika-virus-intervention-logic.json": (
        "rejected: 422 Library.dataRequirement[0].codeFilter[0].valueSet: OIDs must be valid",
        "codeFilter.valueSet is 'urn:oid:X.Y.Z', a placeholder, not an OID",
    ),
    "DeviceMetric-example.json": (
        "rejected: 422 DeviceMetric.parent: The type 'DeviceDefinition'",
        "DeviceMetric.parent is Reference(Device) in R4; the example points at a DeviceDefinition",
    ),
    "DeviceUseStatement-example.json": (
        "rejected: 422 DeviceUseStatement.reasonReference[0]: The type 'Procedure'",
        "reasonReference allows Condition | Observation | DiagnosticReport | DocumentReference | "
        "Media in R4; the example points at a Procedure",
    ),
    "MedicationRequest-medrx0301.json": (
        "rejected: 422 MedicationRequest.dispenseRequest.performer: The type 'Practitioner'",
        "dispenseRequest.performer is Reference(Organization) in R4; the example points at a "
        "Practitioner",
    ),
    "Observation-clinical-gender.json": (
        "rejected: 422 Observation.performer[0]: The type 'Encounter'",
        "Observation.performer does not allow Encounter in R4",
    ),
    # R4 resource type whose content model R4B redesigned.
    "Evidence-example.json": (
        "xml-error: ParseError: Unknown element 'exposureBackground'",
        "Evidence was redesigned in R4B: the server validates and stores it against R4's "
        "definition, but the XML converter's element metadata comes from the R4B models, which "
        "have no Evidence.exposureBackground",
    ),
    # Invalid in R4 itself.
    "Questionnaire-qs1.json": (
        "rejected: 422 Questionnaire.item[0].item[0].linkId:",
        "the example is not valid R4: its 32 items of type 'display' have no linkId, but "
        "Questionnaire.item.linkId is 1..1 in R4 (StructureDefinition-Questionnaire.json in this "
        "package) as in R4B; all 32 validation errors are these missing linkIds",
    ),
    # The audit log is written by the server alone (NEN 7513, #6): clients cannot store
    # AuditEvents, these examples included.
    **{f"AuditEvent-{name}.json": (
        "rejected: 405 AuditEvents are written by the server only",
        "AuditEvents are the server's own append-only audit log; clients may only read and "
        "search them",
    ) for name in ("example-disclosure", "example-error", "example-login", "example-logout",
                   "example-media", "example-pixQuery", "example-rest", "example-search",
                   "example")},
}


def _report(
    backend: str,
    corpus: Corpus,
    outcomes: dict[str, Outcome],
    seconds: float,
    unexpected: list[str],
    changed: list[str],
    now_passing: list[str],
    stale: list[str],
) -> str:
    counts = {c: 0 for c in CATEGORIES}
    for outcome in outcomes.values():
        counts[outcome.category] += 1
    c14n = sum(1 for o in outcomes.values() if o.detail == NARRATIVE_C14N)
    excluded = sum(corpus.excluded.values())
    lines = [
        f"R4 examples round trip on {backend}: {len(outcomes)} example instances "
        f"({corpus.total_resources} resources in {EXAMPLES_TGZ.name}, {excluded} conformance/"
        f"terminology resources excluded) in {seconds:.1f} s",
    ]
    for category in CATEGORIES:
        note = f"  ({c14n} of them: {NARRATIVE_C14N})" if category == OK and c14n else ""
        lines.append(f"  {category:<10} {counts[category]:>4}{note}")
    known = [n for n in KNOWN_EXCEPTIONS if n in outcomes and outcomes[n].category != OK]
    lines.append(f"Known exceptions ({len(known)}):")
    for name in known:
        lines.append(f"  {name}: {outcomes[name]}")
        lines.append(f"      reason: {KNOWN_EXCEPTIONS[name][1]}")
    for title, names in (
        ("UNEXPECTED failures (not in KNOWN_EXCEPTIONS)", unexpected),
        ("Known exceptions that now fail DIFFERENTLY (update KNOWN_EXCEPTIONS)", changed),
        ("Known exceptions that now PASS (remove them from KNOWN_EXCEPTIONS)", now_passing),
        ("KNOWN_EXCEPTIONS entries that are not in the corpus", stale),
    ):
        if names:
            lines.append(f"{title} ({len(names)}):")
            for name in names:
                expected = KNOWN_EXCEPTIONS.get(name, ("", ""))[0]
                lines.append(
                    f"  {name}: {outcomes.get(name, '(absent)')}"
                    + (f"\n      expected: {expected}" if expected else "")
                )
    return "\n".join(lines)


#: Bundle-resources.json is 29.75 MB of compact JSON: more than the default request body limit
#: (16 MiB), so this test runs a server configured with a larger one.
BODY_LIMIT = 64 * 1024 * 1024


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    roomy = replace(services, settings=replace(services.settings, max_body_bytes=BODY_LIMIT))
    with fhir_client(roomy) as c:
        yield c


def test_r4_examples_roundtrip(client: TestClient, database: Database) -> None:
    if not EXAMPLES_TGZ.is_file():
        pytest.skip(f"the R4 examples package is absent: {EXAMPLES_TGZ}")
    corpus = load_corpus()
    assert len(corpus.examples) == EXPECTED_EXAMPLES, (
        f"{len(corpus.examples)} example instances, expected {EXPECTED_EXAMPLES}"
    )

    start = time.perf_counter()
    outcomes = {name: roundtrip(client, resource) for name, resource in corpus.examples}
    seconds = time.perf_counter() - start

    unexpected, changed, now_passing = [], [], []
    for name, outcome in outcomes.items():
        known = KNOWN_EXCEPTIONS.get(name)
        if known is None:
            if outcome.category != OK:
                unexpected.append(name)
        elif outcome.category == OK:
            now_passing.append(name)
        elif not str(outcome).startswith(known[0]):
            changed.append(name)
    stale = [name for name in KNOWN_EXCEPTIONS if name not in outcomes]

    report = _report(
        database.dialect, corpus, outcomes, seconds, unexpected, changed, now_passing, stale
    )
    print("\n" + report)
    assert not (unexpected or changed or now_passing or stale), report
