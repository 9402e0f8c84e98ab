"""Seed the benchmark database: 1,000 tenants, 1,000,000 calls (one tenant with 100,000), numbers,
profiles and transcripts for a sample. Bulk SQL as the owner role in system scope; idempotent: a
database that already holds the data set is reused.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, text

BIG_TENANT_SLUG = "bench-0000"


def is_seeded(engine: Engine, tenants: int, calls: int) -> bool:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        have_tenants = conn.scalar(text("SELECT count(*) FROM tenants WHERE slug LIKE 'bench-%'"))
        if have_tenants != tenants:
            return False
        have_calls = conn.scalar(text("SELECT count(*) FROM calls"))
        return bool(have_calls and have_calls >= calls)


def reset(engine: Engine) -> int:
    """Put back the data set as seeded: remove what earlier runs' load phases added.

    The voice phase leaves thousands of calls ringing, the status phase usage records and
    `call.ended` events, the relay and webhook phases calls, turns, events and deliveries. Kept,
    they made each run measure a bigger data set than the one before. Returns the calls removed.
    """
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        removed = conn.execute(
            text(
                "DELETE FROM calls"
                " WHERE provider_call_sid IS NULL OR provider_call_sid NOT LIKE 'CAbench%'"
            )
        ).rowcount  # their turns and usage records go with them (ON DELETE CASCADE)
        conn.execute(text("DELETE FROM webhook_endpoints"))  # and their deliveries
        conn.execute(text("DELETE FROM webhook_events"))
        conn.execute(text("DELETE FROM api_keys WHERE name = 'bench'"))  # one per run
        # The billing phase's closes: its invoices, periods and numbers.
        conn.execute(text("DELETE FROM invoices"))
        conn.execute(text("DELETE FROM billing_periods"))
        conn.execute(text("DELETE FROM invoice_counters"))
    if removed:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return int(removed)


def seed(
    engine: Engine, *, tenants: int, calls: int, big_tenant_calls: int, turn_sample: int
) -> float:
    """Create the data set; returns the seconds it took."""
    started = time.perf_counter()
    statements = [
        "DELETE FROM tenants WHERE slug LIKE 'bench-%'",
        # Tenants on the enterprise plan: the load test admits calls instead of hitting limits.
        """INSERT INTO tenants (id, name, slug, plan, status, timezone)
            SELECT gen_random_uuid(), 'Bench ' || i, 'bench-' || lpad(i::text, 4, '0'),
                   'enterprise', 'active', 'UTC'
            FROM generate_series(0, :tenants - 1) AS i""",
        """CREATE TEMP TABLE bench_tenants AS
            SELECT id, (substring(slug from 7))::int AS idx FROM tenants WHERE slug LIKE 'bench-%'""",
        """INSERT INTO ai_profiles (id, tenant_id, name, system_prompt, greeting, temperature,
                                    max_tokens, language, max_call_duration_seconds, is_default)
            SELECT gen_random_uuid(), id, 'Receptionist', 'You answer the phone for a business.',
                   'Hello, how can I help?', 0.7, 200, 'en-US', 1800, true
            FROM bench_tenants""",
        # Three numbers per tenant, in the +1 212 7xx range, unique by construction.
        """INSERT INTO phone_numbers (id, tenant_id, number, label, status, ai_profile_id)
            SELECT gen_random_uuid(), t.id, '+1212' || lpad((7000000 + t.idx * 3 + n)::text, 7, '0'),
                   'Line ' || n, 'active', p.id
            FROM bench_tenants t JOIN ai_profiles p ON p.tenant_id = t.id, generate_series(0, 2) n""",
        # Each call's start (over the last 90 days) and duration, drawn here, once per row: an
        # uncorrelated LATERAL subquery is evaluated once, and gave every call the same two values.
        """CREATE TEMP TABLE bench_call_owner AS
            SELECT g AS n,
                   CASE WHEN g <= :big_tenant_calls THEN 0
                        ELSE 1 + floor((:tenants - 1) * power(random(), 2))::int END AS idx,
                   now() - make_interval(secs => (random() * 90 * 86400)::int) AS ts,
                   (20 + random() * 400)::int AS d
            FROM generate_series(1, :calls) AS g""",
        """INSERT INTO calls (id, tenant_id, phone_number_id, ai_profile_id, direction, status,
                             from_number, to_number, provider_call_sid, started_at, answered_at,
                             ended_at, duration_seconds, billable_minutes, end_reason,
                             created_at, updated_at)
            SELECT gen_random_uuid(), t.id, pn.id, pn.ai_profile_id,
                   CASE WHEN o.n % 5 = 0 THEN 'outbound' ELSE 'inbound' END,
                   CASE WHEN o.n % 10 = 0 THEN 'no_answer' WHEN o.n % 17 = 0 THEN 'failed'
                        ELSE 'completed' END,
                   '+1415' || lpad((o.n % 10000000)::text, 7, '0'), pn.number,
                   'CAbench' || lpad(o.n::text, 26, '0'),
                   o.ts, o.ts + interval '3 seconds', o.ts + make_interval(secs => 3 + o.d), o.d,
                   ceil(o.d / 60.0)::int, 'completed', o.ts, o.ts
            FROM bench_call_owner o
            JOIN bench_tenants t ON t.idx = o.idx
            JOIN LATERAL (SELECT id, number, ai_profile_id FROM phone_numbers
                          WHERE tenant_id = t.id ORDER BY number LIMIT 1) pn ON true""",
        """INSERT INTO call_turns (id, tenant_id, call_id, seq, role, text, interrupted, latency_ms)
            SELECT gen_random_uuid(), c.tenant_id, c.id, s,
                   CASE WHEN s % 2 = 0 THEN 'caller' ELSE 'agent' END,
                   CASE WHEN s % 2 = 0 THEN 'I would like to book an appointment for Tuesday.'
                        ELSE 'Of course. What time on Tuesday works best for you?' END,
                   false, CASE WHEN s % 2 = 1 THEN 300 + (random() * 400)::int END
            FROM (SELECT id, tenant_id FROM calls WHERE provider_call_sid LIKE 'CAbench%'
                  ORDER BY provider_call_sid LIMIT :turn_sample) c,
                 generate_series(0, 7) s""",
        # History, its usage thresholds already looked at: the worker has nothing to check in it.
        """INSERT INTO usage_records (id, tenant_id, call_id, period, billed_period, minutes,
                                      thresholds_checked)
            SELECT gen_random_uuid(), tenant_id, id, to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM'),
                   to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM'), billable_minutes, true
            FROM calls WHERE status = 'completed' AND provider_call_sid LIKE 'CAbench%'""",
    ]
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        params = {
            "tenants": tenants,
            "calls": calls,
            "big_tenant_calls": big_tenant_calls,
            "turn_sample": turn_sample,
        }
        for statement in statements:
            bound = text(statement).bindparams(
                **{k: v for k, v in params.items() if f":{k}" in statement}
            )
            conn.execute(bound)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started
