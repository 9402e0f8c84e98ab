CREATE FUNCTION public.bind_call_sid(p_call_sid text) RETURNS uuid
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
