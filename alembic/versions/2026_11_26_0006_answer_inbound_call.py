"""An inbound call answered in one statement: route, admit, record.

A voice webhook was five round trips (BEGIN, route, limits and profile, insert, COMMIT), each with
its share of driver and SQLAlchemy work in Python; the benchmark's voice webhook spent more of its
time on them than on anything else. `answer_inbound_call` does all of it in one statement, which
also runs without an explicit transaction: the tenant row lock taken by `route_inbound_call` is
held until the statement ends, so limits and insert stay serialized per tenant.

The rule of the plan limits moves with it, into `call_limit_violation`, which outbound calls use
too, so there is one definition. The plan catalogue stays in app/plans.py and is passed in as
JSON; the ring timeout and the longest call arrive as cut-off times.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 04:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALL_LIMIT_VIOLATION = """
CREATE FUNCTION call_limit_violation(
    p_tenant_id uuid, p_tenant_status text, p_limits jsonb,
    p_ring_cutoff timestamptz, p_talk_cutoff timestamptz, p_period text
) RETURNS text LANGUAGE plpgsql STABLE AS $$
-- Why the tenant may not start another call now (a call end_reason), or NULL if it may.
-- p_limits is its plan's limits (app/plans.py): max_concurrent_calls, included_minutes and
-- rejects_when_minutes_run_out. Calls hold a line while ringing since after p_ring_cutoff or
-- talking since after p_talk_cutoff: each count is a range of its partial index (migration 0005).
-- Exact under concurrency only while the caller holds the tenant row lock until its insert.
DECLARE
    active bigint;
    used bigint;
BEGIN
    IF p_tenant_status = 'suspended' THEN
        RETURN 'tenant_suspended';
    END IF;
    SELECT (SELECT count(*) FROM calls
             WHERE tenant_id = p_tenant_id AND status IN ('queued', 'ringing')
               AND created_at > p_ring_cutoff)
         + (SELECT count(*) FROM calls
             WHERE tenant_id = p_tenant_id AND status IN ('in_progress')
               AND answered_at > p_talk_cutoff)
      INTO active;
    IF active >= (p_limits ->> 'max_concurrent_calls')::int THEN
        RETURN 'concurrency_limit';
    END IF;
    IF (p_limits ->> 'rejects_when_minutes_run_out')::boolean THEN
        SELECT coalesce(sum(minutes), 0) INTO used
          FROM usage_records WHERE tenant_id = p_tenant_id AND period = p_period;
        IF used >= (p_limits ->> 'included_minutes')::int THEN
            RETURN 'minutes_exhausted';
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""

ANSWER_INBOUND_CALL = """
CREATE FUNCTION answer_inbound_call(
    p_call_id uuid, p_call_sid text, p_to_number text, p_from_number text, p_outbound boolean,
    p_plans jsonb, p_now timestamptz, p_ring_cutoff timestamptz, p_talk_cutoff timestamptz,
    p_period text
) RETURNS TABLE (
    outcome text, call_id uuid, call_status text, ai_profile_id uuid, greeting text,
    language text, voice text
) LANGUAGE plpgsql VOLATILE AS $$
-- A voice webhook: route it (route_inbound_call binds the tenant and locks it for an active
-- number), admit or refuse it under the plan (p_plans: app/plans.py by plan name) and record it
-- as call p_call_id, in one statement. The outcome:
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
        reason := call_limit_violation(r.tenant_id, r.tenant_status, p_plans -> r.tenant_plan,
                                       p_ring_cutoff, p_talk_cutoff, p_period);
        IF reason IS NULL THEN
            -- The number's profile if it has one, else the tenant's default.
            SELECT a.id, a.greeting, a.language, a.voice INTO a_id, a_greeting, a_language, a_voice
              FROM ai_profiles a
             WHERE a.tenant_id = r.tenant_id AND (a.id = r.ai_profile_id OR a.is_default)
             ORDER BY (a.id = r.ai_profile_id) DESC NULLS LAST
             LIMIT 1;
            IF a_id IS NULL THEN
                reason := 'no_ai_profile';
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
"""

FUNCTIONS = {
    "call_limit_violation(uuid, text, jsonb, timestamptz, timestamptz, text)": (
        CALL_LIMIT_VIOLATION
    ),
    "answer_inbound_call(uuid, text, text, text, boolean, jsonb, timestamptz, timestamptz,"
    " timestamptz, text)": ANSWER_INBOUND_CALL,
}


def upgrade() -> None:
    for definition in FUNCTIONS.values():
        op.execute(definition)


def downgrade() -> None:
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
