"""Alembic's environment for the call-record tables.

Run only through ``gateway.records.migrate``, which hands over a connection (with its
transaction, and on PostgreSQL the migration lock, already taken): there is no alembic.ini, no
URL and no offline (SQL script) mode here, because the gateway migrates itself at start-up.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gateway.records.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("the call-record migrations run through gateway.records.migrate only")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode (copy the table) is how later revisions
    # generated against it must change a table.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
