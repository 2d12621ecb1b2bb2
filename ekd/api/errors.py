"""The one place where errors become HTTP responses: always an OperationOutcome, never a trace."""

from __future__ import annotations

import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ekd.api.formats import MEDIA, render
from ekd.api.middleware import redact_path
from ekd.errors import FhirError, Issue

log = logging.getLogger("ekd.api")

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly"}


def outcome_response(request: Request, status: int, outcome: dict,
                     headers: dict[str, str] | None = None) -> Response:
    fmt = getattr(request.state, "format", "json")
    pretty = getattr(request.state, "pretty", False)
    return Response(
        render(outcome, fmt, pretty=pretty),
        status_code=status,
        media_type=MEDIA[fmt],
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir(request: Request, exc: FhirError) -> Response:
        return outcome_response(request, exc.status, exc.outcome(), exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "processing")
        text = "Unknown path" if exc.status_code == 404 else str(exc.detail)
        issue = Issue("error", code, text)
        return outcome_response(request, exc.status_code,
                                {"resourceType": "OperationOutcome", "issue": [issue.to_fhir()]})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        issue = Issue("error", "invalid", "The request is not valid")
        return outcome_response(request, 400,
                                {"resourceType": "OperationOutcome", "issue": [issue.to_fhir()]})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # The type only: exception messages may carry request data (and so a BSN).
        # The type and where it happened, never the message: messages (a database error's,
        # say) may quote request data, and so a BSN or clinical values.
        where = "".join(traceback.format_tb(exc.__traceback__)[-8:])
        log.error("Unhandled %s while serving %s %s\n%s", type(exc).__name__, request.method,
                  redact_path(request.url.path), where)
        issue = Issue("fatal", "exception", "Internal server error")
        return outcome_response(request, 500,
                                {"resourceType": "OperationOutcome", "issue": [issue.to_fhir()]})
