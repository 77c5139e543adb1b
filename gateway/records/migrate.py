"""Bringing the records database to the newest schema, at start-up, without alembic.ini.

The revisions live in ``migrations/`` inside the package, so an installed gateway migrates
whatever database DATABASE_URL names with nothing but itself. The whole upgrade is one
transaction (DDL included: PostgreSQL's DDL is transactional, and ``gateway.records.database``
makes SQLite's so), so a failed migration leaves the previous schema, not half of the new one.

Replicas sharing a PostgreSQL database may start together: each takes the same advisory lock
(held to the end of the migration's transaction) before looking at the schema's version, so
one migrates and the others then find the schema current. The workers of one ``gateway
serve`` sharing a SQLite file do the same through SQLite's write lock: the transaction begins
``IMMEDIATE`` (``database.for_writing``), so the second waits at ``BEGIN`` for the first.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from gateway.records.database import for_writing

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
#: The advisory lock's key: any constant that other software on the database is unlikely to
#: use; this one spells "callbrdg".
MIGRATION_LOCK_KEY = 0x63616C6C62726467


def upgrade_to_head(engine: Engine) -> None:
    """Apply every revision ``engine``'s database does not have yet (none: nothing happens)."""
    with for_writing(engine).connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        command.upgrade(alembic_config(connection), "head")


def alembic_config(connection: object | None = None) -> Config:
    """Alembic's configuration for the package's revisions; ``connection`` is what ``env.py``
    migrates (None: for reading the revisions only)."""
    config = Config()
    # ConfigParser interpolates "%": a path is data, not a template.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config
