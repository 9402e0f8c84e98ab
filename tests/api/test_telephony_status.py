"""POST /telephony/twilio/status: a forward-only state machine; a call ends (and is metered) once."""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from starlette.testclient import TestClient

from tests.helpers import (
    TenantFixture,
    count_tenant_rows,
    create_number_and_profile,
    insert_call_turn,
    parse_twiml,
    random_e164,
    twilio_call_sid,
    twilio_post,
    twilio_urls,
)

VOICE = "/telephony/twilio/voice"
STATUS = "/telephony/twilio/status"


def _ring(client: TestClient, tenant: TenantFixture) -> tuple[str, uuid.UUID]:
    """An inbound call, answered by the voice webhook (ringing); returns (CallSid, call id)."""
    setup = create_number_and_profile(tenant.id)
    sid = twilio_call_sid()
    response = twilio_post(
        client, VOICE, {"CallSid": sid, "From": random_e164(), "To": setup.number}
    )
    relay = parse_twiml(response.text).find("Connect/ConversationRelay/Parameter")
    assert relay is not None
    return sid, uuid.UUID(relay.get("value"))


def _status(client: TestClient, sid: str, status: str, duration: int | None = None) -> None:
    params = {"CallSid": sid, "CallStatus": status, "AccountSid": os.environ["TWILIO_ACCOUNT_SID"]}
    if duration is not None:
        params["CallDuration"] = str(duration)
    response = twilio_post(client, STATUS, params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    assert list(parse_twiml(response.text)) == []  # an empty <Response/>


def _call(client: TestClient, tenant: TenantFixture, call_id: uuid.UUID) -> dict[str, Any]:
    response = client.get(tenant.url(f"/calls/{call_id}"), headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


def _backdate(engine: Engine, call_id: uuid.UUID, seconds: int = 7200) -> None:
    """Move the call's creation and answer `seconds` into the past: reported durations are
    capped to the wall time since the answer."""
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text(
                "UPDATE calls SET created_at = created_at - make_interval(secs => :s),"
                " answered_at = answered_at - make_interval(secs => :s) WHERE id = :id"
            ),
            {"s": seconds, "id": call_id},
        )


def _usage(engine: Engine, tenant_id: uuid.UUID) -> list[tuple[str, int]]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        rows = conn.execute(
            text("SELECT period, minutes FROM usage_records WHERE tenant_id = :tid"),
            {"tid": str(tenant_id)},
        )
        return [(r.period, r.minutes) for r in rows]


def _ended_events(engine: Engine, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        rows = conn.execute(
            text(
                "SELECT body FROM webhook_events"
                " WHERE tenant_id = :tid AND event_type = 'call.ended'"
            ),
            {"tid": str(tenant_id)},
        )
        return [json.loads(r.body) for r in rows]


def test_a_call_moves_forward_and_ends_once_with_its_minutes(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    sid, call_id = _ring(client, tenant)
    insert_call_turn(tenant.id, call_id, seq=2, role="caller", text="I need an appointment.")
    insert_call_turn(
        tenant.id, call_id, seq=1, role="agent", text="Hello!", latency_ms=420, interrupted=True
    )

    _status(client, sid, "ringing")
    _status(client, sid, "in-progress")
    answered = _call(client, tenant, call_id)
    assert answered["status"] == "in_progress" and answered["answered_at"] is not None
    _backdate(owner_engine, call_id)
    answered = _call(client, tenant, call_id)

    _status(client, sid, "completed", 61)
    ended = _call(client, tenant, call_id)
    assert ended["status"] == "completed"
    assert (ended["duration_seconds"], ended["billable_minutes"]) == (61, 2)
    assert ended["ended_at"] is not None and ended["answered_at"] == answered["answered_at"]
    assert _usage(owner_engine, tenant.id) == [(datetime.now(UTC).strftime("%Y-%m"), 2)]

    # Repeated and late callbacks change nothing, and meter / announce nothing again.
    for late in ("completed", "in-progress", "ringing", "queued", "no-answer", "failed"):
        _status(client, sid, late, 300)
    assert _call(client, tenant, call_id) == ended
    assert len(_usage(owner_engine, tenant.id)) == 1

    events = _ended_events(owner_engine, tenant.id)
    assert len(events) == 1
    data = events[0]["data"]
    assert data["call"]["id"] == str(call_id)
    assert data["call"]["status"] == "completed"
    assert (data["call"]["duration_seconds"], data["call"]["billable_minutes"]) == (61, 2)
    assert data["transcript"] == [
        {"seq": 1, "role": "agent", "text": "Hello!", "interrupted": True, "latency_ms": 420},
        {
            "seq": 2,
            "role": "caller",
            "text": "I need an appointment.",
            "interrupted": False,
            "latency_ms": None,
        },
    ]


@pytest.mark.parametrize(
    ("final", "duration", "answered", "status", "billable"),
    [
        ("completed", 60, True, "completed", 1),
        ("completed", 61, True, "completed", 2),
        ("completed", 1, True, "completed", 1),
        ("completed", 3600, True, "completed", 60),
        ("completed", 0, True, "completed", 0),
        # The `answered` callback got lost: a completed call with a duration still connected.
        ("completed", 90, False, "completed", 2),
        ("no-answer", 0, False, "no_answer", 0),
        ("busy", 0, False, "busy", 0),
        ("canceled", 0, False, "canceled", 0),
        ("failed", 0, False, "failed", 0),
        # Never answered: Twilio's duration (ringing time) is not billable.
        ("no-answer", 25, False, "no_answer", 0),
    ],
)
def test_billable_minutes(
    client: TestClient,
    tenant: TenantFixture,
    owner_engine: Engine,
    final: str,
    duration: int,
    answered: bool,
    status: str,
    billable: int,
) -> None:
    sid, call_id = _ring(client, tenant)
    if answered:
        _status(client, sid, "in-progress")
    _backdate(owner_engine, call_id)
    _status(client, sid, final, duration)
    call = _call(client, tenant, call_id)
    assert (call["status"], call["billable_minutes"]) == (status, billable)
    assert call["duration_seconds"] == duration
    assert (call["answered_at"] is not None) == (answered or billable > 0)
    assert [m for _, m in _usage(owner_engine, tenant.id)] == [billable]
    assert len(_ended_events(owner_engine, tenant.id)) == 1


def test_out_of_order_callbacks_never_move_a_call_back(
    client: TestClient, tenant: TenantFixture
) -> None:
    sid, call_id = _ring(client, tenant)
    _status(client, sid, "in-progress")
    answered_at = _call(client, tenant, call_id)["answered_at"]
    _status(client, sid, "ringing")
    _status(client, sid, "queued")
    _status(client, sid, "in-progress")
    call = _call(client, tenant, call_id)
    assert (call["status"], call["answered_at"]) == ("in_progress", answered_at)


def test_completed_then_ringing_stays_completed(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    sid, call_id = _ring(client, tenant)
    _status(client, sid, "completed", 30)
    _status(client, sid, "ringing")
    _status(client, sid, "in-progress")
    call = _call(client, tenant, call_id)
    assert (call["status"], call["billable_minutes"]) == ("completed", 1)
    assert len(_usage(owner_engine, tenant.id)) == 1


def test_a_rejected_call_stays_rejected(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    from tests.helpers import insert_phone_number

    _, number = insert_phone_number(tenant.id)  # no profile: rejected
    sid = twilio_call_sid()
    twilio_post(client, VOICE, {"CallSid": sid, "From": random_e164(), "To": number})
    _status(client, sid, "busy", 0)
    _status(client, sid, "completed", 10)
    listed = client.get(tenant.url("/calls"), headers=tenant.headers).json()["items"]
    assert [(c["status"], c["end_reason"]) for c in listed] == [("rejected", "no_ai_profile")]
    assert _usage(owner_engine, tenant.id) == []
    assert _ended_events(owner_engine, tenant.id) == []


def test_unknown_call_sid_or_status_is_acknowledged_and_ignored(
    client: TestClient, tenant: TenantFixture
) -> None:
    _status(client, twilio_call_sid(), "completed", 60)
    sid, call_id = _ring(client, tenant)
    _status(client, sid, "exploded", 60)
    assert twilio_post(client, STATUS, {"CallStatus": "completed"}).status_code == 200
    assert _call(client, tenant, call_id)["status"] == "ringing"
    _status(client, sid, "completed", 7)
    assert _call(client, tenant, call_id)["billable_minutes"] == 1


def test_an_unsigned_status_callback_is_403_and_changes_nothing(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    sid, call_id = _ring(client, tenant)
    params = {"CallSid": sid, "CallStatus": "completed", "CallDuration": "600"}
    response = twilio_post(client, STATUS, params, auth_token="forged-token")
    assert response.status_code == 403
    assert response.json()["code"] == "invalid_signature"
    assert _call(client, tenant, call_id)["status"] == "ringing"
    assert count_tenant_rows(owner_engine, "usage_records", tenant.id) == 0


def test_racing_duplicate_completions_meter_and_announce_once(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    """Twilio retries overlap: 8 simultaneous `completed` callbacks end the call exactly once."""
    from app.services.telephony import TelephonyService
    from tests.conftest import DB_URLS

    sid, call_id = _ring(client, tenant)
    engine = create_engine(DB_URLS.app, poolclass=NullPool)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def complete(duration: int) -> None:
        try:
            with Session(engine) as session, session.begin():
                barrier.wait(timeout=10)
                TelephonyService(session, twilio_urls()).apply_status_callback(
                    {"CallSid": sid, "CallStatus": "completed", "CallDuration": str(duration)}
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=(60 + i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    engine.dispose()
    assert errors == []
    call = _call(client, tenant, call_id)
    assert call["status"] == "completed" and 60 <= call["duration_seconds"] <= 67
    assert call["billable_minutes"] == (1 if call["duration_seconds"] == 60 else 2)
    assert [m for _, m in _usage(owner_engine, tenant.id)] == [call["billable_minutes"]]
    assert len(_ended_events(owner_engine, tenant.id)) == 1


def _signed(url: str, fields: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature over form fields that may repeat (the twilio library signs every value)."""
    from twilio.request_validator import RequestValidator

    class Multi(dict[str, list[str]]):
        def getall(self, name: str) -> list[str]:
            return self[name]

    params = Multi()
    for key, value in fields:
        params.setdefault(key, []).append(value)
    return str(RequestValidator(os.environ["TWILIO_AUTH_TOKEN"]).compute_signature(url, params))


def test_a_repeated_field_is_signed_with_every_value(
    client: TestClient, tenant: TenantFixture
) -> None:
    sid, call_id = _ring(client, tenant)
    fields = [
        ("CallSid", sid),
        ("CallStatus", "in-progress"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
    ]
    url = os.environ["PUBLIC_BASE_URL"] + STATUS
    # Signed over one of the two values only: not what Twilio sent.
    form = {
        "CallSid": sid,
        "CallStatus": "in-progress",
        "StatusCallbackEvent": ["ringing", "answered"],
    }
    forged = _signed(url, fields[:3])
    response = client.post(STATUS, data=form, headers={"X-Twilio-Signature": forged})
    assert response.status_code == 403
    assert _call(client, tenant, call_id)["status"] == "ringing"
    response = client.post(STATUS, data=form, headers={"X-Twilio-Signature": _signed(url, fields)})
    assert response.status_code == 200
    assert _call(client, tenant, call_id)["status"] == "in_progress"


def test_a_signature_over_the_url_with_its_default_port_is_accepted(
    client: TestClient, tenant: TenantFixture
) -> None:
    """Twilio may sign https://host:443/…; the configured base URL has no port."""
    sid, call_id = _ring(client, tenant)
    base = os.environ["PUBLIC_BASE_URL"]
    assert base.startswith("https://") and base.count(":") == 1
    with_port = base.replace(".test", ".test:443", 1) + STATUS
    params = {"CallSid": sid, "CallStatus": "in-progress"}
    response = twilio_post(client, STATUS, params, signed_url=with_port)
    assert response.status_code == 200
    assert _call(client, tenant, call_id)["status"] == "in_progress"


# --------------------------------------------------------------------------- end_reason, durations


@pytest.mark.parametrize(
    ("twilio_status", "status", "end_reason"),
    [
        ("completed", "completed", "caller_hangup"),
        ("busy", "busy", "busy"),
        ("no-answer", "no_answer", "no_answer"),
        ("failed", "failed", "failed"),
        ("canceled", "canceled", "canceled"),
    ],
)
def test_every_ended_call_has_its_end_reason(
    client: TestClient, tenant: TenantFixture, twilio_status: str, status: str, end_reason: str
) -> None:
    sid, call_id = _ring(client, tenant)
    _status(client, sid, twilio_status)
    call = _call(client, tenant, call_id)
    assert (call["status"], call["end_reason"]) == (status, end_reason)
    # A repeated or different late callback changes nothing.
    _status(client, sid, "busy")
    assert _call(client, tenant, call_id)["end_reason"] == end_reason


@pytest.mark.parametrize("duration", ["2000000000", "999999", "86400", "7200"])
def test_a_duration_longer_than_the_call_is_capped(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, duration: str
) -> None:
    sid, call_id = _ring(client, tenant)
    _status(client, sid, "in-progress")
    response = twilio_post(
        client, STATUS, {"CallSid": sid, "CallStatus": "completed", "CallDuration": duration}
    )
    assert response.status_code == 200
    call = _call(client, tenant, call_id)
    # Answered a moment ago: at most the wall time since then plus a minute.
    assert call["status"] == "completed"
    assert 0 <= call["duration_seconds"] <= 61
    assert call["billable_minutes"] in (0, 1, 2)
    assert sum(minutes for _, minutes in _usage(owner_engine, tenant.id)) <= 2


@pytest.mark.parametrize("duration", ["-5", "1e9", "12.5", "\u0661\u0662", "", "NaN", "9" * 400])
def test_any_call_duration_ends_the_call_without_a_500(
    client: TestClient, tenant: TenantFixture, duration: str
) -> None:
    sid, call_id = _ring(client, tenant)
    response = twilio_post(
        client, STATUS, {"CallSid": sid, "CallStatus": "completed", "CallDuration": duration}
    )
    assert response.status_code == 200
    call = _call(client, tenant, call_id)
    assert call["status"] == "completed" and call["end_reason"] == "caller_hangup"
    assert call["duration_seconds"] is not None and call["duration_seconds"] <= 61
