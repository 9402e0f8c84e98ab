"""The three cross-tenant lookups as SQL functions that also bind the transaction to the tenant.

Every request of a tenant key, every voice webhook and every status callback starts by finding
whose row it touches: the API key by its prefix, the dialled number, the CallSid. Done from Python,
each cost four round trips (enter the system scope, look up, leave it, set the tenant); these
functions do it in one, on cached plans, and leave the transaction bound to the tenant they found.

They run as the caller (SECURITY INVOKER): the app role could set `app.system` itself, so nothing
is granted that it did not have; they only shorten the window in which it is on to one statement.
Which functions may turn it on is pinned by tests/db/test_system_scope.py.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUTHENTICATE_API_KEY = """
CREATE FUNCTION authenticate_api_key(
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
        -- Conditional in SQL too: of concurrent requests that saw a stale value, one writes.
        UPDATE api_keys SET last_used_at = p_now
         WHERE id = k.id AND tenant_id = k.tenant_id
           AND (last_used_at IS NULL OR last_used_at < p_touch_before);
    END IF;
    RETURN QUERY SELECT k.id, k.tenant_id, k.role::text, k.status::text, k.plan::text;
END
$$
"""

ROUTE_INBOUND_CALL = """
CREATE FUNCTION route_inbound_call(p_call_sid text, p_to_number text) RETURNS TABLE (
    known_tenant_id uuid, number_id uuid, tenant_id uuid, number text, number_status text,
    ai_profile_id uuid, tenant_status text, tenant_plan text
) LANGUAGE plpgsql VOLATILE AS $$
-- A voice webhook's routing. A CallSid we already know (a retry, or an outbound call being
-- answered) binds to that call's tenant and returns only known_tenant_id. Otherwise the dialled
-- number, if any, binds to its tenant; an active number also locks its tenant row (FOR NO KEY
-- UPDATE, held until commit) and returns the tenant's status and plan as read under the lock, so
-- the caller's limit check and insert are serialized per tenant.
#variable_conflict use_column
DECLARE
    known uuid;
    n record;
    t_status text;
    t_plan text;
BEGIN
    PERFORM set_config('app.system', 'on', true);
    SELECT c.tenant_id INTO known FROM calls c WHERE c.provider_call_sid = p_call_sid;
    IF known IS NULL THEN
        SELECT p.id, p.tenant_id, p.number, p.status, p.ai_profile_id INTO n
          FROM phone_numbers p WHERE p.number = p_to_number;
    END IF;
    PERFORM set_config('app.system', '', true);
    IF known IS NOT NULL THEN
        PERFORM set_config('app.tenant_id', known::text, true);
        RETURN QUERY SELECT known, NULL::uuid, NULL::uuid, NULL::text, NULL::text, NULL::uuid,
                            NULL::text, NULL::text;
        RETURN;
    END IF;
    IF n.id IS NULL THEN
        RETURN QUERY SELECT NULL::uuid, NULL::uuid, NULL::uuid, NULL::text, NULL::text,
                            NULL::uuid, NULL::text, NULL::text;
        RETURN;
    END IF;
    PERFORM set_config('app.tenant_id', n.tenant_id::text, true);
    IF n.status = 'active' THEN
        SELECT t.status, t.plan INTO t_status, t_plan
          FROM tenants t WHERE t.id = n.tenant_id FOR NO KEY UPDATE;
    END IF;
    RETURN QUERY SELECT NULL::uuid, n.id, n.tenant_id, n.number::text, n.status::text,
                        n.ai_profile_id, t_status, t_plan;
END
$$
"""

BIND_CALL_SID = """
CREATE FUNCTION bind_call_sid(p_call_sid text) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
-- The tenant owning the call with this Twilio CallSid (NULL if none); binds the transaction to it.
DECLARE
    owner_id uuid;
BEGIN
    PERFORM set_config('app.system', 'on', true);
    SELECT c.tenant_id INTO owner_id FROM calls c WHERE c.provider_call_sid = p_call_sid;
    PERFORM set_config('app.system', '', true);
    IF owner_id IS NOT NULL THEN
        PERFORM set_config('app.tenant_id', owner_id::text, true);
    END IF;
    RETURN owner_id;
END
$$
"""

FUNCTIONS = {
    "authenticate_api_key(text, text, timestamptz, timestamptz)": AUTHENTICATE_API_KEY,
    "route_inbound_call(text, text)": ROUTE_INBOUND_CALL,
    "bind_call_sid(text)": BIND_CALL_SID,
}


def upgrade() -> None:
    for definition in FUNCTIONS.values():
        op.execute(definition)


def downgrade() -> None:
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
