CREATE FUNCTION public.billing_period_at(p_tenant_id uuid, p_at timestamptz) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The tenant's billing period (YYYY-MM) that p_at falls in, by the boundaries of
-- billing_period_bounds. For metering (the period a call ended in), admission (the free plan's
-- minutes of the current period) and the usage report.
DECLARE
    tz text;
    local_month text;
    earlier record;
    after_period text;
BEGIN
    SELECT b.period, b.ends_at INTO earlier FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id AND b.starts_at <= p_at
     ORDER BY b.starts_at DESC LIMIT 1;
    IF FOUND AND p_at < earlier.ends_at THEN
        RETURN earlier.period;
    END IF;
    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;
    local_month := to_char(p_at AT TIME ZONE tz, 'YYYY-MM');
    IF earlier.period IS NOT NULL THEN
        -- Past the last opened period, the next one starts where that one ends.
        RETURN greatest(
            to_char(to_date(earlier.period, 'YYYY-MM') + interval '1 month', 'YYYY-MM'),
            local_month);
    END IF;
    SELECT b.period INTO after_period FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id ORDER BY b.starts_at LIMIT 1;
    IF after_period IS NOT NULL THEN
        -- Before the first opened period, the one before it ends where that one starts.
        RETURN least(
            to_char(to_date(after_period, 'YYYY-MM') - interval '1 month', 'YYYY-MM'),
            local_month);
    END IF;
    RETURN local_month;
END
$$
