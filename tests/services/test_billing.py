"""Billing (SPEC 9) against the real database: periods in the tenant's month, metering once,
thresholds, plan changes, the close (races, failures, numbering), late usage and voiding."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from app.config.database import transaction
from app.models import Invoice
from app.schemas.tenants import TenantUpdate
from app.services import billing
from app.services.billing import BillingService, InvoiceAlreadyVoid, PeriodNotEnded
from app.services.scope import Principal, Role, TenantScope
from app.services.telephony import TelephonyService
from app.services.tenants import TenantService
from app.worker import Periodic, periodic_jobs
from tests.helpers import (
    apply_status_callback,
    count_tenant_rows,
    create_billing_tenant,
    create_tenant,
    end_call_at,
    twilio_urls,
)

NY_MARCH = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)  # 00:00 EST on 1 March
KATHMANDU_MARCH = datetime(2026, 2, 28, 18, 15, tzinfo=UTC)  # 00:00 +05:45 on 1 March
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)  # March has ended, plus the grace, everywhere
MINUTE = timedelta(minutes=1)


def _rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return list(conn.execute(text(sql), params).all())


def _usage(engine: Engine, tenant_id: uuid.UUID) -> list[tuple[str, str, int]]:
    return [
        (r.period, r.billed_period, r.minutes)
        for r in _rows(
            engine,
            "SELECT period, billed_period, minutes FROM usage_records WHERE tenant_id = :t"
            " ORDER BY period, billed_period, minutes DESC",
            t=tenant_id,
        )
    ]


def _events(engine: Engine, tenant_id: uuid.UUID, event_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(r.body)["data"]
        for r in _rows(
            engine,
            "SELECT body FROM webhook_events WHERE tenant_id = :t AND event_type = :type"
            " ORDER BY created_at",
            t=tenant_id,
            type=event_type,
        )
    ]


def _admin_scope(tenant_id: uuid.UUID) -> TenantScope:
    return TenantScope(
        tenant_id=tenant_id,
        principal=Principal(role=Role.platform_admin),
        tenant_status="active",
        plan="starter",
    )


def _assert_totals(invoice: Invoice) -> None:
    amounts = [line["amount_cents"] for line in invoice.lines]
    assert all(isinstance(amount, int) for amount in amounts)
    assert invoice.subtotal_cents == invoice.total_cents == sum(amounts)


def _lines(invoice: Invoice) -> list[tuple[str, str | None, int, int, int]]:
    return [
        (
            line["kind"],
            line["plan"],
            line["quantity"],
            line["unit_amount_cents"],
            line["amount_cents"],
        )
        for line in invoice.lines
    ]


def _close(tenant_id: uuid.UUID, period: str, now: datetime) -> Invoice:
    invoice = billing.close_period(tenant_id, period, now)
    assert invoice is not None
    _assert_totals(invoice)
    return invoice


# --- periods ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "midnight", "offset"),
    [("America/New_York", NY_MARCH, "-05:00"), ("Asia/Kathmandu", KATHMANDU_MARCH, "+05:45")],
)
def test_calls_on_both_sides_of_local_midnight_on_the_1st_land_in_their_local_months(
    owner_engine: Engine, timezone: str, midnight: datetime, offset: str
) -> None:
    tenant_id = create_billing_tenant(timezone=timezone)
    end_call_at(tenant_id, midnight - MINUTE, seconds=120)  # 23:59 on 28 February, local
    end_call_at(tenant_id, midnight + MINUTE, seconds=180)  # 00:01 on 1 March, local
    assert _usage(owner_engine, tenant_id) == [("2026-02", "2026-02", 2), ("2026-03", "2026-03", 3)]
    with transaction(tenant_id) as session:
        march = BillingService(session, tenant_id).usage("2026-03", APRIL_2)
    assert march.period_start == midnight
    assert march.period_start.isoformat() == "2026-03-01T00:00:00" + offset
    assert (march.used_minutes, march.calls) == (3, 1)


def test_a_period_is_the_local_month_new_york_november_starts_at_4_utc() -> None:
    tenant_id = create_billing_tenant(timezone="America/New_York")
    with transaction(tenant_id) as session:
        november = billing.period_bounds(session, tenant_id, "2026-11")
        assert billing.period_at(session, tenant_id, datetime(2026, 11, 1, 3, 59, tzinfo=UTC)) == (
            "2026-10"
        )
    assert november.starts_at == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # EDT, -04:00
    assert november.ends_at == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)  # EST, -05:00


def test_a_call_that_started_in_one_month_and_ended_in_the_next_counts_in_the_next(
    owner_engine: Engine,
) -> None:
    tenant_id = create_billing_tenant(timezone="Asia/Kathmandu")
    started = KATHMANDU_MARCH - timedelta(minutes=30)
    end_call_at(
        tenant_id, KATHMANDU_MARCH + timedelta(minutes=30), seconds=3600, started_at=started
    )
    assert _usage(owner_engine, tenant_id) == [("2026-03", "2026-03", 60)]


def test_a_timezone_change_applies_from_the_next_period(
    owner_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = create_billing_tenant(timezone="America/New_York")
    end_call_at(tenant_id, datetime(2026, 3, 10, tzinfo=UTC), seconds=60)
    monkeypatch.setattr("app.services.tenants.utcnow", lambda: datetime(2026, 3, 15, tzinfo=UTC))
    with transaction(tenant_id) as session:
        TenantService(session).update(
            _admin_scope(tenant_id), TenantUpdate(timezone="Asia/Kathmandu")
        )
    with transaction(tenant_id) as session:
        bounds = {
            p: billing.period_bounds(session, tenant_id, p)
            for p in ("2026-03", "2026-04", "2026-05")
        }
    # March keeps New York's boundaries; April starts where March ends and ends on Kathmandu's
    # midnight; May is Kathmandu's month.
    assert (bounds["2026-03"].starts_at, bounds["2026-03"].ends_at) == (
        NY_MARCH,
        datetime(2026, 4, 1, 4, 0, tzinfo=UTC),
    )
    assert (bounds["2026-04"].starts_at, bounds["2026-04"].ends_at) == (
        datetime(2026, 4, 1, 4, 0, tzinfo=UTC),
        datetime(2026, 4, 30, 18, 15, tzinfo=UTC),
    )
    assert bounds["2026-05"].starts_at == datetime(2026, 4, 30, 18, 15, tzinfo=UTC)
    end_call_at(tenant_id, datetime(2026, 4, 30, 20, 0, tzinfo=UTC), seconds=60)
    assert _usage(owner_engine, tenant_id)[-1] == ("2026-05", "2026-05", 1)


# --- metering -----------------------------------------------------------------------------------


def test_a_status_callback_replayed_and_raced_meters_the_call_once(owner_engine: Engine) -> None:
    tenant_id = create_billing_tenant()
    _, form = end_call_at(tenant_id, datetime(2026, 3, 5, tzinfo=UTC), seconds=61)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def replay() -> None:
        try:
            barrier.wait()
            apply_status_callback(form)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    apply_status_callback(form)
    assert errors == []
    assert _usage(owner_engine, tenant_id) == [("2026-03", "2026-03", 2)]
    assert len(_events(owner_engine, tenant_id, "call.ended")) == 1

    # Racing from the start: a talking call's final callback arrives eight times at once.
    _, form = end_call_at(tenant_id, datetime(2026, 3, 6, tzinfo=UTC), seconds=30, send=False)
    barrier.reset()
    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _usage(owner_engine, tenant_id) == [("2026-03", "2026-03", 2), ("2026-03", "2026-03", 1)]
    assert len(_events(owner_engine, tenant_id, "call.ended")) == 2


def test_usage_thresholds_fire_once_each_per_period(owner_engine: Engine) -> None:
    tenant_id = create_billing_tenant(plan="starter")  # 1,000 included minutes
    march = datetime(2026, 3, 3, tzinfo=UTC)
    for minutes, expected in (
        (790, []),
        (10, [80]),
        (150, [80]),
        (50, [80, 100]),
        (100, [80, 100]),
    ):
        end_call_at(tenant_id, march, seconds=minutes * 60)
        billing.announce_usage_thresholds()  # the worker's pass
        events = _events(owner_engine, tenant_id, "usage.threshold_reached")
        assert [e["threshold_percent"] for e in events] == expected
    assert events[1]["used_minutes"] == 1000 and events[1]["period"] == "2026-03"
    # April is a new period: its thresholds are its own.
    end_call_at(tenant_id, datetime(2026, 4, 3, tzinfo=UTC), seconds=900 * 60)
    billing.announce_usage_thresholds()
    events = _events(owner_engine, tenant_id, "usage.threshold_reached")
    assert [(e["period"], e["threshold_percent"]) for e in events][-1] == ("2026-04", 80)


def test_thresholds_count_against_the_periods_prorated_pooled_minutes(
    owner_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the current plan's minutes: the period's allowance, as its invoice counts it."""
    tenant_id = create_billing_tenant(plan="pro", timezone="UTC")
    monkeypatch.setattr("app.services.tenants.utcnow", lambda: datetime(2026, 3, 11, tzinfo=UTC))
    with transaction(tenant_id) as session:
        TenantService(session).update(_admin_scope(tenant_id), TenantUpdate(plan="starter"))
    # March: pro 10 of 31 days, floor(10,000 x 10/31) = 3,225; starter 21 days,
    # floor(1,000 x 21/31) = 677: 3,902 included. 800 minutes are 80% of starter's 1,000 alone.
    end_call_at(tenant_id, datetime(2026, 3, 20, tzinfo=UTC), seconds=800 * 60)
    billing.announce_usage_thresholds()
    assert _events(owner_engine, tenant_id, "usage.threshold_reached") == []
    end_call_at(tenant_id, datetime(2026, 3, 21, tzinfo=UTC), seconds=3200 * 60)
    billing.announce_usage_thresholds()
    events = _events(owner_engine, tenant_id, "usage.threshold_reached")
    assert [(e["threshold_percent"], e["included_minutes"], e["plan"]) for e in events] == [
        (80, 3902, "starter"),
        (100, 3902, "starter"),
    ]
    with transaction(tenant_id) as session:
        report = BillingService(session, tenant_id).usage("2026-03", APRIL_2)
    assert report.included_minutes == 3902  # the same computation as the invoice's


def test_a_call_end_never_waits_for_another_call_end_of_the_tenant(owner_engine: Engine) -> None:
    """Metering appends: a tenant's call ends do not queue on its billing period's row, even
    with a usage threshold ahead (they did: the row was locked until the commit)."""
    tenant_id = create_billing_tenant(plan="starter")  # 1,000 included minutes: 80% ahead
    march = datetime(2026, 3, 3, tzinfo=UTC)
    end_call_at(tenant_id, march, seconds=60)  # the period is opened
    _, first = end_call_at(tenant_id, march, seconds=600, send=False)
    _, second = end_call_at(tenant_id, march, seconds=600, send=False)
    with transaction() as holding:
        TelephonyService(holding, twilio_urls()).apply_status_callback(first)
        # `first` is metered and not committed; `second` must not wait for it.
        with transaction() as other:
            other.execute(text("SET LOCAL lock_timeout = '500ms'"))
            TelephonyService(other, twilio_urls()).apply_status_callback(second)
    assert sorted(m for _, _, m in _usage(owner_engine, tenant_id)) == [1, 10, 10]


def test_call_ends_racing_across_the_thresholds_announce_each_once_with_exact_totals(
    owner_engine: Engine,
) -> None:
    tenant_id = create_billing_tenant(plan="starter")  # 1,000 included minutes
    march = datetime(2026, 3, 3, tzinfo=UTC)
    forms = [end_call_at(tenant_id, march, seconds=30 * 60, send=False)[1] for _ in range(40)]
    calls: list[dict[str, str]] = list(forms)
    errors: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()

    def end_calls() -> None:
        while True:
            with lock:
                if not calls:
                    return
                form = calls.pop()
            try:
                apply_status_callback(form)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    def worker() -> None:  # two workers' passes, racing the call ends and each other
        while not done.is_set():
            try:
                billing.announce_usage_thresholds()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    enders = [threading.Thread(target=end_calls) for _ in range(8)]
    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in enders + workers:
        thread.start()
    for thread in enders:
        thread.join(timeout=120)
    done.set()
    for thread in workers:
        thread.join(timeout=60)
    billing.announce_usage_thresholds()
    assert errors == []
    usage = _usage(owner_engine, tenant_id)
    assert len(usage) == 40 and sum(m for _, _, m in usage) == 1200
    events = _events(owner_engine, tenant_id, "usage.threshold_reached")
    assert sorted(e["threshold_percent"] for e in events) == [80, 100]
    for event in events:
        assert event["included_minutes"] == 1000
        assert event["used_minutes"] * 100 >= event["threshold_percent"] * 1000
    billing.announce_usage_thresholds()  # nothing new: nothing again
    assert len(_events(owner_engine, tenant_id, "usage.threshold_reached")) == 2


def test_the_free_plan_cap_resets_at_its_local_month_start() -> None:
    tenant_id = create_billing_tenant(plan="free", timezone="Asia/Kathmandu")
    end_call_at(tenant_id, datetime(2026, 2, 20, tzinfo=UTC), seconds=60 * 60)  # all 60 minutes

    def verdict(now: datetime) -> str | None:
        with transaction(tenant_id) as session:
            return session.scalar(
                text("SELECT call_limit_violation(:t, 'active', 'free', :now)"),
                {"t": tenant_id, "now": now},
            )

    assert verdict(KATHMANDU_MARCH - MINUTE) == "minutes_exhausted"  # 23:59 local, February
    assert verdict(KATHMANDU_MARCH + MINUTE) is None  # 00:01 local, March: a new month
    assert verdict(datetime(2026, 2, 28, 23, 0, tzinfo=UTC)) is None  # still February in UTC


# --- invoices -----------------------------------------------------------------------------------


def test_a_plan_upgrade_and_downgrade_mid_period_are_prorated_to_the_cent(
    owner_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = create_billing_tenant(plan="starter", timezone="UTC")
    for when, plan in (
        (datetime(2026, 3, 11, tzinfo=UTC), "pro"),
        (datetime(2026, 3, 21, tzinfo=UTC), "starter"),
    ):
        monkeypatch.setattr("app.services.tenants.utcnow", lambda when=when: when)
        with transaction(tenant_id) as session:
            TenantService(session).update(_admin_scope(tenant_id), TenantUpdate(plan=plan))
    end_call_at(tenant_id, datetime(2026, 3, 5, tzinfo=UTC), seconds=2000 * 60)
    end_call_at(tenant_id, datetime(2026, 3, 25, tzinfo=UTC), seconds=2000 * 60)
    history = _rows(
        owner_engine,
        "SELECT from_plan, to_plan FROM plan_changes WHERE tenant_id = :t ORDER BY changed_at",
        t=tenant_id,
    )
    assert [tuple(r) for r in history] == [
        (None, "starter"),
        ("starter", "pro"),
        ("pro", "starter"),
    ]

    invoice = _close(tenant_id, "2026-03", APRIL_2)
    # March: 31 days = 2,678,400 s. Starter 1-11 and 21-31 March: 21 days = 1,814,400 s;
    # pro 11-21 March: 10 days = 864,000 s.
    #   starter base  4,900 x 1,814,400 / 2,678,400 = 3,319.35 -> 3,319
    #   pro base     29,900 x   864,000 / 2,678,400 = 9,645.16 -> 9,645
    #   included: starter floor(1,000 x 21/31) = 677, pro floor(10,000 x 10/31) = 3,225 -> 3,902
    #   overage: 4,000 used - 3,902 = 98 min at starter's (the plan at the end) 5 c = 490
    assert _lines(invoice) == [
        ("base_fee", "starter", 1, 3319, 3319),
        ("base_fee", "pro", 1, 9645, 9645),
        ("overage", "starter", 98, 5, 490),
    ]
    assert (invoice.included_minutes, invoice.used_minutes) == (3902, 4000)
    assert invoice.total_cents == 13454
    assert invoice.period_start == datetime(2026, 3, 1, tzinfo=UTC)


def test_a_tenant_created_mid_period_pays_from_its_creation_and_a_downgrade_to_free_bills_no_overage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Created 16 March 00:00 New York (04:00 UTC, EDT); March in New York is 743 hours.
    tenant_id = create_billing_tenant(
        plan="pro", timezone="America/New_York", since=datetime(2026, 3, 16, 4, tzinfo=UTC)
    )
    monkeypatch.setattr("app.services.tenants.utcnow", lambda: datetime(2026, 3, 26, 4, tzinfo=UTC))
    with transaction(tenant_id) as session:
        TenantService(session).update(_admin_scope(tenant_id), TenantUpdate(plan="free"))
    end_call_at(tenant_id, datetime(2026, 3, 20, tzinfo=UTC), seconds=5000 * 60)
    invoice = _close(tenant_id, "2026-03", APRIL_2)
    # pro 16-26 March = 864,000 s of 2,674,800 s: 29,900 x 864,000 / 2,674,800 = 9,658.14 -> 9,658
    # free 26 March - 1 April = 518,400 s: $0. Included: pro floor(10,000 x
    # 864,000 / 2,674,800) = 3,230, free floor(60 x 518,400 / 2,674,800) = 11 -> 3,241. The free
    # plan (the plan at the end) has no overage price: the 1,759 minutes over are not billed.
    assert _lines(invoice) == [("base_fee", "pro", 1, 9658, 9658), ("base_fee", "free", 1, 0, 0)]
    assert (invoice.included_minutes, invoice.used_minutes) == (3241, 5000)


def test_two_closes_racing_issue_one_invoice(owner_engine: Engine) -> None:
    tenant_id = create_billing_tenant()
    end_call_at(tenant_id, datetime(2026, 3, 9, tzinfo=UTC), seconds=600)
    results: list[uuid.UUID | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def close() -> None:
        try:
            barrier.wait()
            invoice = billing.close_period(tenant_id, "2026-03", APRIL_2)
            results.append(invoice.id if invoice else None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1 and results[0] is not None
    assert count_tenant_rows(owner_engine, "invoices", tenant_id) == 1
    assert len(_events(owner_engine, tenant_id, "invoice.issued")) == 1


def test_a_close_failing_halfway_leaves_no_invoice_and_consumes_no_number(
    owner_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = create_billing_tenant()
    end_call_at(tenant_id, datetime(2026, 3, 9, tzinfo=UTC), seconds=600)

    def last_number() -> int:
        rows = _rows(owner_engine, "SELECT last_number FROM invoice_counters WHERE year = 2026")
        return rows[0].last_number if rows else 0

    before = last_number()

    def fail(*_: Any, **__: Any) -> None:  # after the number was taken and the invoice written
        raise RuntimeError("the close fails halfway")

    monkeypatch.setattr("app.services.billing.events.emit_event", fail)
    with pytest.raises(RuntimeError):
        billing.close_period(tenant_id, "2026-03", APRIL_2)
    monkeypatch.undo()
    assert count_tenant_rows(owner_engine, "invoices", tenant_id) == 0
    assert last_number() == before
    assert (
        _rows(
            owner_engine,
            "SELECT closed_at FROM billing_periods WHERE tenant_id = :t AND period = '2026-03'",
            t=tenant_id,
        )[0].closed_at
        is None
    )
    invoice = _close(tenant_id, "2026-03", APRIL_2)
    assert invoice.number == f"VCA-2026-{before + 1:06d}"


def test_numbers_are_gapless_and_sequential_across_tenants() -> None:
    numbers = []
    for _ in range(3):
        tenant_id = create_billing_tenant()
        numbers.append(_close(tenant_id, "2026-02", APRIL_2).number)
    sequence = [int(n.rsplit("-", 1)[1]) for n in numbers]
    assert all(n.startswith("VCA-2026-") for n in numbers)
    assert sequence == list(range(sequence[0], sequence[0] + 3))


def test_a_period_is_closed_only_after_its_end_plus_one_hour() -> None:
    tenant_id = create_billing_tenant(timezone="America/New_York")
    march_end = datetime(2026, 4, 1, 4, 0, tzinfo=UTC)
    with pytest.raises(PeriodNotEnded):
        billing.close_period(tenant_id, "2026-03", march_end + timedelta(minutes=59))
    assert _close(tenant_id, "2026-03", march_end + timedelta(hours=1)).period == "2026-03"


def test_a_late_callback_after_the_close_is_billed_once_on_the_next_invoice(
    owner_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = create_billing_tenant(plan="starter")
    end_call_at(tenant_id, datetime(2026, 3, 20, tzinfo=UTC), seconds=990 * 60)
    march = _close(tenant_id, "2026-03", datetime(2026, 4, 1, 2, tzinfo=UTC))
    assert _lines(march) == [("base_fee", "starter", 1, 4900, 4900)]

    # The callback of a call that ended at 23:50 on 31 March arrives at 03:00 on 1 April.
    monkeypatch.setattr(
        "app.services.telephony.utcnow", lambda: datetime(2026, 4, 1, 3, tzinfo=UTC)
    )
    _, form = end_call_at(tenant_id, datetime(2026, 3, 31, 23, 50, tzinfo=UTC), seconds=30 * 60)
    apply_status_callback(form)  # and again
    assert _usage(owner_engine, tenant_id)[-1] == ("2026-03", "2026-04", 30)
    assert billing.close_period(tenant_id, "2026-03", APRIL_2).id == march.id  # unchanged

    april = _close(tenant_id, "2026-04", datetime(2026, 5, 2, tzinfo=UTC))
    # 990 + 30 = 1,020 minutes of March against 1,000 included: 20 were beyond, at 5 c.
    assert _lines(april) == [
        ("base_fee", "starter", 1, 4900, 4900),
        ("late_usage", "starter", 20, 5, 100),
    ]
    assert april.lines[1]["description"].startswith("Late usage from 2026-03")
    assert april.total_cents == 5000
    with transaction(tenant_id) as session:
        may = BillingService(session, tenant_id).usage("2026-05", datetime(2026, 5, 2, tzinfo=UTC))
    assert [line["kind"] for line in may.lines] == ["base_fee"]  # billed once, not again


def test_late_usage_of_a_reissued_period_is_priced_against_its_issued_invoice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant_id = create_billing_tenant(plan="starter")
    end_call_at(tenant_id, datetime(2026, 3, 20, tzinfo=UTC), seconds=990 * 60)
    first = _close(tenant_id, "2026-03", datetime(2026, 4, 1, 2, tzinfo=UTC))
    with transaction(tenant_id) as session:
        BillingService(session, _admin_scope(tenant_id)).void(first.id, "Wrong name", APRIL_2)
    reissued = billing.close_period(tenant_id, "2026-03", APRIL_2, reissue=True)
    assert reissued is not None and reissued.id != first.id and reissued.status == "issued"
    assert reissued.number > first.number and _lines(reissued) == _lines(first)

    monkeypatch.setattr(
        "app.services.telephony.utcnow", lambda: datetime(2026, 4, 1, 3, tzinfo=UTC)
    )
    end_call_at(tenant_id, datetime(2026, 3, 31, 23, 50, tzinfo=UTC), seconds=30 * 60)
    april = _close(tenant_id, "2026-04", datetime(2026, 5, 2, tzinfo=UTC))
    assert _lines(april)[-1] == ("late_usage", "starter", 20, 5, 100)  # 1,020 of 1,000


def test_a_void_keeps_the_number_and_an_issued_invoice_never_changes(
    app_engine: Engine,
) -> None:
    tenant_id = create_billing_tenant()
    invoice = _close(tenant_id, "2026-03", APRIL_2)
    with transaction(tenant_id) as session:
        voided = BillingService(session, _admin_scope(tenant_id)).void(
            invoice.id, "Billed to the wrong company", APRIL_2
        )
        assert (voided.status, voided.number) == ("void", invoice.number)
        assert voided.void_reason == "Billed to the wrong company"
    with transaction(tenant_id) as session, pytest.raises(InvoiceAlreadyVoid):
        BillingService(session, _admin_scope(tenant_id)).void(invoice.id, "again", APRIL_2)
    # The app role may not rewrite an invoice's money or delete it, whatever the code does.
    for statement in (
        "UPDATE invoices SET total_cents = 0, subtotal_cents = 0 WHERE id = :id",
        "DELETE FROM invoices WHERE id = :id",
    ):
        with app_engine.begin() as conn, pytest.raises(ProgrammingError):
            conn.execute(
                text("SELECT set_config('app.tenant_id', :t, true)"), {"t": str(tenant_id)}
            )
            conn.execute(text(statement), {"id": invoice.id})


# --- the worker ---------------------------------------------------------------------------------


def test_the_worker_invoices_each_month_owed_once(owner_engine: Engine) -> None:
    now = datetime.now(UTC)
    previous = billing.previous_period((now - timedelta(hours=1)).strftime("%Y-%m"))
    before = billing.previous_period(previous)
    since = datetime(int(before[:4]), int(before[5:]), 1, tzinfo=UTC)
    tenant_id = create_billing_tenant(plan="starter", since=since)  # no call, ever
    newcomer = create_billing_tenant(plan="pro", since=now)  # owes nothing yet
    billing.close_due_periods(now)
    billing.close_due_periods(now)
    assert count_tenant_rows(owner_engine, "invoices", newcomer) == 0
    assert (
        count_tenant_rows(owner_engine, "billing_periods", newcomer, "closed_at IS NOT NULL") == 0
    )
    invoices = _rows(
        owner_engine,
        "SELECT period, total_cents FROM invoices WHERE tenant_id = :t ORDER BY period",
        t=tenant_id,
    )
    assert [tuple(r) for r in invoices] == [(before, 4900), (previous, 4900)]

    # The worker's close job does the same on its own.
    other = create_billing_tenant(plan="pro", since=datetime(2026, 10, 1, tzinfo=UTC))
    stopping = threading.Event()
    closer = _jobs(stopping)["close-periods"]
    closer.interval = 0.2
    closer.start()
    try:
        deadline = time.monotonic() + 30
        while count_tenant_rows(owner_engine, "invoices", other) == 0:
            assert time.monotonic() < deadline, "the worker closed nothing"
            time.sleep(0.1)
    finally:
        stopping.set()
        closer.join(timeout=30)


def _jobs(stopping: threading.Event) -> dict[str, Periodic]:
    return {job.name: job for job in periodic_jobs(stopping)}


def test_a_long_close_delays_no_usage_threshold(owner_engine: Engine) -> None:
    """The worker's periodic jobs have a thread each: usage recorded while a month-end close runs
    (here, one held open) has its threshold announced without waiting for the close to end."""
    stopping, closing, release = threading.Event(), threading.Event(), threading.Event()
    jobs = _jobs(stopping)

    def long_close() -> None:
        closing.set()
        release.wait(30)

    jobs["close-periods"].job = long_close
    jobs["usage-thresholds"].interval = 0.1
    tenant_id = create_billing_tenant(plan="starter")  # 1,000 included minutes
    started = [jobs["close-periods"], jobs["usage-thresholds"]]
    for job in started:
        job.start()
    try:
        assert closing.wait(10)
        end_call_at(tenant_id, datetime(2026, 3, 3, tzinfo=UTC), seconds=850 * 60)
        deadline = time.monotonic() + 10
        while not _events(owner_engine, tenant_id, "usage.threshold_reached"):
            assert time.monotonic() < deadline, "the threshold waited for the close"
            time.sleep(0.1)
        assert not release.is_set()  # the close was still running
    finally:
        stopping.set()
        release.set()
        for job in started:
            job.join(timeout=30)


def test_the_worker_rests_after_each_close_as_long_as_it_took_and_stops_when_told() -> None:
    tenants = [create_billing_tenant() for _ in range(3)]
    rests: list[float] = []

    def pause(took: float) -> bool:  # a stop event's wait: True once the worker is stopping
        rests.append(took)
        return len(rests) == 2

    assert billing.close_periods([(t, "2026-02") for t in tenants], APRIL_2, pause=pause) == 2
    assert len(rests) == 2 and all(took > 0 for took in rests)


def test_months_missed_while_the_worker_was_down_are_invoiced_used_or_not(
    owner_engine: Engine,
) -> None:
    """Every month from the tenant's creation is owed, whether or not a call opened its period:
    a worker back after months away invoices each of them, once."""
    quiet = create_billing_tenant(plan="starter", since=datetime(2026, 8, 16, tzinfo=UTC))
    busy = create_billing_tenant(plan="starter", since=datetime(2026, 8, 1, tzinfo=UTC))
    end_call_at(busy, datetime(2026, 8, 20, tzinfo=UTC), seconds=600)  # opens August alone
    back = datetime(2026, 12, 2, tzinfo=UTC)  # the worker was down from August until now
    billing.close_due_periods(back)
    billing.close_due_periods(back)

    def invoiced(tenant_id: uuid.UUID) -> list[tuple[str, int]]:
        rows = _rows(
            owner_engine,
            "SELECT period, total_cents FROM invoices WHERE tenant_id = :t ORDER BY period",
            t=tenant_id,
        )
        return [(r.period, r.total_cents) for r in rows]

    # Created on 16 August: 16 of August's 31 days, 4,900 x 16/31 = 2,529.03 -> 2,529.
    months = [("2026-09", 4900), ("2026-10", 4900), ("2026-11", 4900)]
    assert invoiced(quiet) == [("2026-08", 2529), *months]
    assert invoiced(busy) == [("2026-08", 4900), *months]


def test_a_period_missing_inside_the_chain_is_opened_alone(owner_engine: Engine) -> None:
    """Openers never leave a gap, but one found (rows removed by hand) must not send the opener
    walking backwards from the first period: it opens the missing one, and only it."""
    tenant = create_tenant(plan="pro")
    with transaction(tenant.id) as session:
        billing.open_period(session, tenant.id, "2026-09")
        billing.open_period(session, tenant.id, "2026-11")
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text("DELETE FROM billing_periods WHERE tenant_id = :t AND period = '2026-10'"),
            {"t": tenant.id},
        )
    with transaction(tenant.id) as session:
        session.execute(text("SET LOCAL statement_timeout = '5s'"))
        assert billing.open_period(session, tenant.id, "2026-10") is not None
        periods = session.scalars(
            text("SELECT period FROM billing_periods WHERE tenant_id = :t ORDER BY period"),
            {"t": tenant.id},
        ).all()
    assert periods == ["2026-09", "2026-10", "2026-11"]
