CREATE FUNCTION public.authenticate_api_key(
    p_prefix text, p_key_hash text, p_now timestamptz, p_touch_before timestamptz
) RETURNS TABLE (
    key_id uuid, tenant_id uuid, role text, tenant_status text, tenant_plan text
) LANGUAGE plpgsql VOLATILE AS $$
-- The live key with this prefix and hash, with its tenant; binds the transaction to that tenant
-- and records last_used_at when it is older than p_touch_before. No row: unknown, revoked or
-- expired, and nothing is bound. One round trip for what every tenant request starts with.
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
        -- Of concurrent requests that saw a stale value, one writes; the others skip the locked
        -- row instead of queueing behind it.
        UPDATE api_keys SET last_used_at = p_now
         WHERE id = (SELECT id FROM api_keys
                      WHERE id = k.id AND tenant_id = k.tenant_id
                        AND (last_used_at IS NULL OR last_used_at < p_touch_before)
                        FOR UPDATE SKIP LOCKED)
           AND tenant_id = k.tenant_id;
    END IF;
    RETURN QUERY SELECT k.id, k.tenant_id, k.role::text, k.status::text, k.plan::text;
END
$$
