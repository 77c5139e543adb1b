"""Alembic migrations of the call-record tables, run by ``gateway.records.migrate``."""
