"""authenticate_api_key: the last_used_at touch never waits for another request's.

Once a minute a key's request records last_used_at, and holds that row's lock until its own
transaction ends. Every other request of the same key in that moment saw the old value, tried the
same conditional UPDATE and queued behind the lock: for as long as the first request took, all of
the key's requests stood still (0.2-1.4 s windows under the benchmark's list load, once or twice a
minute, whenever the lock holder was itself slowed down). Now a request takes the row with SKIP
LOCKED: if another one is writing the value, it has nothing to do and goes on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 05:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HEAD = """
CREATE OR REPLACE FUNCTION authenticate_api_key(
    p_prefix text, p_key_hash text, p_now timestamptz, p_touch_before timestamptz
) RETURNS TABLE (
    key_id uuid, tenant_id uuid, role text, tenant_status text, tenant_plan text
) LANGUAGE plpgsql VOLATILE AS $$
-- The live key with this prefix and hash, with its tenant; binds the transaction to that tenant
-- and records last_used_at when it is older than p_touch_before. No row: unknown, revoked or
-- expired, and nothing is bound.
#variable_conflict use_column
DECLARE
    k record;
BEGIN
    PERFORM set_config('app.system', 'on', true);
    SELECT a.id, a.tenant_id, a.role, a.last_used_at, t.status, t.plan INTO k
      FROM api_keys a JOIN tenants t ON t.id = a.tenant_id
     WHERE a.prefix = p_prefix AND a.key_hash = p_key_hash AND a.revoked_at IS NULL
       AND (a.expires_at IS NULL OR a.expires_at > p_now);
    PERFORM set_config('app.system', '', true);
    IF k.id IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('app.tenant_id', k.tenant_id::text, true);
    IF k.last_used_at IS NULL OR k.last_used_at < p_touch_before THEN
"""
_TAIL = """
    END IF;
    RETURN QUERY SELECT k.id, k.tenant_id, k.role::text, k.status::text, k.plan::text;
END
$$
"""
# Of concurrent requests that saw a stale value, one writes; the others skip the locked row.
TOUCH_WITHOUT_WAITING = """
        UPDATE api_keys SET last_used_at = p_now
         WHERE id = (SELECT id FROM api_keys
                      WHERE id = k.id AND tenant_id = k.tenant_id
                        AND (last_used_at IS NULL OR last_used_at < p_touch_before)
                        FOR UPDATE SKIP LOCKED)
           AND tenant_id = k.tenant_id;
"""
# Migration 0004's: conditional in SQL too, but a second writer waits for the first.
TOUCH_WAITING = """
        UPDATE api_keys SET last_used_at = p_now
         WHERE id = k.id AND tenant_id = k.tenant_id
           AND (last_used_at IS NULL OR last_used_at < p_touch_before);
"""


def upgrade() -> None:
    op.execute(_HEAD + TOUCH_WITHOUT_WAITING + _TAIL)


def downgrade() -> None:
    op.execute(_HEAD + TOUCH_WAITING + _TAIL)
