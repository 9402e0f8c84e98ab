CREATE FUNCTION public.billing_period_bounds(p_tenant_id uuid, p_period text)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, period_timezone text)
LANGUAGE plpgsql STABLE AS $$
-- The boundaries of the tenant's billing period p_period (YYYY-MM), the one home of the rule of
-- SPEC 9. An opened period (a row of billing_periods) keeps the boundaries it was opened with.
-- Any other is the calendar month in the tenant's current timezone, except that it starts where
-- the opened period before it ends and ends where the opened period after it starts, so the
-- periods stay contiguous when the timezone changes (a change applies from the next period).
DECLARE
    first_day date := to_date(p_period, 'YYYY-MM');
    opened record;
    tz text;
    previous_end timestamptz;
    next_start timestamptz;
BEGIN
    SELECT b.starts_at, b.ends_at, b.timezone INTO opened
      FROM billing_periods b WHERE b.tenant_id = p_tenant_id AND b.period = p_period;
    IF FOUND THEN
        RETURN QUERY SELECT opened.starts_at, opened.ends_at, opened.timezone::text;
        RETURN;
    END IF;
    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;
    SELECT b.ends_at INTO previous_end FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id
       AND b.period = to_char(first_day - interval '1 month', 'YYYY-MM');
    SELECT b.starts_at INTO next_start FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id
       AND b.period = to_char(first_day + interval '1 month', 'YYYY-MM');
    RETURN QUERY SELECT
        coalesce(previous_end, first_day::timestamp AT TIME ZONE tz),
        coalesce(next_start, (first_day + interval '1 month')::timestamp AT TIME ZONE tz),
        tz;
END
$$
