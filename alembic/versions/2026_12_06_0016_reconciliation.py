"""Reconciliation (issue 18): the line cut-offs in one SQL function, and the reconciler's state.

`call_line_cutoffs` is the one home of "ringing 3 minutes, talking 4 h 05 min": admission
(`call_limit_violation`) stops counting such calls, and the worker's reconciliation asks Twilio
how they ended. `reconcile_after` / `reconcile_attempts` hold its lease and its backoff.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 00:16:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic_utils.pg_function import PGFunction

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    public_call_line_cutoffs = PGFunction(
        schema="public",
        signature="call_line_cutoffs(p_now timestamptz)",
        definition="returns TABLE (ringing_since timestamptz, talking_since timestamptz)\nLANGUAGE sql IMMUTABLE AS $$\n-- How long a live call holds a line, the one home of these limits. A call holds a line while it\n-- is ringing (created after ringing_since, 3 minutes) or talking (answered after talking_since,\n-- 4 h 05 min, the longest profile limit of 14,400 s plus a margin). Past that its final callback\n-- was lost. Admission (call_limit_violation) stops counting it, and the worker's reconciliation\n-- (app/services/reconciliation.py) asks Twilio how it ended.\nSELECT p_now - interval '3 minutes', p_now - interval '4 hours 5 minutes'\n$$",
    )
    op.create_entity(public_call_line_cutoffs)

    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation( p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamptz )",
        definition="returns text LANGUAGE plpgsql STABLE AS $$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing or\n-- talking within the cut-offs of call_line_cutoffs; past them its final callback was lost and it\n-- no longer counts. Each count is a range of its partial index. Exact under\n-- concurrency only while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound). A capped plan's minutes count in the tenant's current\n-- billing period (billing_period_at, in the tenant's timezone).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz;\n    talking_since timestamptz;\n    plan record;\n    active bigint;\n    used bigint;\n    current_period text;\nBEGIN\n    SELECT c.ringing_since, c.talking_since INTO ringing_since, talking_since\n      FROM call_line_cutoffs(p_now) AS c;\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        current_period := billing_period_at(p_tenant_id, p_now);\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = current_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$$",
    )
    op.replace_entity(public_call_limit_violation)

    op.add_column("calls", sa.Column("reconcile_after", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "calls",
        sa.Column("reconcile_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("calls", "reconcile_attempts")
    op.drop_column("calls", "reconcile_after")
    public_call_limit_violation = PGFunction(
        schema="public",
        signature="call_limit_violation(p_tenant_id uuid, p_tenant_status text, p_plan text, p_now timestamp with time zone)",
        definition="returns text\n LANGUAGE plpgsql\n STABLE\nAS $function$\n-- Admission\\: why the tenant may not start another call now (a call end_reason), or NULL if it may.\n-- The limits come from its plan's row in `plans`. A call holds a line while it is ringing (for at\n-- most 3 minutes since it was created) or talking (for at most 4 h 05 min since it was answered\\:\n-- the longest profile limit, 14,400 s, plus a margin); past that its final callback was lost and\n-- it no longer counts. Each count is a range of its partial index. Exact under concurrency only\n-- while the caller holds the tenant row lock until its insert (inbound\\: route_inbound_call;\n-- outbound\\: CallService.create_outbound). A capped plan's minutes count in the tenant's current\n-- billing period (billing_period_at, in the tenant's timezone).\nDECLARE\n    -- Computed here, not in the queries\\: the planner then sees each cut-off as a value and\n    -- reads only the recent end of the partial indexes.\n    ringing_since timestamptz := p_now - interval '3 minutes';\n    talking_since timestamptz := p_now - interval '4 hours 5 minutes';\n    plan record;\n    active bigint;\n    used bigint;\n    current_period text;\nBEGIN\n    IF p_tenant_status = 'suspended' THEN\n        RETURN 'tenant_suspended';\n    END IF;\n    SELECT max_concurrent_calls, included_minutes, overage_cents_per_minute IS NULL AS capped\n      INTO plan FROM plans WHERE name = p_plan;\n    SELECT (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')\n               AND created_at > ringing_since)\n         + (SELECT count(*) FROM calls\n             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')\n               AND answered_at > talking_since)\n      INTO active;\n    IF active >= plan.max_concurrent_calls THEN\n        RETURN 'concurrency_limit';\n    END IF;\n    IF plan.capped THEN\n        current_period := billing_period_at(p_tenant_id, p_now);\n        SELECT coalesce(sum(minutes), 0) INTO used\n          FROM usage_records WHERE tenant_id = p_tenant_id AND period = current_period;\n        IF used >= plan.included_minutes THEN\n            RETURN 'minutes_exhausted';\n        END IF;\n    END IF;\n    RETURN NULL;\nEND\n$function$",
    )
    op.replace_entity(public_call_limit_violation)
    public_call_line_cutoffs = PGFunction(
        schema="public",
        signature="call_line_cutoffs(p_now timestamptz)",
        definition="returns TABLE (ringing_since timestamptz, talking_since timestamptz)\nLANGUAGE sql IMMUTABLE AS $$\n-- How long a live call holds a line, the one home of these limits. A call holds a line while it\n-- is ringing (created after ringing_since, 3 minutes) or talking (answered after talking_since,\n-- 4 h 05 min, the longest profile limit of 14,400 s plus a margin). Past that its final callback\n-- was lost. Admission (call_limit_violation) stops counting it, and the worker's reconciliation\n-- (app/services/reconciliation.py) asks Twilio how it ended.\nSELECT p_now - interval '3 minutes', p_now - interval '4 hours 5 minutes'\n$$",
    )
    op.drop_entity(public_call_line_cutoffs)
