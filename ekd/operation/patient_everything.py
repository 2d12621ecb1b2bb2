"""Patient/$everything (http://hl7.org/fhir/R4/patient-operation-everything.html).

`GET [base]/Patient/[id]/$everything`: the child's whole dossier. That is the Patient, every
resource in its patient compartment (http://hl7.org/fhir/R4/compartmentdefinition-patient.html:
related persons, episodes of care, encounters, observations, immunizations, consents, ...) and
the resources those refer to outside the compartment (the organisations, practitioners and
locations involved). Inputs: `_since` (changed at or after), `_type` (comma-separated types),
`_count` (page size). `start`/`end` (care dates) are not supported and are rejected rather than
ignored, so a client never mistakes a whole dossier for a date range.

The answer is a searchset Bundle paged by a cursor (the last resource of the page), so pages
stay put while the dossier changes; the transfer module (#7) is to package exactly this set.
"""

from __future__ import annotations

from ekd.errors import Gone, InvalidRequest, NotFound
from ekd.fhir.datetime import parse_instant
from ekd.fhir.resource_types import is_resource_type, resource_types
from ekd.interaction.base import FhirRequest, FhirResponse, Services, full_url
from ekd.interaction.bundle import bundle, page_url
from ekd.interaction.operation import Operation
from ekd.search.params import whole_number
from ekd.store.resources import ResourceStore


def everything_pks(services: Services, store: ResourceStore, patient_id: str, *,
                   types: set[str] | None = None, since: str | None = None, base: str = ""
                   ) -> list[int]:
    """The pks of the dossier, in storage order; raises when the patient is gone or unknown."""
    patient = store.current("Patient", patient_id)
    if patient is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    if patient.deleted:
        raise Gone(f"Patient/{patient_id} has been deleted")
    return services.search.compartment_pks(
        store, patient_id, types=types,
        since=parse_instant(since, "_since") if since else None, base=base)


def everything(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    patient_id = req.id or ""
    params = dict(req.params)
    for unsupported in ("start", "end"):
        if unsupported in params:
            raise InvalidRequest(f"$everything: '{unsupported}' is not supported; use _since "
                                 "and _type", expression=unsupported)
    types = None
    if params.get("_type"):
        types = {t.strip() for t in params["_type"].split(",") if t.strip()}
        unknown = sorted(t for t in types if not is_resource_type(t))
        if unknown:
            raise InvalidRequest(f"$everything: unknown resource type(s) {', '.join(unknown)}",
                                 expression="_type")
    hidden = {t for t in resource_types() if not req.may_read(t)}
    if hidden:  # a role that may not see some content gets the dossier without it
        types = (types if types is not None else set(resource_types())) - hidden
    count = _count(params.get("_count"), services.settings.default_page_size,
                   services.settings.max_page_size)
    after = _cursor(params.get("_cursor"))
    pks = everything_pks(services, store, patient_id, types=types, since=params.get("_since"),
                         base=req.base)
    remaining = [pk for pk in pks if pk > after]
    page = store.current_many(remaining[:count])
    entries = [{"fullUrl": full_url(req.base, s), "resource": s.content,
                "search": {"mode": "match"}} for s in page]
    path = f"Patient/{patient_id}/$everything"
    kept = [(k, v) for k, v in req.params if k in ("_since", "_type", "_count")]
    links = [("self", page_url(req.base, path, kept + (
        [("_cursor", str(after))] if after else [])))]
    if len(remaining) > count and page:
        links.append(("next", page_url(req.base, path, [*kept, ("_cursor", str(page[-1].pk))])))
    return FhirResponse(200, bundle("searchset", entries, total=len(pks), links=links),
                        touched=page)


def _count(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return max(default, maximum)
    return min(whole_number("_count", raw, 1), maximum)


def _cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest("_cursor is not a page link of this operation",
                             expression="_cursor") from None


OPERATION = Operation(
    name="everything",
    handler=everything,
    levels=frozenset({"instance"}),
    types=frozenset({"Patient"}),
    definition="http://hl7.org/fhir/OperationDefinition/Patient-everything",
    permission="rs",
)
