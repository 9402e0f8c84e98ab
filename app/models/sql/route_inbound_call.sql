CREATE FUNCTION public.route_inbound_call(p_call_sid text, p_to_number text) RETURNS TABLE (
    known_tenant_id uuid, number_id uuid, tenant_id uuid, number text, number_status text,
    ai_profile_id uuid, tenant_status text, tenant_plan text
) LANGUAGE plpgsql VOLATILE AS $$
-- A voice webhook's routing; called only by answer_inbound_call. A CallSid we already know (a
-- retry, or an outbound call being answered) binds to that call's tenant and returns only
-- known_tenant_id. Otherwise the dialled number, if any, binds to its tenant; an active number
-- also locks its tenant row (FOR NO KEY UPDATE, held until commit) and returns the tenant's
-- status and plan as read under the lock, so the limit check and insert are serialized per tenant.
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
