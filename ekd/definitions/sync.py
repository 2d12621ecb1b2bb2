"""Keep a Registry in step with the conformance resources stored in the database.

At start the current versions are loaded. The process that commits a write updates its own
registry at once (`ekd.interaction.route.committed`); other worker processes of the same
server catch up by polling the version table for newer conformance-resource versions.
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

from sqlalchemy import and_, func, inspect, select

from ekd.definitions.registry import CANONICAL_TYPES, Registry
from ekd.store.database import Database
from ekd.store.schema import resource, resource_version

log = logging.getLogger("ekd.definitions")


def load_stored(db: Database, registry: Registry) -> None:
    """Add every current stored conformance resource; remember the newest version seen."""
    if not inspect(db.engine).has_table("resource_version"):
        return  # an empty database, not migrated yet: nothing stored
    q = (
        select(resource.c.type, resource.c.id, resource_version.c.content, resource.c.deleted)
        .join(resource_version, and_(resource_version.c.resource_pk == resource.c.pk,
                                     resource_version.c.version == resource.c.version))
        .where(resource.c.type.in_(CANONICAL_TYPES), resource.c.deleted.is_(False))
    )
    with db.read() as conn:
        last = conn.execute(
            select(func.max(resource_version.c.seq)).where(
                resource_version.c.type.in_(CANONICAL_TYPES))
        ).scalar_one_or_none() or 0
        rows = conn.execute(q).all()
    for row in rows:
        registry.observe(SimpleNamespace(type=row.type, id=row.id, content=row.content,
                                         deleted=False))
    if rows:
        registry.sources.append(f"stored on this server ({len(rows)})")
    registry.synced_seq = int(last)


def catch_up(db: Database, registry: Registry) -> None:
    """Apply conformance-resource versions newer than the registry has seen, in write order."""
    after_seq = registry.synced_seq
    q = (
        select(resource_version.c.seq, resource_version.c.type, resource_version.c.id,
               resource_version.c.content, resource_version.c.method)
        .where(resource_version.c.type.in_(CANONICAL_TYPES), resource_version.c.seq > after_seq)
        .order_by(resource_version.c.seq)
    )
    with db.read() as conn:
        rows = conn.execute(q).all()
    for row in rows:
        registry.observe(SimpleNamespace(type=row.type, id=row.id, content=row.content,
                                         deleted=row.method == "DELETE"))
        registry.synced_seq = row.seq


def start_polling(db: Database, registry: Registry, interval: float = 2.0) -> threading.Thread:
    """Background catch-up for multi-process servers."""
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                catch_up(db, registry)
            except Exception:  # keep polling through transient database errors
                log.warning("Could not refresh conformance resources from the database")

    thread = threading.Thread(target=loop, name="ekd-definitions-sync", daemon=True)
    thread.start()
    return thread
