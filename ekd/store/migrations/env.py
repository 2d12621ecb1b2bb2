"""Alembic environment: run migrations on the connection ekd hands over (see ekd.store.migrate)."""

from alembic import context

from ekd.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
