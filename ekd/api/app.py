"""The ASGI application: FHIR routes, health checks, OpenAPI page at /docs."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ekd import __version__
from ekd.api import auth, errors, exchange, fhir, middleware
from ekd.api.identify import Identify
from ekd.config import Settings
from ekd.definitions.registry import Registry
from ekd.definitions.sync import load_stored, start_polling
from ekd.errors import FhirError
from ekd.interaction.base import Services
from ekd.jgz.enforcement import JgzProfiles
from ekd.jgz.growth import GrowthReferences
from ekd.jgz.plausibility import GrowthPlausibility
from ekd.search.execute import SearchService
from ekd.search.parameters import SearchParameters
from ekd.security.ratelimit import RateLimiter
from ekd.security.service import Security, default_issuer
from ekd.store.database import Database
from ekd.terminology.service import TerminologyService
from ekd.transfer.context import Exchange
from ekd.transfer.worker import Worker
from ekd.validation import Validator
from ekd.validation.stamp import ValidationStamp
from ekd.validation.validator import ProfileValidator


def _project_definitions() -> list[Path]:
    """The project's own profiles and terminology: beside the package in a source checkout
    (editable install), else where a wheel install puts them (`<prefix>/share/ekd`)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return [checkout / "profiles", checkout / "terminology"]
    return [Path(sys.prefix) / "share/ekd/profiles", Path(sys.prefix) / "share/ekd/terminology"]


PROJECT_DEFINITIONS = _project_definitions()


def build_registry(settings: Settings) -> Registry:
    """Base definitions, configured packages, then the project's profiles and terminology."""
    registry = Registry()
    registry.load_base()
    for package in settings.packages:
        registry.load_package(Path(package))
    for folder in PROJECT_DEFINITIONS:
        if folder.is_dir():
            registry.load_dir(folder)
    return registry


def build_validator(registry: Registry, terminology: TerminologyService) -> Validator:
    """The validator every write goes through: base definitions, claimed and required profiles.

    An extension whose definition the server does not hold is a warning, not a rejection: the
    R4 core extensions are only known when a package with them is configured. Unknown
    modifier extensions are always errors.
    """
    return ProfileValidator(registry, terminology, unknown_extensions="warning")


log = logging.getLogger("ekd")


def build_search(registry: Registry, terminology: TerminologyService) -> SearchService:
    """R4's search parameters plus every SearchParameter the registry holds or comes to hold
    (the JGZ ones from profiles/, those stored through the API)."""
    parameters = SearchParameters(max_one=registry.max_one)
    parameters.add_all(registry.all("SearchParameter"))

    def follow(resource: dict) -> None:
        if resource.get("resourceType") != "SearchParameter":
            return
        url = resource.get("url")
        current = registry.get(url) if isinstance(url, str) else None
        try:
            if current is None or current.get("status") == "retired":
                parameters.remove(str(url))
            else:
                parameters.add(current)
        except FhirError as exc:  # checked on write; one loaded from a package may be broken
            log.warning("SearchParameter %s not usable: %s", url, exc.diagnostics)

    registry.subscribe(follow)

    def expand(url: str) -> list[tuple[str | None, str]]:
        return [(system, code) for system, _, code, _ in terminology.expand(url).contains]

    return SearchService(parameters, expand)


def build_services(settings: Settings, db: Database | None = None) -> Services:
    registry = build_registry(settings)
    db = db or Database(settings.database_url)
    load_stored(db, registry)
    terminology = TerminologyService(registry, max_expansion=settings.max_expansion)
    selector = JgzProfiles(registry, terminology).select if settings.jgz_enforce else None
    checks = ()
    if settings.jgz_enforce and settings.growth_references:
        references = GrowthReferences.load(Path(settings.growth_references))
        checks = (GrowthPlausibility(references).check,)
    validator = build_validator(registry, terminology)
    # Everything besides definitions and code that decides a validation outcome.
    stamp = ValidationStamp(registry, {
        "required_profiles": settings.required_profiles, "jgz": settings.jgz_enforce,
        "max_expansion": settings.max_expansion,
        "validator": [getattr(validator, a, None) for a in (
            "unknown_extensions", "vital_signs", "implementation_guides")]})
    return Services(
        db=db,
        settings=settings,
        validation_stamp=stamp,
        exchange=Exchange.from_settings(settings),
        search=build_search(registry, terminology),
        validator=validator,
        definitions=registry,
        terminology=terminology,
        profile_selector=selector,
        checks=checks,
    )


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               security: Security | None = None) -> FastAPI:
    services = services or build_services(settings or Settings.from_env())
    settings = services.settings
    security = security or Security.build(settings, services.db,
                                          issuer=default_issuer(settings))
    app = FastAPI(
        title="ekd",
        version=__version__,
        description="FHIR R4 (4.0.1) server for the Digitaal Dossier JGZ. "
        "The FHIR base is /fhir; the CapabilityStatement is at /fhir/metadata.",
    )
    app.state.services = services
    app.state.security = security
    errors.install(app)
    middleware.install(app, settings)
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.include_router(auth.router(security, settings, limiter))
    identify = Identify(security, limiter)
    serve = fhir.endpoint(services, identify)
    app.include_router(fhir.router(serve))
    app.router.routes[:0] = fhir.dispatch_routes(serve)
    if services.exchange is not None:
        app.include_router(exchange.router(services, services.exchange, identify))
        if settings.exchange_worker:
            worker = Worker(services, services.exchange)
            app.router.on_startup.append(worker.start)
            app.router.on_shutdown.append(worker.stop)

    @app.get("/health/live", tags=["health"], summary="The process is up")
    def live() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready", tags=["health"], summary="The database answers")
    def ready() -> JSONResponse:
        try:
            with services.db.read() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


def settle_heap() -> None:
    """For a long-running process, once start-up has built what lives as long as it does
    (definitions, search parameters, models): keep those out of the garbage collector's scans
    (`gc.freeze`) and collect the young generation less often. A dossier import allocates
    about a million objects; with Python's defaults the collector took ~18 ms of each in-process
    transfer's ~200 ms, with these ~4 ms (one process, consecutive runs of 10 dossiers, timed
    with `gc.callbacks`). Memory stays bounded: only the collection interval grows."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def app_from_env() -> FastAPI:
    """The app `ekd serve` runs (in each worker process): configured from `EKD_*` variables."""
    from ekd.fhir.resource_types import model_resource_types

    # Build the pydantic models of all resource types in the background (seconds of CPU), so
    # that the first request of each type does not pay for it.
    threading.Thread(target=model_resource_types, name="ekd-warm-up", daemon=True).start()
    services = build_services(Settings.from_env())
    if int(os.environ.get("EKD_WORKERS", "1")) > 1:
        # Another worker may store a profile: pick it up from the database.
        start_polling(services.db, services.definitions)
    app = create_app(services=services)
    settle_heap()
    return app
