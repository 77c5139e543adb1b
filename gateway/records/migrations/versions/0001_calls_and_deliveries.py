"""The first schema: calls, the agents of each call, and the delivery outbox.

Revision ID: 0001
Revises: (none)

Written out rather than generated from ``gateway.records.schema``: a migration is a snapshot
of the schema at its revision, and must not change when that module does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "calls",
        sa.Column("call_id", sa.Text(), primary_key=True),
        sa.Column("carrier", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("from_number", sa.Text()),
        sa.Column("to_number", sa.Text()),
        sa.Column("started_at", timestamp, nullable=False),
        sa.Column("ended_at", timestamp),
        sa.Column("end_reason", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("heartbeat_at", timestamp, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
    )
    op.create_index("ix_calls_started", "calls", ["started_at", "call_id"])
    op.create_index("ix_calls_from", "calls", ["from_number", "started_at"])
    op.create_index("ix_calls_to", "calls", ["to_number", "started_at"])
    open_calls = sa.text("ended_at IS NULL")
    op.create_index(
        "ix_calls_open",
        "calls",
        ["heartbeat_at"],
        postgresql_where=open_calls,
        sqlite_where=open_calls,
    )
    op.create_table(
        "call_agents",
        sa.Column(
            "call_id",
            sa.Text(),
            sa.ForeignKey("calls.call_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("agent_id", sa.Text(), primary_key=True),
    )
    op.create_index("ix_call_agents_agent", "call_agents", ["agent_id", "call_id"])
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", sa.Text(), primary_key=True),
        sa.Column(
            "call_id",
            sa.Text(),
            sa.ForeignKey("calls.call_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", timestamp, nullable=False),
        sa.Column("delivered_at", timestamp),
        sa.Column("abandoned_at", timestamp),
        sa.Column("last_error", sa.Text()),
    )
    pending = sa.text("delivered_at IS NULL AND abandoned_at IS NULL")
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_index("ix_deliveries_call", "deliveries", ["call_id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("call_agents")
    op.drop_table("calls")
