"""What every write shares: validation, `If-Match`, and lost compare-and-set races."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ekd.errors import InvalidRequest, Issue, PreconditionFailed, ResourceInvalid
from ekd.interaction.base import FhirRequest, Services, etag_version
from ekd.search.parameters import SearchParam
from ekd.store.resources import ResourceStore, Stored, VersionConflict


def profiles_for(services: Services, resource: dict) -> list[str]:
    """Profiles a resource must meet on top of what it claims itself: the JGZ profile that fits
    it (unless `EKD_JGZ_ENFORCE=false`) and any the deployment requires (`EKD_REQUIRED_PROFILES`).
    """
    wanted = list(services.settings.required_profiles.get(resource.get("resourceType", ""), ()))
    if services.profile_selector is not None:
        wanted += services.profile_selector(resource)
    return list(dict.fromkeys(wanted))


def validation_issues(services: Services, resource: dict) -> list[Issue]:
    """Every issue the validator finds against the profiles the resource must meet; a resource
    that fits no JGZ profile it should is one error issue (nothing raised: callers checking a
    whole dossier want all problems at once)."""
    try:
        profiles = profiles_for(services, resource)
    except ResourceInvalid as exc:
        return list(exc.issues)
    return services.validator.validate(resource, profiles)


@dataclass(frozen=True, slots=True)
class Validated:
    #: Issues to report with the answer (no errors: those raised).
    warnings: list[Issue]
    #: The validation stamp the resource passed under, for the store to keep with the version
    #: (`ekd.validation.stamp`); None when definitions changed while it was validated.
    stamp: str | None


def validate(services: Services, resource: dict, store: ResourceStore) -> Validated:
    """Validate; raise on errors (nothing is stored), return warnings to report.

    The stamp is read before and after: a definition that changed in between leaves the
    version unstamped, so it is never taken for valid under definitions it was not checked
    against."""
    stamp = services.validation_stamp() if services.validation_stamp is not None else None
    issues = validation_issues(services, resource)
    if resource.get("resourceType") == "SearchParameter":
        issues += _search_parameter_issues(resource)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        # Errors first: they are why the write was refused.
        others = [i for i in issues if i.severity not in ("error", "fatal")]
        raise ResourceInvalid(errors[0].diagnostics, issues=errors + others)
    for check in services.checks:
        issues += check(store, resource)
    if stamp is not None and services.validation_stamp is not None \
            and services.validation_stamp() != stamp:
        stamp = None
    return Validated(issues, stamp)


def _search_parameter_issues(resource: dict) -> list[Issue]:
    """A SearchParameter ekd would index must be usable: known type, valid code, FHIRPath
    that compiles (its definition is checked by the validator like any resource)."""
    try:
        SearchParam.from_resource(resource)
    except InvalidRequest as exc:
        return [Issue("error", "invalid", exc.diagnostics, exc.issues[0].expression)]
    return []


def check_if_match(req: FhirRequest, current: Stored | None) -> None:
    """http://hl7.org/fhir/R4/http.html#concurrency"""
    expected = etag_version(req.if_match)
    if expected is None:
        return
    if current is None:
        raise PreconditionFailed("If-Match given, but the resource does not exist")
    if current.version != expected:
        raise PreconditionFailed(
            f"If-Match expects version {expected}, the current version is {current.version}"
        )


def guarded(req: FhirRequest, write: Callable[[], Stored]) -> Stored:
    """Run a store write; under `If-Match` a concurrent writer that got in first is a 412.

    Without `If-Match` the conflict propagates and the request is retried from the start.
    """
    try:
        return write()
    except VersionConflict as exc:
        if req.if_match is not None:
            raise PreconditionFailed(exc.diagnostics) from None
        raise
