CREATE FUNCTION public.answering_profile(p_tenant_id uuid, p_profile_id uuid) RETURNS uuid
LANGUAGE sql STABLE AS $$
-- The AI profile that answers a number's calls, the number's own (p_profile_id) if it has one,
-- else the tenant's default; NULL if neither. For inbound (answer_inbound_call) and outbound calls.
SELECT a.id FROM ai_profiles a
 WHERE a.tenant_id = p_tenant_id AND (a.id = p_profile_id OR a.is_default)
 ORDER BY (a.id = p_profile_id) DESC NULLS LAST
 LIMIT 1
$$
