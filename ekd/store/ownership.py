"""Giving resources stored before organisation scoping (schema 0003) an owner.

Such resources have no organisation, and a scoped caller sees only its own organisation's:
they are invisible to everyone until an organisation adopts them (`ekd db adopt --ura …`).
Shared conformance resources stay without an owner.
"""

from __future__ import annotations

from sqlalchemy import update

from ekd.fhir.resource_types import SHARED_TYPES
from ekd.store.database import Database
from ekd.store.schema import INDEX_TABLES, resource, resource_version


def adopt(db: Database, org: str) -> int:
    """Give every ownerless, non-shared resource (its versions and index rows) to `org`, in one
    transaction; the number of resources adopted."""
    with db.write() as conn:
        adopted = conn.execute(update(resource).where(
            resource.c.org.is_(None), resource.c.type.not_in(SHARED_TYPES)
        ).values(org=org)).rowcount
        for table in (resource_version, *INDEX_TABLES.values()):
            conn.execute(update(table).where(
                table.c.org.is_(None), table.c.type.not_in(SHARED_TYPES)).values(org=org))
    return int(adopted)
