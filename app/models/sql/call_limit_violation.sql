CREATE FUNCTION public.call_limit_violation(
    p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamptz
) RETURNS text LANGUAGE plpgsql STABLE AS $$
-- Admission: why the tenant may not start another call now (a call end_reason), or NULL if it may.
-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing or
-- talking within the cut-offs of call_line_cutoffs; past them its final callback was lost and it
-- no longer counts. Each count is a range of its partial index. Exact under
-- concurrency only while the caller holds the tenant row lock until its insert (inbound: route_inbound_call;
-- outbound: CallService.create_outbound). A capped plan's minutes count in the tenant's current
-- billing period (billing_period_at, in the tenant's timezone).
DECLARE
    -- Computed here, not in the queries: the planner then sees each cut-off as a value and
    -- reads only the recent end of the partial indexes.
    ringing_since timestamptz;
    talking_since timestamptz;
    plan record;
    active bigint;
    used bigint;
    current_period text;
BEGIN
    SELECT c.ringing_since, c.talking_since INTO ringing_since, talking_since
      FROM call_line_cutoffs(p_now) AS c;
    IF p_tenant_status = 'suspended' THEN
        RETURN 'tenant_suspended';
    END IF;
    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped
      INTO plan FROM plans WHERE name = p_plan;
    SELECT (SELECT count(*) FROM calls
             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')
               AND created_at > ringing_since)
         + (SELECT count(*) FROM calls
             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')
               AND answered_at > talking_since)
      INTO active;
    IF active >= plan.max_concurrent_calls THEN
        RETURN 'concurrency_limit';
    END IF;
    IF plan.capped THEN
        current_period := billing_period_at(p_tenant_id, p_now);
        SELECT coalesce(sum(minutes), 0) INTO used
          FROM usage_records WHERE tenant_id = p_tenant_id AND period = current_period;
        IF used >= plan.included_minutes THEN
            RETURN 'minutes_exhausted';
        END IF;
    END IF;
    RETURN NULL;
END
$$
