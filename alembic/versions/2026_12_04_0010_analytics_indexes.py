"""Analytics: agent turn latency of a range reads only that range's agent turns.

The summary's latency percentiles cover the agent turns stored in the range that were not
interrupted and have a latency. Without an index that was a scan of all the tenant's turns, its
whole history, for every summary; this partial index holds just those turns by time, with the
latency, so the read is an index-only scan of the range.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-04 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_call_turns_tenant_id_agent_latency",
        "call_turns",
        ["tenant_id", "created_at"],
        postgresql_include=["latency_ms"],
        postgresql_where=sa.text("role = 'agent' AND NOT interrupted AND latency_ms IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_call_turns_tenant_id_agent_latency", table_name="call_turns")
