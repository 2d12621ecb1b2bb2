"""Floor B: the cheapest possible FastAPI "FHIR read" - a constant JSON body, no storage.

Why: it shows what the HTTP stack alone (uvicorn + FastAPI + the benchmark client, on this
machine) costs per request. A server's read figure divided by this one is the share of the
achievable rate it reaches; the gap is its own work (routing, storage, serialisation).

The body is a realistic Patient (written by the benchmark into BENCH_FLOOR_BODY_FILE) so that
the bytes on the wire match a real read. Served with:
``python -m uvicorn --app-dir tests/perf _floor_b_app:app --host 127.0.0.1 --port N
--no-access-log`` (no access log, like ``ekd serve``). Async endpoints: no thread-pool hop.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json"
_body_file = os.environ.get("BENCH_FLOOR_BODY_FILE")
BODY: bytes = (
    Path(_body_file).read_bytes() if _body_file
    else b'{"resourceType":"Patient","id":"floor","meta":{"versionId":"1"},"active":true}'
)
METADATA = (b'{"resourceType":"CapabilityStatement","status":"active","kind":"instance",'
            b'"fhirVersion":"4.0.1","format":["json"]}')

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/fhir/metadata")
async def metadata() -> Response:
    return Response(METADATA, media_type=FHIR_JSON)


@app.get("/fhir/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str) -> Response:
    return Response(BODY, media_type=FHIR_JSON, headers={"ETag": 'W/"1"'})
