"""SMART on FHIR scopes, v2 (`system/Observation.rs`) and v1 (`user/*.read`)
(https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A scope grants actions: c(reate), r(ead), u(pdate), d(elete), s(earch). v1's `read` is `rs`,
`write` is `cud`, `*` is `cruds`. `patient/` scopes need a launch context ekd does not offer:
they are parsed but grant nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")


@dataclass(frozen=True, slots=True)
class Scope:
    context: str  # patient | user | system
    type: str  # a resource type or "*"
    actions: frozenset[str]

    def grants(self, rtype: str, action: str) -> bool:
        return (self.context != "patient" and action in self.actions
                and self.type in ("*", rtype))

    def __str__(self) -> str:
        return f"{self.context}/{self.type}.{''.join(a for a in ACTIONS if a in self.actions)}"


def parse_scope(text: str) -> Scope | None:
    """One scope string; None for what is not a resource scope (`openid`, `launch`, ...)."""
    m = _SCOPE.match(text.strip())
    if m is None:
        return None
    context, rtype, acts, _query = m.groups()
    if acts in _V1:
        actions = _V1[acts]
    elif acts and all(a in ACTIONS for a in acts) and list(acts) == sorted(
            acts, key=ACTIONS.index) and len(set(acts)) == len(acts):
        actions = acts
    else:
        return None
    return Scope(context, rtype, frozenset(actions))


def parse_scopes(text: str) -> tuple[Scope, ...]:
    return tuple(s for s in (parse_scope(p) for p in text.split()) if s is not None)


def grants(scopes: tuple[Scope, ...], rtype: str, action: str) -> bool:
    return any(s.grants(rtype, action) for s in scopes)


def narrow(requested: tuple[Scope, ...], allowed: tuple[Scope, ...]) -> tuple[Scope, ...]:
    """What of `requested` the `allowed` scopes cover (per type and action)."""
    out: list[Scope] = []
    for want in requested:
        for have in allowed:
            if have.context != want.context or have.type not in ("*", want.type):
                continue
            actions = want.actions & have.actions
            if actions:
                out.append(Scope(want.context, want.type, frozenset(actions)))
    return tuple(dict.fromkeys(out))
