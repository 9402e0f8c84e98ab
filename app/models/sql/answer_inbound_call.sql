CREATE FUNCTION public.answer_inbound_call(
    p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean,
    p_now timestamptz
) RETURNS TABLE (
    outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text,
    language text, voice text
) LANGUAGE plpgsql VOLATILE AS $$
-- A voice webhook in one statement: route it (route_inbound_call binds the tenant and locks it
-- for an active number), admit or refuse it (call_limit_violation) and record it as call
-- p_call_id. The outcome:
--   created           a new call (ringing, or rejected with its end_reason), with its profile;
--   existing          the CallSid is already this tenant's call (a Twilio retry, an outbound call
--                     being answered, or a retry that won the race): that call and its profile;
--   unknown_outbound  Twilio asks about an outbound call we have no row for; nothing stored;
--   unrouted          no active number for p_to_number, or the CallSid is another tenant's.
#variable_conflict use_column
DECLARE
    r record;
    reason text;
    a_id uuid;
    a_greeting text;
    a_language text;
    a_voice text;
    inserted uuid;
    known record;
BEGIN
    SELECT * INTO r FROM route_inbound_call(p_call_sid, p_to_number);
    IF r.known_tenant_id IS NULL THEN
        IF p_outbound THEN
            RETURN QUERY SELECT 'unknown_outbound', NULL::uuid, NULL::text, NULL::uuid,
                                NULL::text, NULL::text, NULL::text;
            RETURN;
        END IF;
        IF r.number_id IS NULL OR r.number_status <> 'active' OR r.tenant_status IS NULL THEN
            RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,
                                NULL::text, NULL::text, NULL::text;
            RETURN;
        END IF;
        reason := call_limit_violation(r.tenant_id, r.tenant_status, r.tenant_plan, p_now);
        IF reason IS NULL THEN
            a_id := answering_profile(r.tenant_id, r.ai_profile_id);
            IF a_id IS NULL THEN
                reason := 'no_ai_profile';
            ELSE
                SELECT a.greeting, a.language, a.voice INTO a_greeting, a_language, a_voice
                  FROM ai_profiles a WHERE a.tenant_id = r.tenant_id AND a.id = a_id;
            END IF;
        END IF;
        INSERT INTO calls (
            id, tenant_id, phone_number_id, ai_profile_id, direction, status, from_number,
            to_number, provider_call_sid, started_at, ended_at, duration_seconds,
            billable_minutes, end_reason, created_at, updated_at
        ) VALUES (
            p_call_id, r.tenant_id, r.number_id, CASE WHEN reason IS NULL THEN a_id END,
            'inbound', CASE WHEN reason IS NULL THEN 'ringing' ELSE 'rejected' END,
            p_from_number, r.number, p_call_sid, p_now,
            CASE WHEN reason IS NOT NULL THEN p_now END,
            CASE WHEN reason IS NOT NULL THEN 0 END, 0, reason, p_now, p_now
        )
        ON CONFLICT (provider_call_sid) DO NOTHING
        RETURNING id INTO inserted;
        IF inserted IS NOT NULL THEN
            IF reason IS NOT NULL THEN
                RETURN QUERY SELECT 'created', inserted, 'rejected', NULL::uuid,
                                    NULL::text, NULL::text, NULL::text;
            ELSE
                RETURN QUERY SELECT 'created', inserted, 'ringing', a_id, a_greeting, a_language,
                                    a_voice;
            END IF;
            RETURN;
        END IF;
        -- A retry of this CallSid inserted first (it waited for our tenant lock, or we for its
        -- row): answer with that call, if it is this tenant's.
    END IF;
    SELECT c.id, c.status, a.id AS profile_id, a.greeting, a.language, a.voice INTO known
      FROM calls c
      LEFT JOIN ai_profiles a ON a.tenant_id = c.tenant_id AND a.id = c.ai_profile_id
     WHERE c.provider_call_sid = p_call_sid;
    IF known.id IS NULL THEN
        RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,
                            NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'existing', known.id, known.status::text, known.profile_id,
                        known.greeting::text, known.language::text, known.voice::text;
END
$$
