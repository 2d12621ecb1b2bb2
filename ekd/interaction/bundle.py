"""Building the Bundles the server returns (searchset, history, batch/transaction responses)."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from ekd.interaction.base import FhirResponse, full_url
from ekd.store.resources import Stored, instant, now


def bundle(kind: str, entries: list[dict], *, total: int | None = None,
           links: list[tuple[str, str]] | None = None) -> dict:
    out: dict = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(now())},
        "type": kind,
    }
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        out["entry"] = entries
    return out


def page_url(base: str, path: str, params: list[tuple[str, str]]) -> str:
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(params)}" if params else url


STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    304: "304 Not Modified",
}


def response_entry(base: str, resp: FhirResponse, *, prefer: str | None) -> dict:
    """A batch/transaction-response entry (http://hl7.org/fhir/R4/bundle.html#transaction-response)."""
    response: dict = {"status": STATUS_TEXT.get(resp.status, str(resp.status))}
    stored = resp.stored
    entry: dict = {}
    if stored is not None:
        if resp.location is not None:
            response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        if not stored.deleted:
            entry["fullUrl"] = full_url(base, stored)
    if resp.body is not None:
        if not resp.write or prefer in (None, "representation"):
            entry["resource"] = resp.body
        elif prefer == "OperationOutcome":
            response["outcome"] = write_outcome(resp)
    entry["response"] = response
    return entry


def write_outcome(resp: FhirResponse) -> dict:
    """The OperationOutcome returned for `Prefer: return=OperationOutcome`."""
    issues = [i.to_fhir() for i in resp.issues]
    stored: Stored | None = resp.stored
    if stored is not None:
        what = f"{stored.type}/{stored.id}"
        text = {201: "created", 204: "deleted"}.get(resp.status, "updated")
        issues.insert(
            0,
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{what} {text} (version {stored.version})",
            },
        )
    elif not issues:
        issues.append({"severity": "information", "code": "informational",
                       "diagnostics": "Nothing to do"})
    return {"resourceType": "OperationOutcome", "issue": issues}
