"""A delivery attempt's duration may be unknown: a send lost with its worker has none.

When a worker dies mid-send (SIGKILL, out of memory, a crash) its claim's lease expires with no
outcome recorded; the next claim logs that lost send as an attempt (app/webhooks/delivery.py), and
its duration was never measured. NULL says so; 0 would claim it took no time.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-09 00:24:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE webhook_delivery_attempts ALTER COLUMN duration_ms DROP NOT NULL")


def downgrade() -> None:
    # Row-level security hides every tenant's rows unless the system flag is on.
    op.execute("SELECT set_config('app.system', 'on', true)")
    op.execute("UPDATE webhook_delivery_attempts SET duration_ms = 0 WHERE duration_ms IS NULL")
    op.execute("SELECT set_config('app.system', '', true)")
    op.execute("ALTER TABLE webhook_delivery_attempts ALTER COLUMN duration_ms SET NOT NULL")
