"""Billing: periods in the tenant's month, plan history, invoices and their numbering.

- billing_periods: a tenant's periods once opened (boundaries fixed), a contiguous chain cut by
  the SQL functions billing_period_bounds / billing_period_at / open_billing_period.
- usage_records.billed_period: the period whose invoice bills the minutes (late usage goes to the
  next open period); existing rows are billed on their own period.
- plan_changes: the plan history (when, from, to); each existing tenant gets its starting row,
  at its creation, with its current plan.
- invoices (immutable once issued: the app role may update only the void columns, see env.py)
  and invoice_counters (a platform table: one row per year, gapless numbers).
- Admission counts a capped plan's minutes in the tenant's current billing period, which the SQL
  functions compute (call_limit_violation and answer_inbound_call lose their p_period).

Usage recorded before this revision keeps its UTC-month period.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_policy import PGPolicy
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("billing_periods", "plan_changes", "invoices")


def upgrade() -> None:
    op.create_table(
        "invoice_counters",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_invoice_counters")),
    )
    op.create_table(
        "billing_periods",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified_percent", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "notified_percent IN (0, 80, 100)", name=op.f("ck_billing_periods_notified_percent")
        ),
        sa.CheckConstraint("starts_at < ends_at", name=op.f("ck_billing_periods_ordered")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_billing_periods_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_periods")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_billing_periods_tenant_id_id")),
        sa.UniqueConstraint(
            "tenant_id", "period", name=op.f("uq_billing_periods_tenant_id_period")
        ),
    )
    op.create_index(
        "ix_billing_periods_tenant_id_starts_at",
        "billing_periods",
        ["tenant_id", "starts_at"],
        unique=False,
    )
    op.create_table(
        "invoices",
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("lines", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("subtotal_cents", sa.Integer(), nullable=False),
        sa.Column("total_cents", sa.Integer(), nullable=False),
        sa.Column("plan", sa.String(length=20), nullable=True),
        sa.Column("included_minutes", sa.Integer(), nullable=False),
        sa.Column("used_minutes", sa.Integer(), nullable=False),
        sa.Column("overage_cents_per_minute", sa.Integer(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(status = 'void') = (voided_at IS NOT NULL AND void_reason IS NOT NULL)",
            name=op.f("ck_invoices_void_has_reason"),
        ),
        sa.CheckConstraint("status IN ('issued', 'void')", name=op.f("ck_invoices_status")),
        sa.CheckConstraint("total_cents = subtotal_cents", name=op.f("ck_invoices_no_tax")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_invoices_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_invoices_number")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_invoices_tenant_id_id")),
        sa.UniqueConstraint("tenant_id", "period", name=op.f("uq_invoices_tenant_id_period")),
    )
    op.create_index(
        "ix_invoices_tenant_id_created_at_id",
        "invoices",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_table(
        "plan_changes",
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_plan", sa.String(length=20), nullable=True),
        sa.Column("to_plan", sa.String(length=20), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["from_plan"], ["plans.name"], name=op.f("fk_plan_changes_from_plan_plans")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_plan_changes_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["to_plan"], ["plans.name"], name=op.f("fk_plan_changes_to_plan_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_changes")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_plan_changes_tenant_id_id")),
    )
    op.create_index(
        "ix_plan_changes_tenant_id_changed_at",
        "plan_changes",
        ["tenant_id", "changed_at"],
        unique=False,
    )
    op.add_column("usage_records", sa.Column("billed_period", sa.String(length=7), nullable=True))
    op.execute("UPDATE usage_records SET billed_period = period")
    op.alter_column("usage_records", "billed_period", nullable=False)
    op.create_index(
        "ix_usage_records_tenant_id_billed_period",
        "usage_records",
        ["tenant_id", "billed_period"],
        unique=False,
    )

    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        "INSERT INTO plan_changes (id, tenant_id, changed_at, from_plan, to_plan)"
        " SELECT gen_random_uuid(), id, created_at, NULL, plan FROM tenants"
    )
    # The SQL functions as of this revision (today's: app/models/sql/).
    public_billing_period_bounds = PGFunction(
        schema="public",
        signature="billing_period_bounds(p_tenant_id uuid, p_period text)",
        definition="returns TABLE (period_start timestamptz, period_end timestamptz, period_timezone text)\nLANGUAGE plpgsql STABLE AS $$\n-- The boundaries of the tenant's billing period p_period (YYYY-MM), the one home of the rule of\n-- SPEC 9. An opened period (a row of billing_periods) keeps the boundaries it was opened with.\n-- Any other is the calendar month in the tenant's current timezone, except that it starts where\n-- the opened period before it ends and ends where the opened period after it starts, so the\n-- periods stay contiguous when the timezone changes (a change applies from the next period).\nDECLARE\n    first_day date := to_date(p_period, 'YYYY-MM');\n    opened record;\n    tz text;\n    previous_end timestamptz;\n    next_start timestamptz;\nBEGIN\n    SELECT b.starts_at, b.ends_at, b.timezone INTO opened\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN QUERY SELECT opened.starts_at, opened.ends_at, opened.timezone::text;\n        RETURN;\n    END IF;\n    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;\n    SELECT b.ends_at INTO previous_end FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id\n       AND b.period = to_char(first_day - interval '1 month', 'YYYY-MM');\n    SELECT b.starts_at INTO next_start FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id\n       AND b.period = to_char(first_day + interval '1 month', 'YYYY-MM');\n    RETURN QUERY SELECT\n        coalesce(previous_end, first_day::timestamp AT TIME ZONE tz),\n        coalesce(next_start, (first_day + interval '1 month')::timestamp AT TIME ZONE tz),\n        tz;\nEND\n$$",
    )
    op.create_entity(public_billing_period_bounds)

    public_billing_period_at = PGFunction(
        schema="public",
        signature="billing_period_at(p_tenant_id uuid, p_at timestamptz)",
        definition="returns text\nLANGUAGE plpgsql STABLE AS $$\n-- The tenant's billing period (YYYY-MM) that p_at falls in, by the boundaries of\n-- billing_period_bounds. For metering (the period a call ended in), admission (the free plan's\n-- minutes of the current period) and the usage report.\nDECLARE\n    tz text;\n    local_month text;\n    earlier record;\n    after_period text;\nBEGIN\n    SELECT b.period, b.ends_at INTO earlier FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.starts_at <= p_at\n     ORDER BY b.starts_at DESC LIMIT 1;\n    IF FOUND AND p_at < earlier.ends_at THEN\n        RETURN earlier.period;\n    END IF;\n    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;\n    local_month := to_char(p_at AT TIME ZONE tz, 'YYYY-MM');\n    IF earlier.period IS NOT NULL THEN\n        -- Past the last opened period, the next one starts where that one ends.\n        RETURN greatest(\n            to_char(to_date(earlier.period, 'YYYY-MM') + interval '1 month', 'YYYY-MM'),\n            local_month);\n    END IF;\n    SELECT b.period INTO after_period FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id ORDER BY b.starts_at LIMIT 1;\n    IF after_period IS NOT NULL THEN\n        -- Before the first opened period, the one before it ends where that one starts.\n        RETURN least(\n            to_char(to_date(after_period, 'YYYY-MM') - interval '1 month', 'YYYY-MM'),\n            local_month);\n    END IF;\n    RETURN local_month;\nEND\n$$",
    )
    op.create_entity(public_billing_period_at)

    public_open_billing_period = PGFunction(
        schema="public",
        signature="open_billing_period(p_tenant_id uuid, p_period text)",
        definition="returns uuid\nLANGUAGE plpgsql VOLATILE AS $$\n-- Open the tenant's billing period p_period (fix its boundaries) and return its id. The periods\n-- between it and those already opened are opened too, nearest first, so the chain of a tenant's\n-- periods has no gap. Concurrent openers of one period insert it once (the first commits, the\n-- other finds it).\nDECLARE\n    opened_id uuid;\n    last_period text;\n    first_period text;\n    label text;\n    step interval;\n    bounds record;\nBEGIN\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN opened_id;\n    END IF;\n    SELECT max(b.period), min(b.period) INTO last_period, first_period\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id;\n    IF last_period IS NULL THEN\n        label := p_period;\n        step := interval '1 month';\n    ELSIF p_period > last_period THEN\n        step := interval '1 month';\n        label := to_char(to_date(last_period, 'YYYY-MM') + step, 'YYYY-MM');\n    ELSE\n        step := interval '-1 month';\n        label := to_char(to_date(first_period, 'YYYY-MM') + step, 'YYYY-MM');\n    END IF;\n    LOOP\n        SELECT * INTO bounds FROM billing_period_bounds(p_tenant_id, label);\n        INSERT INTO billing_periods (\n            id, tenant_id, period, starts_at, ends_at, timezone, notified_percent, created_at,\n            updated_at\n        ) VALUES (\n            gen_random_uuid(), p_tenant_id, label, bounds.period_start, bounds.period_end,\n            bounds.period_timezone, 0, now(), now()\n        ) ON CONFLICT (tenant_id, period) DO NOTHING;\n        EXIT WHEN label = p_period;\n        label := to_char(to_date(label, 'YYYY-MM') + step, 'YYYY-MM');\n    END LOOP;\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    RETURN opened_id;\nEND\n$$",
    )
    op.create_entity(public_open_billing_period)

    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation( p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamptz )",
        definition="returns text LANGUAGE plpgsql STABLE AS $$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing (for at\n-- most 3 minutes since it was created) or talking (for at most 4 h 05 min since it was answered\\:\n-- the longest profile limit, 14,400 s, plus a margin); past that its final callback was lost and\n-- it no longer counts. Each count is a range of its partial index. Exact under concurrency only\n-- while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound). A capped plan's minutes count in the tenant's current\n-- billing period (billing_period_at, in the tenant's timezone).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz := p_now - interval '3 minutes';\n    talking_since timestamptz := p_now - interval '4 hours 5 minutes';\n    plan record;\n    active bigint;\n    used bigint;\n    current_period text;\nBEGIN\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        current_period := billing_period_at(p_tenant_id, p_now);\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = current_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$$",
    )
    op.create_entity(public_call_limit_violation)

    public_answer_inbound_call = PGFunction(
        schema="public",
        signature="answer_inbound_call( p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean, p_now timestamptz )",
        definition="returns TABLE (\n    outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text,\n    language text, voice text\n) LANGUAGE plpgsql VOLATILE AS $$\n-- A voice webhook in one statement\\: route it (route_inbound_call binds the tenant and locks it\n-- for an active number), admit or refuse it (call_limit_violation) and record it as call\n-- p_call_id. The outcome\\:\n--   created           a new call (ringing, or rejected with its end_reason), with its profile;\n--   existing          the CallSid is already this tenant's call (a Twilio retry, an outbound call\n--                     being answered, or a retry that won the race)\\: that call and its profile;\n--   unknown_outbound  Twilio asks about an outbound call we have no row for; nothing stored;\n--   unrouted          no active number for p_to_number, or the CallSid is another tenant's.\n#variable_conflict use_column\nDECLARE\n    r record;\n    reason text;\n    a_id uuid;\n    a_greeting text;\n    a_language text;\n    a_voice text;\n    inserted uuid;\n    known record;\nBEGIN\n    SELECT * INTO r FROM route_inbound_call(p_call_sid, p_to_number);\n    IF r.known_tenant_id IS NULL THEN\n        IF p_outbound THEN\n            RETURN QUERY SELECT 'unknown_outbound', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        IF r.number_id IS NULL OR r.number_status <> 'active' OR r.tenant_status IS NULL THEN\n            RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        reason := call_limit_violation(r.tenant_id, r.tenant_status, r.tenant_plan, p_now);\n        IF reason IS NULL THEN\n            a_id := answering_profile(r.tenant_id, r.ai_profile_id);\n            IF a_id IS NULL THEN\n                reason := 'no_ai_profile';\n            ELSE\n                SELECT a.greeting, a.language, a.voice INTO a_greeting, a_language, a_voice\n                  FROM ai_profiles a WHERE a.tenant_id = r.tenant_id AND a.id = a_id;\n            END IF;\n        END IF;\n        INSERT INTO calls (\n            id, tenant_id, phone_number_id, ai_profile_id, direction, status, from_number,\n            to_number, provider_call_sid, started_at, ended_at, duration_seconds,\n            billable_minutes, end_reason, created_at, updated_at\n        ) VALUES (\n            p_call_id, r.tenant_id, r.number_id, CASE WHEN reason IS NULL THEN a_id END,\n            'inbound', CASE WHEN reason IS NULL THEN 'ringing' ELSE 'rejected' END,\n            p_from_number, r.number, p_call_sid, p_now,\n            CASE WHEN reason IS NOT NULL THEN p_now END,\n            CASE WHEN reason IS NOT NULL THEN 0 END, 0, reason, p_now, p_now\n        )\n        ON CONFLICT (provider_call_sid) DO NOTHING\n        RETURNING id INTO inserted;\n        IF inserted IS NOT NULL THEN\n            IF reason IS NOT NULL THEN\n                RETURN QUERY SELECT 'created', inserted, 'rejected', NULL::uuid,\n                                    NULL::text, NULL::text, NULL::text;\n            ELSE\n                RETURN QUERY SELECT 'created', inserted, 'ringing', a_id, a_greeting, a_language,\n                                    a_voice;\n            END IF;\n            RETURN;\n        END IF;\n        -- A retry of this CallSid inserted first (it waited for our tenant lock, or we for its\n        -- row)\\: answer with that call, if it is this tenant's.\n    END IF;\n    SELECT c.id, c.status, a.id AS profile_id, a.greeting, a.language, a.voice INTO known\n      FROM calls c\n      LEFT JOIN ai_profiles a ON a.tenant_id = c.tenant_id AND a.id = c.ai_profile_id\n     WHERE c.provider_call_sid = p_call_sid;\n    IF known.id IS NULL THEN\n        RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                            NULL::text, NULL::text, NULL::text;\n        RETURN;\n    END IF;\n    RETURN QUERY SELECT 'existing', known.id, known.status::text, known.profile_id,\n                        known.greeting::text, known.language::text, known.voice::text;\nEND\n$$",
    )
    op.create_entity(public_answer_inbound_call)

    public_billing_periods_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.billing_periods",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.create_entity(public_billing_periods_tenant_isolation)

    public_invoices_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.invoices",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.create_entity(public_invoices_tenant_isolation)

    public_plan_changes_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.plan_changes",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.create_entity(public_plan_changes_tenant_isolation)

    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation(p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamp with time zone, p_period text)",
        definition="returns text\n LANGUAGE plpgsql\n STABLE\nAS $function$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing (for at\n-- most 3 minutes since it was created) or talking (for at most 4 h 05 min since it was answered\\:\n-- the longest profile limit, 14,400 s, plus a margin); past that its final callback was lost and\n-- it no longer counts. Each count is a range of its partial index. Exact under concurrency only\n-- while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz := p_now - interval '3 minutes';\n    talking_since timestamptz := p_now - interval '4 hours 5 minutes';\n    plan record;\n    active bigint;\n    used bigint;\nBEGIN\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = p_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$function$",
    )
    op.drop_entity(public_call_limit_violation)

    public_answer_inbound_call = PGFunction(
        schema="public",
        signature="answer_inbound_call(p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean, p_now timestamp with time zone, p_period text)",
        definition="returns TABLE(outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text, language text, voice text)\n LANGUAGE plpgsql\nAS $function$\n-- A voice webhook in one statement\\: route it (route_inbound_call binds the tenant and locks it\n-- for an active number), admit or refuse it (call_limit_violation) and record it as call\n-- p_call_id. The outcome\\:\n--   created           a new call (ringing, or rejected with its end_reason), with its profile;\n--   existing          the CallSid is already this tenant's call (a Twilio retry, an outbound call\n--                     being answered, or a retry that won the race)\\: that call and its profile;\n--   unknown_outbound  Twilio asks about an outbound call we have no row for; nothing stored;\n--   unrouted          no active number for p_to_number, or the CallSid is another tenant's.\n#variable_conflict use_column\nDECLARE\n    r record;\n    reason text;\n    a_id uuid;\n    a_greeting text;\n    a_language text;\n    a_voice text;\n    inserted uuid;\n    known record;\nBEGIN\n    SELECT * INTO r FROM route_inbound_call(p_call_sid, p_to_number);\n    IF r.known_tenant_id IS NULL THEN\n        IF p_outbound THEN\n            RETURN QUERY SELECT 'unknown_outbound', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        IF r.number_id IS NULL OR r.number_status <> 'active' OR r.tenant_status IS NULL THEN\n            RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        reason := call_limit_violation(r.tenant_id, r.tenant_status, r.tenant_plan, p_now,\n                                       p_period);\n        IF reason IS NULL THEN\n            a_id := answering_profile(r.tenant_id, r.ai_profile_id);\n            IF a_id IS NULL THEN\n                reason := 'no_ai_profile';\n            ELSE\n                SELECT a.greeting, a.language, a.voice INTO a_greeting, a_language, a_voice\n                  FROM ai_profiles a WHERE a.tenant_id = r.tenant_id AND a.id = a_id;\n            END IF;\n        END IF;\n        INSERT INTO calls (\n            id, tenant_id, phone_number_id, ai_profile_id, direction, status, from_number,\n            to_number, provider_call_sid, started_at, ended_at, duration_seconds,\n            billable_minutes, end_reason, created_at, updated_at\n        ) VALUES (\n            p_call_id, r.tenant_id, r.number_id, CASE WHEN reason IS NULL THEN a_id END,\n            'inbound', CASE WHEN reason IS NULL THEN 'ringing' ELSE 'rejected' END,\n            p_from_number, r.number, p_call_sid, p_now,\n            CASE WHEN reason IS NOT NULL THEN p_now END,\n            CASE WHEN reason IS NOT NULL THEN 0 END, 0, reason, p_now, p_now\n        )\n        ON CONFLICT (provider_call_sid) DO NOTHING\n        RETURNING id INTO inserted;\n        IF inserted IS NOT NULL THEN\n            IF reason IS NOT NULL THEN\n                RETURN QUERY SELECT 'created', inserted, 'rejected', NULL::uuid,\n                                    NULL::text, NULL::text, NULL::text;\n            ELSE\n                RETURN QUERY SELECT 'created', inserted, 'ringing', a_id, a_greeting, a_language,\n                                    a_voice;\n            END IF;\n            RETURN;\n        END IF;\n        -- A retry of this CallSid inserted first (it waited for our tenant lock, or we for its\n        -- row)\\: answer with that call, if it is this tenant's.\n    END IF;\n    SELECT c.id, c.status, a.id AS profile_id, a.greeting, a.language, a.voice INTO known\n      FROM calls c\n      LEFT JOIN ai_profiles a ON a.tenant_id = c.tenant_id AND a.id = c.ai_profile_id\n     WHERE c.provider_call_sid = p_call_sid;\n    IF known.id IS NULL THEN\n        RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                            NULL::text, NULL::text, NULL::text;\n        RETURN;\n    END IF;\n    RETURN QUERY SELECT 'existing', known.id, known.status::text, known.profile_id,\n                        known.greeting::text, known.language::text, known.voice::text;\nEND\n$function$",
    )
    op.drop_entity(public_answer_inbound_call)


def downgrade() -> None:
    public_answer_inbound_call = PGFunction(
        schema="public",
        signature="answer_inbound_call(p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean, p_now timestamp with time zone, p_period text)",
        definition="returns TABLE(outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text, language text, voice text)\n LANGUAGE plpgsql\nAS $function$\n-- A voice webhook in one statement\\: route it (route_inbound_call binds the tenant and locks it\n-- for an active number), admit or refuse it (call_limit_violation) and record it as call\n-- p_call_id. The outcome\\:\n--   created           a new call (ringing, or rejected with its end_reason), with its profile;\n--   existing          the CallSid is already this tenant's call (a Twilio retry, an outbound call\n--                     being answered, or a retry that won the race)\\: that call and its profile;\n--   unknown_outbound  Twilio asks about an outbound call we have no row for; nothing stored;\n--   unrouted          no active number for p_to_number, or the CallSid is another tenant's.\n#variable_conflict use_column\nDECLARE\n    r record;\n    reason text;\n    a_id uuid;\n    a_greeting text;\n    a_language text;\n    a_voice text;\n    inserted uuid;\n    known record;\nBEGIN\n    SELECT * INTO r FROM route_inbound_call(p_call_sid, p_to_number);\n    IF r.known_tenant_id IS NULL THEN\n        IF p_outbound THEN\n            RETURN QUERY SELECT 'unknown_outbound', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        IF r.number_id IS NULL OR r.number_status <> 'active' OR r.tenant_status IS NULL THEN\n            RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        reason := call_limit_violation(r.tenant_id, r.tenant_status, r.tenant_plan, p_now,\n                                       p_period);\n        IF reason IS NULL THEN\n            a_id := answering_profile(r.tenant_id, r.ai_profile_id);\n            IF a_id IS NULL THEN\n                reason := 'no_ai_profile';\n            ELSE\n                SELECT a.greeting, a.language, a.voice INTO a_greeting, a_language, a_voice\n                  FROM ai_profiles a WHERE a.tenant_id = r.tenant_id AND a.id = a_id;\n            END IF;\n        END IF;\n        INSERT INTO calls (\n            id, tenant_id, phone_number_id, ai_profile_id, direction, status, from_number,\n            to_number, provider_call_sid, started_at, ended_at, duration_seconds,\n            billable_minutes, end_reason, created_at, updated_at\n        ) VALUES (\n            p_call_id, r.tenant_id, r.number_id, CASE WHEN reason IS NULL THEN a_id END,\n            'inbound', CASE WHEN reason IS NULL THEN 'ringing' ELSE 'rejected' END,\n            p_from_number, r.number, p_call_sid, p_now,\n            CASE WHEN reason IS NOT NULL THEN p_now END,\n            CASE WHEN reason IS NOT NULL THEN 0 END, 0, reason, p_now, p_now\n        )\n        ON CONFLICT (provider_call_sid) DO NOTHING\n        RETURNING id INTO inserted;\n        IF inserted IS NOT NULL THEN\n            IF reason IS NOT NULL THEN\n                RETURN QUERY SELECT 'created', inserted, 'rejected', NULL::uuid,\n                                    NULL::text, NULL::text, NULL::text;\n            ELSE\n                RETURN QUERY SELECT 'created', inserted, 'ringing', a_id, a_greeting, a_language,\n                                    a_voice;\n            END IF;\n            RETURN;\n        END IF;\n        -- A retry of this CallSid inserted first (it waited for our tenant lock, or we for its\n        -- row)\\: answer with that call, if it is this tenant's.\n    END IF;\n    SELECT c.id, c.status, a.id AS profile_id, a.greeting, a.language, a.voice INTO known\n      FROM calls c\n      LEFT JOIN ai_profiles a ON a.tenant_id = c.tenant_id AND a.id = c.ai_profile_id\n     WHERE c.provider_call_sid = p_call_sid;\n    IF known.id IS NULL THEN\n        RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                            NULL::text, NULL::text, NULL::text;\n        RETURN;\n    END IF;\n    RETURN QUERY SELECT 'existing', known.id, known.status::text, known.profile_id,\n                        known.greeting::text, known.language::text, known.voice::text;\nEND\n$function$",
    )
    op.create_entity(public_answer_inbound_call)

    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation(p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamp with time zone, p_period text)",
        definition="returns text\n LANGUAGE plpgsql\n STABLE\nAS $function$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing (for at\n-- most 3 minutes since it was created) or talking (for at most 4 h 05 min since it was answered\\:\n-- the longest profile limit, 14,400 s, plus a margin); past that its final callback was lost and\n-- it no longer counts. Each count is a range of its partial index. Exact under concurrency only\n-- while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz := p_now - interval '3 minutes';\n    talking_since timestamptz := p_now - interval '4 hours 5 minutes';\n    plan record;\n    active bigint;\n    used bigint;\nBEGIN\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = p_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$function$",
    )
    op.create_entity(public_call_limit_violation)

    public_plan_changes_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.plan_changes",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.drop_entity(public_plan_changes_tenant_isolation)

    public_invoices_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.invoices",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.drop_entity(public_invoices_tenant_isolation)

    public_billing_periods_tenant_isolation = PGPolicy(
        schema="public",
        signature="tenant_isolation",
        on_entity="public.billing_periods",
        definition="AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on') WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid OR current_setting('app.system', true) = 'on')",
    )
    op.drop_entity(public_billing_periods_tenant_isolation)

    public_answer_inbound_call = PGFunction(
        schema="public",
        signature="answer_inbound_call( p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean, p_now timestamptz )",
        definition="returns TABLE (\n    outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text,\n    language text, voice text\n) LANGUAGE plpgsql VOLATILE AS $$\n-- A voice webhook in one statement\\: route it (route_inbound_call binds the tenant and locks it\n-- for an active number), admit or refuse it (call_limit_violation) and record it as call\n-- p_call_id. The outcome\\:\n--   created           a new call (ringing, or rejected with its end_reason), with its profile;\n--   existing          the CallSid is already this tenant's call (a Twilio retry, an outbound call\n--                     being answered, or a retry that won the race)\\: that call and its profile;\n--   unknown_outbound  Twilio asks about an outbound call we have no row for; nothing stored;\n--   unrouted          no active number for p_to_number, or the CallSid is another tenant's.\n#variable_conflict use_column\nDECLARE\n    r record;\n    reason text;\n    a_id uuid;\n    a_greeting text;\n    a_language text;\n    a_voice text;\n    inserted uuid;\n    known record;\nBEGIN\n    SELECT * INTO r FROM route_inbound_call(p_call_sid, p_to_number);\n    IF r.known_tenant_id IS NULL THEN\n        IF p_outbound THEN\n            RETURN QUERY SELECT 'unknown_outbound', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        IF r.number_id IS NULL OR r.number_status <> 'active' OR r.tenant_status IS NULL THEN\n            RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                                NULL::text, NULL::text, NULL::text;\n            RETURN;\n        END IF;\n        reason := call_limit_violation(r.tenant_id, r.tenant_status, r.tenant_plan, p_now);\n        IF reason IS NULL THEN\n            a_id := answering_profile(r.tenant_id, r.ai_profile_id);\n            IF a_id IS NULL THEN\n                reason := 'no_ai_profile';\n            ELSE\n                SELECT a.greeting, a.language, a.voice INTO a_greeting, a_language, a_voice\n                  FROM ai_profiles a WHERE a.tenant_id = r.tenant_id AND a.id = a_id;\n            END IF;\n        END IF;\n        INSERT INTO calls (\n            id, tenant_id, phone_number_id, ai_profile_id, direction, status, from_number,\n            to_number, provider_call_sid, started_at, ended_at, duration_seconds,\n            billable_minutes, end_reason, created_at, updated_at\n        ) VALUES (\n            p_call_id, r.tenant_id, r.number_id, CASE WHEN reason IS NULL THEN a_id END,\n            'inbound', CASE WHEN reason IS NULL THEN 'ringing' ELSE 'rejected' END,\n            p_from_number, r.number, p_call_sid, p_now,\n            CASE WHEN reason IS NOT NULL THEN p_now END,\n            CASE WHEN reason IS NOT NULL THEN 0 END, 0, reason, p_now, p_now\n        )\n        ON CONFLICT (provider_call_sid) DO NOTHING\n        RETURNING id INTO inserted;\n        IF inserted IS NOT NULL THEN\n            IF reason IS NOT NULL THEN\n                RETURN QUERY SELECT 'created', inserted, 'rejected', NULL::uuid,\n                                    NULL::text, NULL::text, NULL::text;\n            ELSE\n                RETURN QUERY SELECT 'created', inserted, 'ringing', a_id, a_greeting, a_language,\n                                    a_voice;\n            END IF;\n            RETURN;\n        END IF;\n        -- A retry of this CallSid inserted first (it waited for our tenant lock, or we for its\n        -- row)\\: answer with that call, if it is this tenant's.\n    END IF;\n    SELECT c.id, c.status, a.id AS profile_id, a.greeting, a.language, a.voice INTO known\n      FROM calls c\n      LEFT JOIN ai_profiles a ON a.tenant_id = c.tenant_id AND a.id = c.ai_profile_id\n     WHERE c.provider_call_sid = p_call_sid;\n    IF known.id IS NULL THEN\n        RETURN QUERY SELECT 'unrouted', NULL::uuid, NULL::text, NULL::uuid,\n                            NULL::text, NULL::text, NULL::text;\n        RETURN;\n    END IF;\n    RETURN QUERY SELECT 'existing', known.id, known.status::text, known.profile_id,\n                        known.greeting::text, known.language::text, known.voice::text;\nEND\n$$",
    )
    op.drop_entity(public_answer_inbound_call)

    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation( p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamptz )",
        definition="returns text LANGUAGE plpgsql STABLE AS $$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing (for at\n-- most 3 minutes since it was created) or talking (for at most 4 h 05 min since it was answered\\:\n-- the longest profile limit, 14,400 s, plus a margin); past that its final callback was lost and\n-- it no longer counts. Each count is a range of its partial index. Exact under concurrency only\n-- while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound). A capped plan's minutes count in the tenant's current\n-- billing period (billing_period_at, in the tenant's timezone).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz := p_now - interval '3 minutes';\n    talking_since timestamptz := p_now - interval '4 hours 5 minutes';\n    plan record;\n    active bigint;\n    used bigint;\n    current_period text;\nBEGIN\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        current_period := billing_period_at(p_tenant_id, p_now);\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = current_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$$",
    )
    op.drop_entity(public_call_limit_violation)

    public_open_billing_period = PGFunction(
        schema="public",
        signature="open_billing_period(p_tenant_id uuid, p_period text)",
        definition="returns uuid\nLANGUAGE plpgsql VOLATILE AS $$\n-- Open the tenant's billing period p_period (fix its boundaries) and return its id. The periods\n-- between it and those already opened are opened too, nearest first, so the chain of a tenant's\n-- periods has no gap. Concurrent openers of one period insert it once (the first commits, the\n-- other finds it).\nDECLARE\n    opened_id uuid;\n    last_period text;\n    first_period text;\n    label text;\n    step interval;\n    bounds record;\nBEGIN\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN opened_id;\n    END IF;\n    SELECT max(b.period), min(b.period) INTO last_period, first_period\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id;\n    IF last_period IS NULL THEN\n        label := p_period;\n        step := interval '1 month';\n    ELSIF p_period > last_period THEN\n        step := interval '1 month';\n        label := to_char(to_date(last_period, 'YYYY-MM') + step, 'YYYY-MM');\n    ELSE\n        step := interval '-1 month';\n        label := to_char(to_date(first_period, 'YYYY-MM') + step, 'YYYY-MM');\n    END IF;\n    LOOP\n        SELECT * INTO bounds FROM billing_period_bounds(p_tenant_id, label);\n        INSERT INTO billing_periods (\n            id, tenant_id, period, starts_at, ends_at, timezone, notified_percent, created_at,\n            updated_at\n        ) VALUES (\n            gen_random_uuid(), p_tenant_id, label, bounds.period_start, bounds.period_end,\n            bounds.period_timezone, 0, now(), now()\n        ) ON CONFLICT (tenant_id, period) DO NOTHING;\n        EXIT WHEN label = p_period;\n        label := to_char(to_date(label, 'YYYY-MM') + step, 'YYYY-MM');\n    END LOOP;\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    RETURN opened_id;\nEND\n$$",
    )
    op.drop_entity(public_open_billing_period)

    public_billing_period_at = PGFunction(
        schema="public",
        signature="billing_period_at(p_tenant_id uuid, p_at timestamptz)",
        definition="returns text\nLANGUAGE plpgsql STABLE AS $$\n-- The tenant's billing period (YYYY-MM) that p_at falls in, by the boundaries of\n-- billing_period_bounds. For metering (the period a call ended in), admission (the free plan's\n-- minutes of the current period) and the usage report.\nDECLARE\n    tz text;\n    local_month text;\n    earlier record;\n    after_period text;\nBEGIN\n    SELECT b.period, b.ends_at INTO earlier FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.starts_at <= p_at\n     ORDER BY b.starts_at DESC LIMIT 1;\n    IF FOUND AND p_at < earlier.ends_at THEN\n        RETURN earlier.period;\n    END IF;\n    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;\n    local_month := to_char(p_at AT TIME ZONE tz, 'YYYY-MM');\n    IF earlier.period IS NOT NULL THEN\n        -- Past the last opened period, the next one starts where that one ends.\n        RETURN greatest(\n            to_char(to_date(earlier.period, 'YYYY-MM') + interval '1 month', 'YYYY-MM'),\n            local_month);\n    END IF;\n    SELECT b.period INTO after_period FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id ORDER BY b.starts_at LIMIT 1;\n    IF after_period IS NOT NULL THEN\n        -- Before the first opened period, the one before it ends where that one starts.\n        RETURN least(\n            to_char(to_date(after_period, 'YYYY-MM') - interval '1 month', 'YYYY-MM'),\n            local_month);\n    END IF;\n    RETURN local_month;\nEND\n$$",
    )
    op.drop_entity(public_billing_period_at)

    public_billing_period_bounds = PGFunction(
        schema="public",
        signature="billing_period_bounds(p_tenant_id uuid, p_period text)",
        definition="returns TABLE (period_start timestamptz, period_end timestamptz, period_timezone text)\nLANGUAGE plpgsql STABLE AS $$\n-- The boundaries of the tenant's billing period p_period (YYYY-MM), the one home of the rule of\n-- SPEC 9. An opened period (a row of billing_periods) keeps the boundaries it was opened with.\n-- Any other is the calendar month in the tenant's current timezone, except that it starts where\n-- the opened period before it ends and ends where the opened period after it starts, so the\n-- periods stay contiguous when the timezone changes (a change applies from the next period).\nDECLARE\n    first_day date := to_date(p_period, 'YYYY-MM');\n    opened record;\n    tz text;\n    previous_end timestamptz;\n    next_start timestamptz;\nBEGIN\n    SELECT b.starts_at, b.ends_at, b.timezone INTO opened\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN QUERY SELECT opened.starts_at, opened.ends_at, opened.timezone::text;\n        RETURN;\n    END IF;\n    SELECT t.timezone INTO tz FROM tenants t WHERE t.id = p_tenant_id;\n    SELECT b.ends_at INTO previous_end FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id\n       AND b.period = to_char(first_day - interval '1 month', 'YYYY-MM');\n    SELECT b.starts_at INTO next_start FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id\n       AND b.period = to_char(first_day + interval '1 month', 'YYYY-MM');\n    RETURN QUERY SELECT\n        coalesce(previous_end, first_day::timestamp AT TIME ZONE tz),\n        coalesce(next_start, (first_day + interval '1 month')::timestamp AT TIME ZONE tz),\n        tz;\nEND\n$$",
    )
    op.drop_entity(public_billing_period_bounds)
    op.drop_index("ix_usage_records_tenant_id_billed_period", table_name="usage_records")
    op.drop_column("usage_records", "billed_period")
    op.drop_index("ix_plan_changes_tenant_id_changed_at", table_name="plan_changes")
    op.drop_table("plan_changes")
    op.drop_index("ix_invoices_tenant_id_created_at_id", table_name="invoices")
    op.drop_table("invoices")
    op.drop_index("ix_billing_periods_tenant_id_starts_at", table_name="billing_periods")
    op.drop_table("billing_periods")
    op.drop_table("invoice_counters")
