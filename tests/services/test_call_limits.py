"""The plan's call limits hold under concurrency (SPEC §6), against the real database."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from starlette.testclient import TestClient

from app.config.database import bind_tenant, transaction
from app.models import Tenant, UsageRecord
from app.services.telephony import (
    TelephonyService,
    call_limit_violation,
)
from tests.conftest import DB_URLS
from tests.helpers import (
    count_tenant_rows,
    create_number_and_profile,
    insert_call,
    make_tenant,
    parse_twiml,
    plan,
    random_e164,
    twilio_call_sid,
    twilio_urls,
)

RACERS = 20


def test_twenty_simultaneous_inbound_calls_against_a_limit_of_five_admit_exactly_five(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="starter")
    assert plan("starter").max_concurrent_calls == 5
    setup = create_number_and_profile(tenant.id)
    # One connection per racer, outside the app's pool, so no racer waits for a connection.
    engine = create_engine(DB_URLS.app, poolclass=NullPool)
    barrier = threading.Barrier(RACERS)
    answers: list[str] = []
    errors: list[BaseException] = []

    def inbound_call() -> None:
        form = {"CallSid": twilio_call_sid(), "From": random_e164(), "To": setup.number}
        try:
            with Session(engine) as session, session.begin():
                barrier.wait(timeout=10)
                answers.append(TelephonyService(session, twilio_urls()).answer_voice(form))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=inbound_call) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()

    assert errors == []
    verdicts = Counter(
        "relay" if parse_twiml(a).find("Connect/ConversationRelay") is not None else "reject"
        for a in answers
    )
    assert verdicts == {"relay": 5, "reject": 15}
    assert count_tenant_rows(owner_engine, "calls", tenant.id, "status = 'ringing'") == 5
    rejected = "status = 'rejected' AND end_reason = 'concurrency_limit'"
    assert count_tenant_rows(owner_engine, "calls", tenant.id, rejected) == 15
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == RACERS


def test_simultaneous_retries_of_one_call_sid_create_one_call(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    """Twilio's retries can overlap the first delivery: one row, and every answer is the same."""
    tenant = make_tenant(client, admin_headers, plan="pro")
    setup = create_number_and_profile(tenant.id)
    form = {"CallSid": twilio_call_sid(), "From": random_e164(), "To": setup.number}
    engine = create_engine(DB_URLS.app, poolclass=NullPool)
    barrier = threading.Barrier(6)
    answers: list[str] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            with Session(engine) as session, session.begin():
                barrier.wait(timeout=10)
                answers.append(TelephonyService(session, twilio_urls()).answer_voice(dict(form)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()

    assert errors == []
    assert len(answers) == 6 and len(set(answers)) == 1
    assert parse_twiml(answers[0]).find("Connect/ConversationRelay") is not None
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 1


def _verdict(tenant_id: uuid.UUID) -> str | None:
    with transaction(tenant_id) as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        return call_limit_violation(session, tenant)


def _use(tenant_id: uuid.UUID, minutes: int, period: str) -> None:
    call_id = insert_call(tenant_id, status="completed", billable_minutes=minutes)
    with transaction(tenant_id) as session:
        session.add(
            UsageRecord(tenant_id=tenant_id, call_id=call_id, period=period, minutes=minutes)
        )


def test_free_minutes_are_counted_per_billing_period(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")
    included = plan("free").included_minutes
    this_month = datetime.now(UTC).strftime("%Y-%m")
    assert _verdict(tenant.id) is None
    _use(tenant.id, included * 3, "1999-12")
    _use(tenant.id, included - 1, this_month)
    assert _verdict(tenant.id) is None
    _use(tenant.id, 1, this_month)
    assert _verdict(tenant.id) == "minutes_exhausted"


def test_limits_apply_in_order_suspension_then_lines_then_minutes(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")
    _use(tenant.id, 60, datetime.now(UTC).strftime("%Y-%m"))
    assert _verdict(tenant.id) == "minutes_exhausted"
    insert_call(tenant.id, status="in_progress")
    assert _verdict(tenant.id) == "concurrency_limit"
    client.patch(
        f"/api/v1/tenants/{tenant.id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert _verdict(tenant.id) == "tenant_suspended"


def test_calls_whose_final_callback_never_came_stop_holding_the_line(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")  # one line
    now = datetime.now(UTC)
    ten_minutes_ago = now - timedelta(minutes=10)
    insert_call(tenant.id, status="ringing", started_at=ten_minutes_ago, created_at=ten_minutes_ago)
    insert_call(
        tenant.id,
        status="in_progress",
        started_at=now - timedelta(hours=5),
        answered_at=now - timedelta(hours=5),
    )
    assert _verdict(tenant.id) is None
    insert_call(tenant.id, status="in_progress", started_at=now - timedelta(hours=3))
    assert _verdict(tenant.id) == "concurrency_limit"


def test_a_fresh_unanswered_call_holds_the_line(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")
    insert_call(tenant.id, status="queued", started_at=None)
    assert _verdict(tenant.id) == "concurrency_limit"


def test_counting_active_calls_reads_only_the_calls_that_still_hold_a_line(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    """Calls left ringing or talking long ago are outside the count's index range, not filtered
    out row by row: an admission costs the same after a thousand lost callbacks as before.

    The count runs inside the SQL function `call_limit_violation`; what it read is taken from the
    transaction's own statistics (pg_stat_xact_*), which count every tuple an index scan returns.
    """
    tenant = make_tenant(client, admin_headers, plan="pro")
    long_ago = datetime.now(UTC) - timedelta(hours=6)
    for _ in range(30):
        insert_call(tenant.id, status="ringing", started_at=long_ago, created_at=long_ago)
        insert_call(tenant.id, status="in_progress", started_at=long_ago, answered_at=long_ago)
    insert_call(tenant.id, status="ringing")
    insert_call(tenant.id, status="in_progress")
    # A connection of its own: the function's plans are made under this test's settings.
    engine = create_engine(DB_URLS.app, poolclass=NullPool)
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("SET LOCAL enable_seqscan = off"))  # the plan of a big table
            bind_tenant(session, tenant.id)
            tenant_row = session.get(Tenant, tenant.id)
            assert tenant_row is not None
            assert call_limit_violation(session, tenant_row) is None
            read = dict(
                session.execute(
                    text(
                        "SELECT indexrelid::regclass::text, pg_stat_get_xact_tuples_returned(indexrelid)"
                        " FROM pg_index WHERE indrelid = 'calls'::regclass"
                        " AND pg_stat_get_xact_tuples_returned(indexrelid) > 0"
                    )
                ).all()
            )
            calls_seq_scans = session.scalar(
                text("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'calls'")
            )
    finally:
        engine.dispose()
    assert read == {
        "ix_calls_tenant_id_ringing_since": 1,
        "ix_calls_tenant_id_talking_since": 1,
    }
    assert calls_seq_scans == 0


def test_a_talking_call_has_an_answer_time(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    """What the count of talking calls is ordered by; a row without it would never count."""
    tenant = make_tenant(client, admin_headers, plan="pro")
    with pytest.raises(IntegrityError, match="ck_calls_talking_answered"):
        insert_call(tenant.id, status="in_progress", answered_at=None)
