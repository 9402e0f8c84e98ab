"""The call lifecycle (issue 18): who ended a live call, and which relay session owns it.

`pending_end_reason` holds what our side saw end a live call (the agent's end_call, a transfer,
the duration limit, a relay error) until Twilio's final status makes it the end_reason;
`relay_bound_at` marks the call taken by its first relay session, so a second one is refused.

Revision ID: 0015
Revises: 0009
Create Date: 2026-12-06 00:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0015"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("pending_end_reason", sa.String(length=64), nullable=True))
    op.add_column("calls", sa.Column("relay_bound_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("calls", "relay_bound_at")
    op.drop_column("calls", "pending_end_reason")
