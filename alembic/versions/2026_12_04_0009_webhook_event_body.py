"""webhook_events.body: the event as the exact text that is signed and sent (SPEC §11).

The event was jsonb, which keeps neither key order nor the spelling of numbers, so every attempt
rebuilt and re-serialised the body. Now emit_event serialises it once and the worker sends that
text byte for byte. Existing events keep their content, in jsonb's text form.

Revision ID: 0009
Revises: 0013
Create Date: 2026-12-04 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "webhook_events",
        "payload",
        type_=sa.Text(),
        postgresql_using="payload::text",
        existing_type=postgresql.JSONB(astext_type=sa.Text()),
        existing_nullable=False,
    )
    op.alter_column("webhook_events", "payload", new_column_name="body")


def downgrade() -> None:
    op.alter_column("webhook_events", "body", new_column_name="payload")
    op.alter_column(
        "webhook_events",
        "payload",
        type_=postgresql.JSONB(astext_type=sa.Text()),
        postgresql_using="payload::jsonb",
        existing_type=sa.Text(),
        existing_nullable=False,
    )
