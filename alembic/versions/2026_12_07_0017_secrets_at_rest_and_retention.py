"""Webhook secrets encrypted at rest, and the indexes of the webhook retention (issue 18).

Secrets: from now on `secret` and `previous_secret` hold Fernet tokens (app/crypto.py). A
migration must not hold the key, so existing rows are not rewritten here: their plaintext is
still read, and `python -m app.cli rotate-encryption-key` encrypts them. The CHECKs are NOT VALID:
they refuse any new or updated plaintext at once, while legacy rows wait for the command; after
it ran, `ALTER TABLE webhook_endpoints VALIDATE CONSTRAINT …` proves none is left.

Retention: the worker deletes finished deliveries (succeeded or dead) by `updated_at` and events
by `created_at` across tenants, so both need an index that does not lead with tenant_id.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 00:17:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE webhook_endpoints ADD CONSTRAINT ck_webhook_endpoints_secret_encrypted "
        "CHECK (secret LIKE 'gAAAAA%') NOT VALID"
    )
    op.execute(
        "ALTER TABLE webhook_endpoints ADD CONSTRAINT ck_webhook_endpoints_previous_secret_encrypted "
        "CHECK (previous_secret IS NULL OR previous_secret LIKE 'gAAAAA%') NOT VALID"
    )
    op.create_index(
        "ix_webhook_deliveries_finished",
        "webhook_deliveries",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('succeeded', 'dead')"),
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_created_at", table_name="webhook_events")
    op.drop_index("ix_webhook_deliveries_finished", table_name="webhook_deliveries")
    op.execute(
        "ALTER TABLE webhook_endpoints DROP CONSTRAINT ck_webhook_endpoints_previous_secret_encrypted"
    )
    op.execute(
        "ALTER TABLE webhook_endpoints DROP CONSTRAINT ck_webhook_endpoints_secret_encrypted"
    )
