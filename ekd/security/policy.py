"""The permission matrix: which role may do what to which kind of resource.

Enforced in one place (`ekd.interaction.route` asks `check` before every interaction, Bundle
entries included). A request is allowed when the caller's ROLE allows the action on the
resource type's category AND one of the token's SMART SCOPES grants it: scopes narrow a role,
they never widen it.

| category       | arts  | vpk   | assistent | admin | beheerder | system |
|----------------|-------|-------|-----------|-------|-----------|--------|
| administrative | cruds | cruds | crus      | cruds | rs        | cruds  |
| clinical       | cruds | cruds | crus      | -     | -         | cruds  |
| consent        | cruds | cruds | rs        | rs    | rs        | cruds  |
| conformance    | rs    | rs    | rs        | rs    | cruds     | rs     |
| audit          | -     | -     | -         | -     | rs        | rs     |

arts = jeugdarts, vpk = jeugdverpleegkundige, assistent = doktersassistent, admin =
administratief-medewerker; `system` is a machine client without a user. Administrative types
are `ADMINISTRATIVE_TYPES` (Patient, RelatedPerson, Encounter, EpisodeOfCare, ...); consent is
Consent; conformance is `SHARED_TYPES` (profiles, ValueSets, CodeSystems, ...); audit is
AuditEvent; every other type is clinical (Observation, Immunization, Condition, ...).

c create, r read (read, vread, instance history), u update/patch, d delete, s search (search,
type and system history). AuditEvents are written by the server only.
"""

from __future__ import annotations

from enum import StrEnum

from ekd.errors import Forbidden
from ekd.fhir.resource_types import SHARED_TYPES
from ekd.security.principal import Principal, Role
from ekd.security.scopes import grants


class Category(StrEnum):
    ADMINISTRATIVE = "administrative"
    CLINICAL = "clinical"
    CONSENT = "consent"
    CONFORMANCE = "conformance"
    AUDIT = "audit"


#: Who the child is, who is involved, where and when care happens: what front-desk work needs.
ADMINISTRATIVE_TYPES = frozenset({
    "Patient", "RelatedPerson", "Person", "Organization", "Practitioner", "PractitionerRole",
    "Location", "HealthcareService", "Endpoint", "EpisodeOfCare", "Encounter", "Appointment",
    "AppointmentResponse", "Schedule", "Slot", "Group", "Task", "Coverage", "List",
})


def category(rtype: str) -> Category:
    if rtype in SHARED_TYPES:
        return Category.CONFORMANCE
    if rtype == "AuditEvent":
        return Category.AUDIT
    if rtype == "Consent":
        return Category.CONSENT
    if rtype in ADMINISTRATIVE_TYPES:
        return Category.ADMINISTRATIVE
    return Category.CLINICAL


_ALL = "cruds"
MATRIX: dict[Role, dict[Category, str]] = {
    Role.JEUGDARTS: {Category.ADMINISTRATIVE: _ALL, Category.CLINICAL: _ALL,
                     Category.CONSENT: _ALL, Category.CONFORMANCE: "rs"},
    Role.JEUGDVERPLEEGKUNDIGE: {Category.ADMINISTRATIVE: _ALL, Category.CLINICAL: _ALL,
                                Category.CONSENT: _ALL, Category.CONFORMANCE: "rs"},
    Role.DOKTERSASSISTENT: {Category.ADMINISTRATIVE: "crus", Category.CLINICAL: "crus",
                            Category.CONSENT: "rs", Category.CONFORMANCE: "rs"},
    Role.ADMINISTRATIEF_MEDEWERKER: {Category.ADMINISTRATIVE: _ALL, Category.CONSENT: "rs",
                                     Category.CONFORMANCE: "rs"},
    Role.BEHEERDER: {Category.ADMINISTRATIVE: "rs", Category.CONSENT: "rs",
                     Category.CONFORMANCE: _ALL, Category.AUDIT: "rs"},
    Role.SYSTEM: {Category.ADMINISTRATIVE: _ALL, Category.CLINICAL: _ALL,
                  Category.CONSENT: _ALL, Category.CONFORMANCE: "rs", Category.AUDIT: "rs"},
}

_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def role_allows(role: Role, rtype: str, action: str) -> bool:
    return action in MATRIX[role].get(category(rtype), "")


def allows(principal: Principal, rtype: str, action: str) -> bool:
    return role_allows(principal.role, rtype, action) and grants(principal.scopes, rtype, action)


def check(principal: Principal, rtype: str, actions: str) -> None:
    """Raise Forbidden unless every action in `actions` is allowed on `rtype`."""
    for action in actions:
        if not role_allows(principal.role, rtype, action):
            raise Forbidden(f"The role {principal.role} may not {_NAMES[action]} {rtype} "
                            f"resources ({category(rtype)} content)")
        if not grants(principal.scopes, rtype, action):
            raise Forbidden(f"The access token's scopes do not allow {_NAMES[action]} on "
                            f"{rtype}")
