CREATE FUNCTION public.open_billing_period(p_tenant_id uuid, p_period text) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
-- Open the tenant's billing period p_period (fix its boundaries) and return its id. The periods
-- between it and those already opened are opened too, nearest first, so the chain of a tenant's
-- periods has no gap. Concurrent openers of one period insert it once (the first commits, the
-- other finds it).
DECLARE
    opened_id uuid;
    last_period text;
    first_period text;
    label text;
    step interval;
    bounds record;
BEGIN
    SELECT b.id INTO opened_id FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;
    IF FOUND THEN
        RETURN opened_id;
    END IF;
    SELECT max(b.period), min(b.period) INTO last_period, first_period
      FROM billing_periods b WHERE b.tenant_id = p_tenant_id;
    IF last_period IS NULL THEN
        label := p_period;
        step := interval '1 month';
    ELSIF p_period > last_period THEN
        step := interval '1 month';
        label := to_char(to_date(last_period, 'YYYY-MM') + step, 'YYYY-MM');
    ELSIF p_period < first_period THEN
        step := interval '-1 month';
        label := to_char(to_date(first_period, 'YYYY-MM') + step, 'YYYY-MM');
    ELSE
        -- Missing inside the opened chain (a gap, which openers never leave), open it alone
        -- rather than walk away from it for ever.
        step := interval '1 month';
        label := p_period;
    END IF;
    LOOP
        SELECT * INTO bounds FROM billing_period_bounds(p_tenant_id, label);
        INSERT INTO billing_periods (
            id, tenant_id, period, starts_at, ends_at, timezone, notified_percent, created_at,
            updated_at
        ) VALUES (
            gen_random_uuid(), p_tenant_id, label, bounds.period_start, bounds.period_end,
            bounds.period_timezone, 0, now(), now()
        ) ON CONFLICT (tenant_id, period) DO NOTHING;
        EXIT WHEN label = p_period;
        label := to_char(to_date(label, 'YYYY-MM') + step, 'YYYY-MM');
    END LOOP;
    SELECT b.id INTO opened_id FROM billing_periods b
     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;
    RETURN opened_id;
END
$$
