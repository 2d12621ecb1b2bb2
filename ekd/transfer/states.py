"""The sender's state machine for one transfer (TRANSFER.md, "Exactly-once").

Each transition is one database transaction that also writes whatever the new state needs (the
outbox row for `queued`, the audit record), so a crash leaves a transfer in a state it can be
resumed from, never between two. `invalid` is ekd's addition: a dossier that cannot be sent as
it is (BSN fails the 11-test, a resource does not meet its profile) is neither cancelled by
anyone nor a delivery failure, and a bulk report counts it apart.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PREPARED = "prepared"
    CONSENT_CHECKED = "consent-checked"
    PACKAGED = "packaged"
    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    IMPORTED = "imported"
    REJECTED = "rejected"
    FAILED_RETRYABLE = "failed-retryable"
    DEAD_LETTER = "dead-letter"
    CANCELLED = "cancelled"
    INVALID = "invalid"


#: Where a transfer may go from each state. Receipts may overtake each other (the application
#: receipt can arrive before the technical one is processed), hence sent → imported.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PREPARED: frozenset({State.CONSENT_CHECKED, State.CANCELLED, State.INVALID}),
    State.CONSENT_CHECKED: frozenset({State.PACKAGED, State.CANCELLED, State.INVALID}),
    State.PACKAGED: frozenset({State.QUEUED, State.CANCELLED}),
    State.QUEUED: frozenset({State.SENT, State.FAILED_RETRYABLE, State.CANCELLED,
                             State.DEAD_LETTER}),
    State.FAILED_RETRYABLE: frozenset({State.SENT, State.FAILED_RETRYABLE, State.DEAD_LETTER,
                                       State.CANCELLED}),
    State.SENT: frozenset({State.ACCEPTED, State.IMPORTED, State.REJECTED, State.DEAD_LETTER}),
    State.ACCEPTED: frozenset({State.IMPORTED, State.REJECTED}),
    State.IMPORTED: frozenset(),
    State.REJECTED: frozenset(),
    State.DEAD_LETTER: frozenset(),
    State.CANCELLED: frozenset(),
    State.INVALID: frozenset(),
}

FINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: Before the package leaves: an objection recorded now still stops it.
BEFORE_DISPATCH = frozenset({State.PREPARED, State.CONSENT_CHECKED, State.PACKAGED,
                             State.QUEUED, State.FAILED_RETRYABLE})


class IllegalTransition(RuntimeError):
    """A bug or a race lost: the row is not in a state this step may leave."""


def check(current: str, new: State) -> None:
    if new not in TRANSITIONS[State(current)]:
        raise IllegalTransition(f"A transfer cannot go from {current} to {new}")
