"""Analytics: local buckets across DST and odd offsets, bad ranges, isolation, the CSV export, and
every figure checked against a recount of the rows done here, in Python."""

from __future__ import annotations

import csv
import io
import random
import statistics
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import sleep
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, update
from starlette.testclient import TestClient

from app.schemas.calls import CallFilters
from app.services.analytics import MAX_STALENESS_SECONDS
from tests.helpers import (
    TenantFixture,
    create_number_and_profile,
    insert_call,
    random_e164,
    twilio_call_sid,
)

NEW_YORK = "America/New_York"
KATHMANDU = "Asia/Kathmandu"  # +05:45
ST_JOHNS = "America/St_Johns"  # -03:30 in winter, -02:30 in summer


def _set_timezone(
    client: TestClient, admin: dict[str, str], tenant: TenantFixture, tz: str
) -> None:
    response = client.patch(tenant.url(), json={"timezone": tz}, headers=admin)
    assert response.status_code == 200, response.text


def _get(client: TestClient, tenant: TenantFixture, path: str, **params: Any) -> Any:
    response = client.get(tenant.url(path), params=params, headers=tenant.read_headers)
    assert response.status_code == 200, response.text
    return response.json()


def _series(client: TestClient, tenant: TenantFixture, **params: Any) -> list[dict[str, Any]]:
    return list(_get(client, tenant, "/analytics/timeseries", **params)["buckets"])


def _at(tz: str, *args: int) -> datetime:
    """A local wall-clock time in `tz` (fold=0 where it is ambiguous)."""
    return datetime(*args, tzinfo=ZoneInfo(tz))  # type: ignore[misc]


# -- buckets in local time ----------------------------------------------------------------------


def test_new_york_days_of_23_and_25_hours(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    _set_timezone(client, admin_headers, tenant, NEW_YORK)
    # Calls a second either side of local midnights; the 8th of March has 23 hours, the 1st of
    # November 25.
    moments = [
        _at(NEW_YORK, 2026, 3, 7, 23, 59, 59),  # 7th
        _at(NEW_YORK, 2026, 3, 8, 0, 0, 0),  # 8th (05:00 UTC)
        _at(NEW_YORK, 2026, 3, 8, 23, 59, 59),  # 8th (03:59:59 UTC on the 9th)
        _at(NEW_YORK, 2026, 3, 9, 0, 0, 0),  # 9th (04:00 UTC)
        _at(NEW_YORK, 2026, 11, 1, 1, 30).replace(fold=1),  # the second 01:30 (EST): still the 1st
        _at(NEW_YORK, 2026, 11, 1, 23, 59, 59),  # 1st (04:59:59 UTC on the 2nd)
        _at(NEW_YORK, 2026, 11, 2, 0, 0, 0),  # 2nd
    ]
    for moment in moments:
        insert_call(tenant.id, started_at=moment)

    march = _series(client, tenant, interval="day", **{"from": "2026-03-07", "to": "2026-03-10"})
    assert [(b["start"], b["calls"]) for b in march] == [
        ("2026-03-07T00:00:00-05:00", 1),
        ("2026-03-08T00:00:00-05:00", 2),
        ("2026-03-09T00:00:00-04:00", 1),
    ]
    hours = _series(client, tenant, interval="hour", **{"from": "2026-03-08", "to": "2026-03-09"})
    assert len(hours) == 23
    assert "2026-03-08T02:00:00" not in {b["start"][:19] for b in hours}
    assert hours[2]["start"] == "2026-03-08T03:00:00-04:00"
    assert (hours[0]["calls"], hours[-1]["calls"]) == (1, 1)

    november = _series(
        client, tenant, interval="hour", **{"from": "2026-11-01", "to": "2026-11-02"}
    )
    assert len(november) == 25
    assert [b["start"] for b in november[1:3]] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
    ]
    assert [b["calls"] for b in november[1:3]] == [0, 1]
    days = _series(client, tenant, interval="day", **{"from": "2026-11-01", "to": "2026-11-03"})
    assert [(b["start"], b["calls"]) for b in days] == [
        ("2026-11-01T00:00:00-04:00", 2),
        ("2026-11-02T00:00:00-05:00", 1),
    ]


def test_previous_range_is_as_many_local_days_across_dst(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    _set_timezone(client, admin_headers, tenant, NEW_YORK)
    insert_call(tenant.id, started_at=_at(NEW_YORK, 2026, 3, 2, 23, 30))  # before both ranges
    insert_call(tenant.id, started_at=_at(NEW_YORK, 2026, 3, 3, 0, 30))  # previous range
    insert_call(tenant.id, started_at=_at(NEW_YORK, 2026, 3, 16, 23, 59))  # this range
    body = _get(client, tenant, "/analytics/summary", **{"from": "2026-03-10", "to": "2026-03-17"})
    # Seven local days before the 10th, though one of them (the 8th) had 23 hours.
    assert (body["previous"]["from"], body["previous"]["to"]) == (
        "2026-03-03T00:00:00-05:00",
        "2026-03-10T00:00:00-04:00",
    )
    assert (body["totals"]["calls"], body["previous"]["totals"]["calls"]) == (1, 1)


def test_hours_stay_on_the_local_hour_after_a_half_hour_shift(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    # Lord Howe Island moves from +10:30 to +11:00 at 02:00 on 4 October 2026.
    _set_timezone(client, admin_headers, tenant, "Australia/Lord_Howe")
    hours = _series(client, tenant, interval="hour", **{"from": "2026-10-04", "to": "2026-10-05"})
    assert [b["start"][11:] for b in hours[:4]] == [
        "00:00:00+10:30",
        "01:00:00+10:30",
        "02:30:00+11:00",  # the half hour that is left of local 02:00
        "03:00:00+11:00",
    ]
    assert all(b["start"][14:19] == "00:00" for b in hours[3:]) and len(hours) == 24


@pytest.mark.parametrize(
    ("tz", "day", "offset"),
    [(KATHMANDU, date(2026, 1, 15), "+05:45"), (ST_JOHNS, date(2026, 1, 15), "-03:30")],
)
def test_offsets_that_are_not_whole_hours(
    client: TestClient,
    admin_headers: dict[str, str],
    tenant: TenantFixture,
    tz: str,
    day: date,
    offset: str,
) -> None:
    _set_timezone(client, admin_headers, tenant, tz)
    midnight = datetime.combine(day, time(), tzinfo=ZoneInfo(tz))
    for moment in (midnight - timedelta(seconds=1), midnight, midnight + timedelta(minutes=59)):
        insert_call(tenant.id, started_at=moment.astimezone(UTC))
    the_day_before = (day - timedelta(days=1)).isoformat()
    the_day_after = (day + timedelta(days=1)).isoformat()
    days = _series(client, tenant, interval="day", **{"from": the_day_before, "to": the_day_after})
    assert [(b["start"], b["calls"]) for b in days] == [
        (f"{the_day_before}T00:00:00{offset}", 1),
        (f"{day.isoformat()}T00:00:00{offset}", 2),
    ]
    # Hours start on the local hour (:15 or :30 past in UTC); a range given in UTC is read so.
    hours = _series(
        client,
        tenant,
        interval="hour",
        **{
            "from": (midnight - timedelta(hours=1)).astimezone(UTC).isoformat(),
            "to": (midnight + timedelta(hours=2)).astimezone(UTC).isoformat(),
        },
    )
    assert [(b["start"][11:], b["calls"]) for b in hours] == [
        (f"23:00:00{offset}", 1),
        (f"00:00:00{offset}", 2),
        (f"01:00:00{offset}", 0),
    ]


def test_weeks_start_on_monday_and_months_on_the_first(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    _set_timezone(client, admin_headers, tenant, KATHMANDU)
    insert_call(tenant.id, started_at=_at(KATHMANDU, 2026, 3, 8, 23, 59))  # a Sunday
    insert_call(tenant.id, started_at=_at(KATHMANDU, 2026, 3, 9, 0, 1))  # the Monday after
    insert_call(tenant.id, started_at=_at(KATHMANDU, 2026, 3, 31, 23, 59))
    weeks = _series(client, tenant, interval="week", **{"from": "2026-03-04", "to": "2026-03-16"})
    assert [(b["start"], b["calls"]) for b in weeks] == [
        ("2026-03-02T00:00:00+05:45", 1),  # the Wednesday's week, partly in the range
        ("2026-03-09T00:00:00+05:45", 1),
    ]
    assert all(date.fromisoformat(b["start"][:10]).weekday() == 0 for b in weeks)
    months = _series(client, tenant, interval="month", **{"from": "2026-02-10", "to": "2026-04-30"})
    assert [(b["start"], b["calls"]) for b in months] == [
        ("2026-02-01T00:00:00+05:45", 0),
        ("2026-03-01T00:00:00+05:45", 3),
        ("2026-04-01T00:00:00+05:45", 0),
    ]


def test_default_range_is_the_last_30_local_days(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    _set_timezone(client, admin_headers, tenant, ST_JOHNS)
    insert_call(tenant.id, started_at=datetime.now(UTC))
    insert_call(tenant.id, started_at=datetime.now(UTC) - timedelta(days=45))
    body = _get(client, tenant, "/analytics/summary")
    today = datetime.now(ZoneInfo(ST_JOHNS)).date()
    start = datetime.fromisoformat(body["from"])
    end = datetime.fromisoformat(body["to"])
    assert end.date() == today + timedelta(days=1) and end.time() == time()
    assert start.date() == today - timedelta(days=29) and start.time() == time()
    assert body["timezone"] == ST_JOHNS
    assert (body["totals"]["calls"], body["previous"]["totals"]["calls"]) == (1, 1)
    assert len(_series(client, tenant)) == 30


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("summary", {"from": "2026-03-10", "to": "2026-03-10"}, "invalid_range"),
        ("summary", {"from": "2026-03-10", "to": "2026-03-01"}, "invalid_range"),
        ("summary", {"from": "2026-03-10T00:00:00Z", "to": "2026-03-09"}, "invalid_range"),
        ("summary", {"from": "2025-01-01", "to": "2026-02-06"}, "range_too_long"),
        ("summary", {"from": "2030-01-01"}, "invalid_range"),  # after the default `to`: today
        (
            "timeseries",
            {"from": "2026-01-01", "to": "2026-04-01", "interval": "hour"},
            "too_many_buckets",
        ),
        ("timeseries", {"interval": "fortnight"}, "validation_error"),
        ("timeseries", {"interval": ""}, "validation_error"),
        ("summary", {"from": "2026-03-01T00:00:00"}, "naive_datetime"),
        ("summary", {"to": "2026-03-01 10:00"}, "naive_datetime"),
        ("summary", {"from": "yesterday"}, "invalid_datetime"),
        ("summary", {"from": ""}, "invalid_datetime"),
        ("summary", {"from": "2026-02-30"}, "invalid_datetime"),
        ("summary", {"from": "1999-12-31", "to": "2000-01-02"}, "invalid_datetime"),
        ("summary", {"from": "2026-03-01T25:00:00Z"}, "invalid_datetime"),
        (
            "summary",
            {"from": "2026-03-01\x00"},
            "invalid_text",
        ),  # refused at the edge (app/middleware.py)
        ("summary", {"from": "9" * 65}, "validation_error"),
        ("timeseries", {"to": "2026-03-01T00:00:00+24:00"}, "invalid_datetime"),
    ],
)
def test_bad_ranges_are_422_with_a_code(
    client: TestClient, tenant: TenantFixture, path: str, params: dict[str, str], code: str
) -> None:
    response = client.get(
        tenant.url(f"/analytics/{path}"), params=params, headers=tenant.read_headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_limits_are_inclusive(client: TestClient, tenant: TenantFixture) -> None:
    # 400 local days and 2,000 buckets are allowed; one more is not (above).
    assert _get(client, tenant, "/analytics/summary", **{"from": "2025-01-01", "to": "2026-02-05"})
    hours = _series(
        client,
        tenant,
        interval="hour",
        **{"from": "2026-01-01T00:00:00Z", "to": "2026-03-25T08:00:00Z"},
    )
    assert len(hours) == 2000


def test_an_offset_plus_sent_unencoded_is_still_a_plus(
    client: TestClient, tenant: TenantFixture
) -> None:
    # "+05:45" in a query string that was not URL-encoded arrives as " 05:45".
    spaced = _get(client, tenant, "/analytics/summary", **{"from": "2026-03-01T00:00:00 05:45"})
    assert spaced["from"] == "2026-02-28T18:15:00Z"


# -- isolation ----------------------------------------------------------------------------------


def test_another_tenant_gets_404_and_its_calls_never_count(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    moment = datetime(2026, 3, 3, 12, tzinfo=UTC)
    insert_call(other_tenant.id, started_at=moment)
    insert_call(other_tenant.id, started_at=moment)
    insert_call(tenant.id, started_at=moment)
    window = {"from": "2026-03-01", "to": "2026-03-05"}
    assert _get(client, tenant, "/analytics/summary", **window)["totals"]["calls"] == 1
    assert _get(client, other_tenant, "/analytics/summary", **window)["totals"]["calls"] == 2
    for path in ("/analytics/summary", "/analytics/timeseries", "/calls/export"):
        response = client.get(tenant.url(path), params=window, headers=other_tenant.headers)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["code"] == "not_found"
    exported = _export(client, tenant, tenant.read_headers)
    assert len(exported) == 1


# -- CSV export ---------------------------------------------------------------------------------


def _export(
    client: TestClient, tenant: TenantFixture, headers: dict[str, str], **params: Any
) -> list[dict[str, str]]:
    response = client.get(tenant.url("/calls/export"), params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment")
    return list(csv.DictReader(io.StringIO(response.text, newline="")))


def test_csv_round_trip_with_a_read_only_key(
    client: TestClient, admin_headers: dict[str, str], tenant: TenantFixture
) -> None:
    _set_timezone(client, admin_headers, tenant, ST_JOHNS)
    setup = create_number_and_profile(tenant.id)
    tricky = 'Caller said "hi, there", then:\nline two\r\nand a comma, and a quote ""'
    started = datetime(2026, 1, 20, 14, 5, 9, tzinfo=UTC)
    first = insert_call(
        tenant.id,
        status="completed",
        direction="outbound",
        phone_number_id=setup.number_id,
        ai_profile_id=setup.profile_id,
        started_at=started,
        answered_at=started + timedelta(seconds=4),
        ended_at=started + timedelta(seconds=125),
        duration_seconds=121,
        billable_minutes=3,
        end_reason="caller_hangup",
        summary=tricky,
    )
    second = insert_call(
        tenant.id,
        status="no_answer",
        started_at=started + timedelta(hours=1),
        end_reason="no_answer",
        summary='=HYPERLINK("http://evil.example")',
    )
    rows = _export(client, tenant, tenant.read_headers)
    assert [row["id"] for row in rows] == [str(second), str(first)]  # newest first, like the list
    row = rows[1]
    assert row["summary"] == tricky
    assert (row["direction"], row["status"], row["end_reason"]) == (
        "outbound",
        "completed",
        "caller_hangup",
    )
    assert (row["phone_number_id"], row["ai_profile_id"]) == (
        str(setup.number_id),
        str(setup.profile_id),
    )
    assert (row["duration_seconds"], row["billable_minutes"]) == ("121", "3")
    # In the tenant's timezone, with its offset (St John's is -03:30 in January).
    assert row["started_at"] == "2026-01-20T10:35:09-03:30"
    assert datetime.fromisoformat(row["ended_at"]) == started + timedelta(seconds=125)
    assert rows[0]["answered_at"] == "" and rows[0]["duration_seconds"] == ""
    # A summary that a spreadsheet would run as a formula is defused, and only that one.
    assert rows[0]["summary"] == '\'=HYPERLINK("http://evil.example")'
    # The call list's filters apply.
    assert [r["id"] for r in _export(client, tenant, tenant.headers, status="no_answer")] == [
        str(second)
    ]
    assert _export(client, tenant, tenant.headers, direction="inbound", status="completed") == []
    no_match = client.get(
        tenant.url("/calls/export"), params={"status": "busy"}, headers=tenant.headers
    )
    assert no_match.text.splitlines()[0].startswith("id,direction,status,")
    bad = client.get(tenant.url("/calls/export"), params={"format": "xlsx"}, headers=tenant.headers)
    assert bad.status_code == 422


def test_export_streams_in_batches_of_a_server_side_cursor(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import analytics

    monkeypatch.setattr(analytics, "EXPORT_BATCH_ROWS", 7)
    _bulk_calls(
        tenant.id,
        [
            {"started_at": datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=i)}
            for i in range(30)
        ],
    )
    chunks = list(analytics.export_calls_csv(_scope(tenant), CallFilters()))
    assert len(chunks) == 5  # the header with 7 rows, 7, 7, 7, 2
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert len(rows) == 31 and len({r[0] for r in rows[1:]}) == 30


def _scope(tenant: TenantFixture) -> Any:
    from app.services.scope import Principal, Role, TenantScope

    principal = Principal(role=Role.read_only, tenant_id=tenant.id)
    return TenantScope(tenant_id=tenant.id, principal=principal, tenant_status="active", plan="pro")


# -- exactness: every figure against a recount ---------------------------------------------------


@dataclass
class FakeCall:
    id: uuid.UUID
    status: str
    direction: str
    phone_number_id: uuid.UUID | None
    ai_profile_id: uuid.UUID | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billable_minutes: int
    end_reason: str | None

    def row(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        return {
            **self.__dict__,
            "tenant_id": tenant_id,
            "from_number": "+14155550100",
            "to_number": "+14155550199",
            "provider_call_sid": twilio_call_sid(),
        }


@dataclass
class FakeTurn:
    call_id: uuid.UUID
    seq: int
    role: str
    interrupted: bool
    latency_ms: int | None
    created_at: datetime


@dataclass
class World:
    calls: list[FakeCall] = field(default_factory=list)
    turns: list[FakeTurn] = field(default_factory=list)
    numbers: dict[uuid.UUID, str] = field(default_factory=dict)
    profiles: list[uuid.UUID] = field(default_factory=list)


ENDED = {
    "completed": ["caller_hangup", "agent_hangup", "transferred", "max_duration"],
    "busy": ["busy"],
    "no_answer": ["no_answer"],
    "failed": ["failed", "relay_error"],
    "canceled": ["canceled"],
    "rejected": ["concurrency_limit", "minutes_exhausted", "tenant_suspended"],
}
SPAN_START = datetime(2026, 2, 20, tzinfo=UTC)
SPAN_DAYS = 40


def _random_call(rng: random.Random, world: World, started_at: datetime) -> FakeCall:
    status = rng.choice(["completed"] * 6 + ["in_progress", "ringing", "queued"] + list(ENDED))
    answered = (
        status == "completed"
        or status == "in_progress"
        or (status == "failed" and rng.random() < 0.3)
    )
    answered_at = started_at + timedelta(seconds=rng.randint(1, 30)) if answered else None
    duration = None
    ended_at = None
    if status in ENDED:
        # Answered: talk time, some ending hours later (past bucket boundaries, which must not
        # move them). Unanswered: Twilio may still report a few seconds; they are not talk time.
        duration = (
            rng.choice([rng.randint(0, 900), rng.randint(3600, 20000)])
            if answered
            else rng.choice([0, 0, rng.randint(1, 40)])
        )
        ended_at = (answered_at or started_at) + timedelta(seconds=duration or rng.randint(5, 60))
    number = rng.choice([*world.numbers, None])
    return FakeCall(
        id=uuid.uuid4(),
        status=status,
        direction=rng.choice(["inbound", "inbound", "outbound"]),
        phone_number_id=number,
        ai_profile_id=rng.choice([*world.profiles, None]),
        started_at=started_at,
        answered_at=answered_at,
        ended_at=ended_at,
        duration_seconds=duration,
        billable_minutes=-(-duration // 60) if answered and duration else 0,
        end_reason=rng.choice(ENDED[status]) if status in ENDED else None,
    )


def _moments(rng: random.Random, count: int) -> list[datetime]:
    """Start times over SPAN_DAYS, a third of them within a minute of some local midnight or hour."""
    moments = []
    for _ in range(count):
        base = SPAN_START + timedelta(seconds=rng.randrange(SPAN_DAYS * 86400))
        if rng.random() < 0.33:
            tz = ZoneInfo(rng.choice([NEW_YORK, KATHMANDU, ST_JOHNS]))
            local = base.astimezone(tz).replace(minute=0, second=0, microsecond=0)
            if rng.random() < 0.5:
                local = local.replace(hour=0)
            base = local.astimezone(UTC) + timedelta(seconds=rng.choice([-1, 0, 0, 1, 59]))
        moments.append(base + timedelta(microseconds=rng.randrange(1_000_000)))
    return moments


def _bulk_calls(tenant_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    from app.config.database import transaction
    from app.models import Call

    defaults = {
        "direction": "inbound",
        "status": "queued",
        "from_number": random_e164(),
        "to_number": random_e164(),
        "billable_minutes": 0,
    }
    with transaction(tenant_id) as session:
        session.execute(insert(Call), [{**defaults, "tenant_id": tenant_id, **r} for r in rows])


def _build_world(tenant: TenantFixture, rng: random.Random) -> World:
    from app.config.database import transaction
    from app.models import CallTurn

    world = World()
    for _ in range(3):
        setup = create_number_and_profile(tenant.id)
        assert setup.profile_id is not None
        world.numbers[setup.number_id] = setup.number
        world.profiles.append(setup.profile_id)
    world.calls = [_random_call(rng, world, moment) for moment in _moments(rng, 3000)]
    _bulk_calls(tenant.id, [call.row(tenant.id) for call in world.calls])
    for call in rng.sample(world.calls, 400):
        for seq in range(1, rng.randint(2, 7)):
            role = "agent" if seq % 2 else "caller"
            world.turns.append(
                FakeTurn(
                    call_id=call.id,
                    seq=seq,
                    role=role,
                    interrupted=role == "agent" and rng.random() < 0.2,
                    latency_ms=rng.choice([rng.randint(150, 2500), None])
                    if role == "agent"
                    else None,
                    created_at=call.started_at + timedelta(seconds=20 * seq),
                )
            )
    with transaction(tenant.id) as session:
        session.execute(
            insert(CallTurn),
            [{**t.__dict__, "tenant_id": tenant.id, "text": "…"} for t in world.turns],
        )
    return world


def _percentiles(values: list[float], *ps: int) -> list[float | None]:
    if len(values) < 2:
        return [values[0] if values else None for _ in ps]
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # = percentile_cont
    return [cuts[p - 1] for p in ps]


def _expected_totals(calls: list[FakeCall]) -> dict[str, Any]:
    answered = [c for c in calls if c.answered_at is not None]
    return {
        "calls": len(calls),
        "answered": len(answered),
        "answer_rate": round(len(answered) / len(calls), 4) if calls else None,
        "talk_minutes": round(sum(c.duration_seconds or 0 for c in answered) / 60, 2),
        "billable_minutes": sum(c.billable_minutes for c in calls),
        "transfers": sum(c.end_reason == "transferred" for c in calls),
    }


def _expected_duration(calls: list[FakeCall]) -> dict[str, Any]:
    durations = [
        c.duration_seconds for c in calls if c.answered_at and c.duration_seconds is not None
    ]
    p50, p90 = _percentiles([float(d) for d in durations], 50, 90)
    return {"average": statistics.fmean(durations) if durations else None, "p50": p50, "p90": p90}


def _close(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if value is None or actual[key] is None:
            assert actual[key] == value, key
        else:
            assert actual[key] == pytest.approx(value, rel=1e-9), key


def _check_summary(client: TestClient, tenant: TenantFixture, world: World, tz: ZoneInfo) -> None:
    start, end = datetime(2026, 3, 2, tzinfo=tz), datetime(2026, 3, 16, tzinfo=tz)
    before = datetime(2026, 2, 16, tzinfo=tz)  # 14 local days earlier
    body = _get(client, tenant, "/analytics/summary", **{"from": "2026-03-02", "to": "2026-03-16"})
    assert datetime.fromisoformat(body["from"]) == start
    assert datetime.fromisoformat(body["previous"]["from"]) == before

    def within(a: datetime, b: datetime) -> list[FakeCall]:
        return [c for c in world.calls if a <= c.started_at < b]

    chosen = within(start, end)
    assert body["totals"] == _expected_totals(chosen)
    assert body["previous"]["totals"] == _expected_totals(within(before, start))
    _close(body["duration_seconds"], _expected_duration(chosen))
    _close(body["previous"]["duration_seconds"], _expected_duration(within(before, start)))

    every_status = {"queued", "ringing", "in_progress", *ENDED}
    assert body["by_status"] == dict.fromkeys(every_status, 0) | Counter(c.status for c in chosen)
    assert body["by_direction"] == dict(Counter(c.direction for c in chosen))
    assert body["by_end_reason"] == dict(Counter(c.end_reason for c in chosen if c.end_reason))
    for key, name, listed in (
        ("phone_number_id", "phone_number_id", body["by_phone_number"]),
        ("ai_profile_id", "ai_profile_id", body["by_ai_profile"]),
    ):
        groups: dict[Any, list[FakeCall]] = defaultdict(list)
        for call in chosen:
            groups[getattr(call, key)].append(call)
        expected = {
            str(k) if k else None: {
                "calls": len(v),
                "answered": sum(c.answered_at is not None for c in v),
                "talk_minutes": _expected_totals(v)["talk_minutes"],
                "billable_minutes": sum(c.billable_minutes for c in v),
            }
            for k, v in groups.items()
        }
        got = {
            row[name]: {
                f: row[f] for f in ("calls", "answered", "talk_minutes", "billable_minutes")
            }
            for row in listed
        }
        assert got == expected
    for row in body["by_phone_number"]:
        if row["phone_number_id"]:
            assert row["number"] == world.numbers[uuid.UUID(row["phone_number_id"])]

    latencies = [
        float(t.latency_ms)
        for t in world.turns
        if t.role == "agent"
        and not t.interrupted
        and t.latency_ms is not None
        and start <= t.created_at < end
    ]
    p50, p90, p99 = _percentiles(latencies, 50, 90, 99)
    _close(body["agent_latency_ms"], {"turns": len(latencies), "p50": p50, "p90": p90, "p99": p99})


def _local_bucket(moment: datetime, tz: ZoneInfo, interval: str) -> datetime:
    """The bucket start of `moment` (in UTC), recounted from its local calendar fields."""
    local = moment.astimezone(tz)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.date()
    if interval == "week":
        day = day - timedelta(days=day.isoweekday() - 1)
    if interval == "month":
        day = day.replace(day=1)
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _check_series(
    client: TestClient,
    tenant: TenantFixture,
    world: World,
    tz: ZoneInfo,
    interval: str,
    start: str,
    end: str,
) -> None:
    buckets = _series(client, tenant, interval=interval, **{"from": start, "to": end})
    lo = datetime.combine(date.fromisoformat(start), time(), tzinfo=tz)
    hi = datetime.combine(date.fromisoformat(end), time(), tzinfo=tz)
    expected: dict[datetime, list[FakeCall]] = defaultdict(list)
    for call in world.calls:
        if lo <= call.started_at < hi:
            expected[_local_bucket(call.started_at, tz, interval)].append(call)
    printed = [datetime.fromisoformat(b["start"]) for b in buckets]
    # Each start is printed with the offset the tenant's timezone has at that instant.
    assert all(s.utcoffset() == s.astimezone(tz).utcoffset() for s in printed)
    starts = [s.astimezone(UTC) for s in printed]
    assert starts == sorted(set(starts))
    assert set(expected) <= set(starts)
    for bucket, start_at in zip(buckets, starts, strict=True):
        calls = expected.get(start_at, [])
        totals = _expected_totals(calls)
        assert bucket == {
            "start": bucket["start"],
            "calls": totals["calls"],
            "answered": totals["answered"],
            "completed": sum(c.status == "completed" for c in calls),
            "talk_minutes": totals["talk_minutes"],
            "billable_minutes": totals["billable_minutes"],
        }, bucket["start"]
    assert sum(b["calls"] for b in buckets) == sum(map(len, expected.values()))


def _late_callbacks(tenant: TenantFixture, world: World, rng: random.Random) -> None:
    """Calls left queued, ringing or talking end now, as a late status callback would end them."""
    from app.config.database import transaction
    from app.models import Call

    pending = [c for c in world.calls if c.status in {"queued", "ringing", "in_progress"}]
    with transaction(tenant.id) as session:
        for call in rng.sample(pending, len(pending) // 2):
            call.status = "completed"
            call.answered_at = call.answered_at or call.started_at + timedelta(seconds=3)
            call.duration_seconds = rng.randint(1, 3000)
            call.ended_at = call.answered_at + timedelta(seconds=call.duration_seconds)
            call.billable_minutes = -(-call.duration_seconds // 60)
            call.end_reason = rng.choice(ENDED["completed"])
            session.execute(
                update(Call)
                .where(Call.id == call.id)
                .values(
                    status=call.status,
                    answered_at=call.answered_at,
                    ended_at=call.ended_at,
                    duration_seconds=call.duration_seconds,
                    billable_minutes=call.billable_minutes,
                    end_reason=call.end_reason,
                )
            )


def test_every_figure_equals_a_recount(
    client: TestClient,
    admin_headers: dict[str, str],
    tenant: TenantFixture,
    other_tenant: TenantFixture,
) -> None:
    rng = random.Random(16)
    world = _build_world(tenant, rng)
    # Another tenant's calls in the same days must change nothing.
    _bulk_calls(
        other_tenant.id,
        [
            {
                "started_at": m,
                "status": "completed",
                "answered_at": m,
                "duration_seconds": 60,
                "billable_minutes": 1,
            }
            for m in _moments(rng, 300)
        ],
    )
    for name in (NEW_YORK, KATHMANDU, ST_JOHNS):
        _set_timezone(client, admin_headers, tenant, name)
        tz = ZoneInfo(name)
        _check_summary(client, tenant, world, tz)
        _check_series(client, tenant, world, tz, "day", "2026-02-21", "2026-03-31")
        _check_series(client, tenant, world, tz, "hour", "2026-03-07", "2026-03-10")
        _check_series(client, tenant, world, tz, "week", "2026-02-20", "2026-03-30")
        _check_series(client, tenant, world, tz, "month", "2026-02-01", "2026-04-01")
    # Late status callbacks: the figures follow within the stated staleness.
    _late_callbacks(tenant, world, rng)
    sleep(MAX_STALENESS_SECONDS)
    _check_summary(client, tenant, world, ZoneInfo(ST_JOHNS))
    _check_series(client, tenant, world, ZoneInfo(ST_JOHNS), "day", "2026-02-21", "2026-03-31")
    # And the export lists exactly these calls, with the same values.
    rows = _export(client, tenant, tenant.read_headers)
    assert len(rows) == len(world.calls)
    by_id = {c.id: c for c in world.calls}
    for row in rows[::97]:
        call = by_id[uuid.UUID(row["id"])]
        assert (row["status"], row["end_reason"] or None) == (call.status, call.end_reason)
        assert datetime.fromisoformat(row["started_at"]) == call.started_at.replace(microsecond=0)


def test_figures_are_at_most_two_seconds_old_and_say_when_they_were_counted(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    window = {"from": "2026-05-01", "to": "2026-05-02"}
    moment = datetime(2026, 5, 1, 12, tzinfo=UTC)
    _bulk_calls(tenant.id, [{"started_at": moment, "status": "completed"}])
    first = _get(client, tenant, "/analytics/summary", **window)
    assert first["totals"]["calls"] == 1
    # The same question of another tenant, at once, is counted for that tenant.
    assert _get(client, other_tenant, "/analytics/summary", **window)["totals"]["calls"] == 0
    _bulk_calls(tenant.id, [{"started_at": moment, "status": "completed"}])
    sleep(MAX_STALENESS_SECONDS)
    later = _get(client, tenant, "/analytics/summary", **window)
    assert later["totals"]["calls"] == 2
    assert datetime.fromisoformat(later["as_of"]) > datetime.fromisoformat(first["as_of"])
