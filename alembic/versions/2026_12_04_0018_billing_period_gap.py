"""open_billing_period opens a period missing inside a tenant's chain alone.

Asked for a period between the first and the last opened one that is not there (a gap, which
openers never leave), it walked backwards from the first period, month after month, until a
CHECK refused a row centuries earlier. That is the suspected cause of a metering statement that
ran on CPU for minutes in the benchmark and blocked the tenant's other metering. It now opens just
that period.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 23:00:00
"""

from collections.abc import Sequence

from alembic_utils.pg_function import PGFunction

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    public_open_billing_period = PGFunction(
        schema="public",
        signature="open_billing_period(p_tenant_id uuid, p_period text)",
        definition="returns uuid\nLANGUAGE plpgsql VOLATILE AS $$\n-- Open the tenant's billing period p_period (fix its boundaries) and return its id. The periods\n-- between it and those already opened are opened too, nearest first, so the chain of a tenant's\n-- periods has no gap. Concurrent openers of one period insert it once (the first commits, the\n-- other finds it).\nDECLARE\n    opened_id uuid;\n    last_period text;\n    first_period text;\n    label text;\n    step interval;\n    bounds record;\nBEGIN\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN opened_id;\n    END IF;\n    SELECT max(b.period), min(b.period) INTO last_period, first_period\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id;\n    IF last_period IS NULL THEN\n        label := p_period;\n        step := interval '1 month';\n    ELSIF p_period > last_period THEN\n        step := interval '1 month';\n        label := to_char(to_date(last_period, 'YYYY-MM') + step, 'YYYY-MM');\n    ELSIF p_period < first_period THEN\n        step := interval '-1 month';\n        label := to_char(to_date(first_period, 'YYYY-MM') + step, 'YYYY-MM');\n    ELSE\n        -- Missing inside the opened chain (a gap, which openers never leave), open it alone\n        -- rather than walk away from it for ever.\n        step := interval '1 month';\n        label := p_period;\n    END IF;\n    LOOP\n        SELECT * INTO bounds FROM billing_period_bounds(p_tenant_id, label);\n        INSERT INTO billing_periods (\n            id, tenant_id, period, starts_at, ends_at, timezone, notified_percent, created_at,\n            updated_at\n        ) VALUES (\n            gen_random_uuid(), p_tenant_id, label, bounds.period_start, bounds.period_end,\n            bounds.period_timezone, 0, now(), now()\n        ) ON CONFLICT (tenant_id, period) DO NOTHING;\n        EXIT WHEN label = p_period;\n        label := to_char(to_date(label, 'YYYY-MM') + step, 'YYYY-MM');\n    END LOOP;\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    RETURN opened_id;\nEND\n$$",
    )
    op.replace_entity(public_open_billing_period)


def downgrade() -> None:
    public_open_billing_period = PGFunction(
        schema="public",
        signature="open_billing_period(p_tenant_id uuid, p_period text)",
        definition="returns uuid\n LANGUAGE plpgsql\nAS $function$\n-- Open the tenant's billing period p_period (fix its boundaries) and return its id. The periods\n-- between it and those already opened are opened too, nearest first, so the chain of a tenant's\n-- periods has no gap. Concurrent openers of one period insert it once (the first commits, the\n-- other finds it).\nDECLARE\n    opened_id uuid;\n    last_period text;\n    first_period text;\n    label text;\n    step interval;\n    bounds record;\nBEGIN\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    IF FOUND THEN\n        RETURN opened_id;\n    END IF;\n    SELECT max(b.period), min(b.period) INTO last_period, first_period\n      FROM billing_periods b WHERE b.tenant_id = p_tenant_id;\n    IF last_period IS NULL THEN\n        label := p_period;\n        step := interval '1 month';\n    ELSIF p_period > last_period THEN\n        step := interval '1 month';\n        label := to_char(to_date(last_period, 'YYYY-MM') + step, 'YYYY-MM');\n    ELSE\n        step := interval '-1 month';\n        label := to_char(to_date(first_period, 'YYYY-MM') + step, 'YYYY-MM');\n    END IF;\n    LOOP\n        SELECT * INTO bounds FROM billing_period_bounds(p_tenant_id, label);\n        INSERT INTO billing_periods (\n            id, tenant_id, period, starts_at, ends_at, timezone, notified_percent, created_at,\n            updated_at\n        ) VALUES (\n            gen_random_uuid(), p_tenant_id, label, bounds.period_start, bounds.period_end,\n            bounds.period_timezone, 0, now(), now()\n        ) ON CONFLICT (tenant_id, period) DO NOTHING;\n        EXIT WHEN label = p_period;\n        label := to_char(to_date(label, 'YYYY-MM') + step, 'YYYY-MM');\n    END LOOP;\n    SELECT b.id INTO opened_id FROM billing_periods b\n     WHERE b.tenant_id = p_tenant_id AND b.period = p_period;\n    RETURN opened_id;\nEND\n$function$",
    )
    op.replace_entity(public_open_billing_period)
