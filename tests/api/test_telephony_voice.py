"""POST /telephony/twilio/voice: signature, routing by `To`, the reject reasons, retries."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.config.settings import settings
from app.telephony.urls import relay_token
from tests.helpers import (
    TenantFixture,
    count_tenant_rows,
    create_number_and_profile,
    insert_call,
    insert_phone_number,
    make_tenant,
    parse_twiml,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

VOICE = "/telephony/twilio/voice"
BASE = os.environ["PUBLIC_BASE_URL"]


def _inbound(to: str, call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid or twilio_call_sid(),
        "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
        "From": random_e164(),
        "To": to,
        "Direction": "inbound",
        "CallStatus": "ringing",
        **extra,
    }


def _calls(engine: Engine, tenant_id: uuid.UUID, where: str = "") -> int:
    return count_tenant_rows(engine, "calls", tenant_id, where)


def _call_row(engine: Engine, call_sid: str) -> dict | None:  # type: ignore[type-arg]
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        row = conn.execute(
            text("SELECT * FROM calls WHERE provider_call_sid = :sid"), {"sid": call_sid}
        ).mappings()
        found = row.one_or_none()
        return dict(found) if found is not None else None


def _assert_reject(response, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = parse_twiml(response.text)
    assert root.tag == "Response"
    children = list(root)
    assert [c.tag for c in children] == ["Reject"]
    assert children[0].get("reason") == reason


def test_routed_call_gets_conversation_relay_and_appears_only_in_its_tenant(
    client: TestClient,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    owner_engine: Engine,
) -> None:
    setup = create_number_and_profile(
        tenant.id, greeting="Hi, Acme Dental here & ready <3", language="fr-FR", voice="Polly.Lea"
    )
    params = _inbound(setup.number)
    response = twilio_post(client, VOICE, params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")

    root = parse_twiml(response.text)
    connect = root.find("Connect")
    assert connect is not None
    assert connect.get("action") == f"{BASE}/telephony/twilio/relay-action"
    relay = connect.find("ConversationRelay")
    assert relay is not None
    assert relay.get("welcomeGreeting") == "Hi, Acme Dental here & ready <3"
    assert relay.get("language") == "fr-FR"
    assert relay.get("voice") == "Polly.Lea"
    parameters = {p.get("name"): p.get("value") for p in relay.findall("Parameter")}

    row = _call_row(owner_engine, params["CallSid"])
    assert row is not None
    assert parameters == {"call_id": str(row["id"])}
    # The relay URL carries this call's token (the handshake is signed over it).
    relay_url = "wss://" + BASE.split("://", 1)[1] + "/telephony/twilio/relay"
    assert relay.get("url") == f"{relay_url}?token={relay_token(row['id'])}"
    assert row["tenant_id"] == tenant.id
    assert row["status"] == "ringing"
    assert row["direction"] == "inbound"
    assert row["phone_number_id"] == setup.number_id
    assert row["ai_profile_id"] == setup.profile_id
    assert (row["from_number"], row["to_number"]) == (params["From"], setup.number)
    assert row["started_at"] is not None and row["end_reason"] is None

    listed = client.get(tenant.url("/calls"), headers=tenant.read_headers).json()["items"]
    assert [c["id"] for c in listed] == [str(row["id"])]
    assert listed[0]["provider_call_sid"] == params["CallSid"]
    others = client.get(other_tenant.url("/calls"), headers=other_tenant.headers).json()["items"]
    assert others == []


def test_default_profile_answers_a_number_without_one(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(
        tenant.id, attach_profile=False, default_profile=True, greeting="Default speaking"
    )
    params = _inbound(setup.number)
    response = twilio_post(client, VOICE, params)
    relay = parse_twiml(response.text).find("Connect/ConversationRelay")
    assert relay is not None and relay.get("welcomeGreeting") == "Default speaking"
    row = _call_row(owner_engine, params["CallSid"])
    assert row is not None and row["ai_profile_id"] == setup.profile_id


def test_the_numbers_profile_wins_over_the_default(
    client: TestClient, tenant: TenantFixture
) -> None:
    create_number_and_profile(tenant.id, default_profile=True, greeting="Default")
    own = create_number_and_profile(tenant.id, greeting="Own profile", voice=None)
    response = twilio_post(client, VOICE, _inbound(own.number))
    relay = parse_twiml(response.text).find("Connect/ConversationRelay")
    assert relay is not None and relay.get("welcomeGreeting") == "Own profile"
    # A profile without a voice leaves the attribute out (Twilio's default voice).
    assert relay.get("voice") is None


def test_unknown_number_is_rejected_and_nothing_is_stored(
    client: TestClient, owner_engine: Engine
) -> None:
    params = _inbound(random_e164())
    _assert_reject(twilio_post(client, VOICE, params), "rejected")
    assert _call_row(owner_engine, params["CallSid"]) is None


def test_inactive_number_is_rejected_and_nothing_is_stored(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id, number_status="inactive")
    _assert_reject(twilio_post(client, VOICE, _inbound(setup.number)), "rejected")
    assert _calls(owner_engine, tenant.id) == 0


def _assert_rejected_call(client: TestClient, engine: Engine, number: str, reason: str) -> dict:  # type: ignore[type-arg]
    params = _inbound(number)
    _assert_reject(twilio_post(client, VOICE, params), "busy")
    row = _call_row(engine, params["CallSid"])
    assert row is not None
    assert (row["status"], row["end_reason"]) == ("rejected", reason)
    assert row["ended_at"] is not None and row["billable_minutes"] == 0
    return row


def test_suspended_tenant_calls_are_rejected(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="pro")
    setup = create_number_and_profile(tenant.id)
    suspended = client.patch(tenant.url(), json={"status": "suspended"}, headers=admin_headers)
    assert suspended.status_code == 200, suspended.text
    _assert_rejected_call(client, owner_engine, setup.number, "tenant_suspended")


def test_concurrency_limit_rejects_the_call_over_the_limit(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")  # one concurrent call
    setup = create_number_and_profile(tenant.id)
    first = twilio_post(client, VOICE, _inbound(setup.number))
    assert parse_twiml(first.text).find("Connect/ConversationRelay") is not None
    _assert_rejected_call(client, owner_engine, setup.number, "concurrency_limit")
    assert _calls(owner_engine, tenant.id, "status = 'ringing'") == 1


def test_ended_calls_free_their_line(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")
    setup = create_number_and_profile(tenant.id)
    for status in ("completed", "rejected", "no_answer"):
        insert_call(tenant.id, status=status)
    response = twilio_post(client, VOICE, _inbound(setup.number))
    assert parse_twiml(response.text).find("Connect/ConversationRelay") is not None


def test_outbound_queued_call_counts_against_the_limit(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")
    setup = create_number_and_profile(tenant.id)
    insert_call(tenant.id, status="queued", direction="outbound")
    _assert_rejected_call(client, owner_engine, setup.number, "concurrency_limit")


def _use_minutes(tenant_id: uuid.UUID, minutes: int, period: str) -> None:
    from app.config.database import transaction
    from app.models import UsageRecord

    call_id = insert_call(tenant_id, status="completed", billable_minutes=minutes)
    with transaction(tenant_id) as session:
        session.add(
            UsageRecord(tenant_id=tenant_id, call_id=call_id, period=period, minutes=minutes)
        )


def test_free_plan_rejects_calls_once_the_months_minutes_are_used(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")  # 60 included minutes
    setup = create_number_and_profile(tenant.id)
    this_month = datetime.now(UTC).strftime("%Y-%m")
    _use_minutes(tenant.id, 500, "2000-01")  # another month does not count
    _use_minutes(tenant.id, 59, this_month)
    admitted = _inbound(setup.number)
    response = twilio_post(client, VOICE, admitted)
    assert parse_twiml(response.text).find("Connect/ConversationRelay") is not None
    # End it, so the next call is judged on minutes rather than on the one-call limit.
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text("UPDATE calls SET status = 'completed' WHERE provider_call_sid = :sid"),
            {"sid": admitted["CallSid"]},
        )
    _use_minutes(tenant.id, 1, this_month)
    _assert_rejected_call(client, owner_engine, setup.number, "minutes_exhausted")


def test_paid_plan_keeps_answering_past_its_included_minutes(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    tenant = make_tenant(client, admin_headers, plan="starter")  # 1,000 included, overage billed
    setup = create_number_and_profile(tenant.id)
    _use_minutes(tenant.id, 1500, datetime.now(UTC).strftime("%Y-%m"))
    response = twilio_post(client, VOICE, _inbound(setup.number))
    assert parse_twiml(response.text).find("Connect/ConversationRelay") is not None


def test_no_ai_profile_rejects_the_call(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    _, number = insert_phone_number(tenant.id)
    _assert_rejected_call(client, owner_engine, number, "no_ai_profile")


def test_a_retried_webhook_returns_the_same_twiml_and_creates_nothing(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")  # a second row would hit the limit
    setup = create_number_and_profile(tenant.id)
    params = _inbound(setup.number)
    first = twilio_post(client, VOICE, params)
    again = twilio_post(client, VOICE, params)
    assert parse_twiml(first.text).find("Connect/ConversationRelay") is not None
    assert again.text == first.text
    assert _calls(owner_engine, tenant.id) == 1

    # A rejected call's retry is rejected the same way, still one row for it.
    rejected = _inbound(setup.number)
    first_reject = twilio_post(client, VOICE, rejected)
    _assert_reject(first_reject, "busy")
    assert twilio_post(client, VOICE, rejected).text == first_reject.text
    assert _calls(owner_engine, tenant.id) == 2


def test_retry_after_the_call_ended_hangs_up(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    params = _inbound(setup.number)
    twilio_post(client, VOICE, params)
    status = twilio_post(
        client,
        "/telephony/twilio/status",
        {"CallSid": params["CallSid"], "CallStatus": "completed", "CallDuration": "5"},
    )
    assert status.status_code == 200
    late = twilio_post(client, VOICE, params)
    assert [c.tag for c in parse_twiml(late.text)] == ["Hangup"]
    assert _calls(owner_engine, tenant.id) == 1


# -- signature ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forgery",
    [
        {"signed_url": "https://attacker.example/telephony/twilio/voice"},
        {"signed_url": BASE + "/telephony/twilio/status"},
        {"signed_params": {"To": "+15005550006"}},
        {"auth_token": "not-the-auth-token"},
        {"omit_signature": True},
        {"signature": ""},
        {"signature": "garbage"},
    ],
    ids=["other-host", "other-path", "other-params", "other-token", "missing", "empty", "garbage"],
)
def test_a_request_twilio_did_not_sign_is_403_and_writes_nothing(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, forgery: dict
) -> None:  # type: ignore[type-arg]
    setup = create_number_and_profile(tenant.id)
    params = _inbound(setup.number)
    response = twilio_post(client, VOICE, params, **forgery)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "invalid_signature"
    assert _calls(owner_engine, tenant.id) == 0


def test_the_query_string_is_part_of_what_is_signed(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    path = VOICE + "?source=main&x=%2B1"
    unsigned_query = twilio_post(client, path, _inbound(setup.number), signed_url=BASE + VOICE)
    assert unsigned_query.status_code == 403
    assert _calls(owner_engine, tenant.id) == 0
    signed = twilio_post(client, path, _inbound(setup.number))
    assert signed.status_code == 200, signed.text
    assert _calls(owner_engine, tenant.id) == 1


def test_without_twilio_credentials_it_is_503(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    setup = create_number_and_profile(tenant.id)
    monkeypatch.setattr(settings, "TWILIO_AUTH_TOKEN", None)
    response = twilio_post(client, VOICE, _inbound(setup.number))
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "telephony_not_configured"
    assert response.headers["retry-after"]
    assert _calls(owner_engine, tenant.id) == 0


@pytest.mark.parametrize(
    "field",
    [{"From": "+1415\x00555"}, {"CallSid": "CA\x00" + "a" * 31}],
    ids=["nul-in-from", "nul-in-sid"],
)
def test_a_signed_form_with_a_nul_is_422_and_stores_nothing(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine, field: dict[str, str]
) -> None:
    """PostgreSQL cannot store a NUL; no form of Twilio's has one."""
    setup = create_number_and_profile(tenant.id)
    params = {**_inbound(setup.number), **field}
    for path in (VOICE, "/telephony/twilio/status"):
        response = twilio_post(client, path, {**params, "CallStatus": "completed"})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_input"
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 0


def test_a_call_sid_longer_than_any_of_twilios_is_rejected_and_nothing_is_stored(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    params = _inbound(setup.number, call_sid="CA" + "a" * 100)
    _assert_reject(twilio_post(client, VOICE, params), "rejected")
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 0


def test_raw_bytes_in_the_query_string_are_403_not_500() -> None:
    """An HTTP client may send any byte after `?`; the URL is read as Starlette reads it."""
    import asyncio

    from main import app

    messages: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"CallSid=CA1&To=%2B1", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": VOICE,
        "raw_path": VOICE.encode(),
        "root_path": "",
        "query_string": b"x=\xff",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"x-twilio-signature", b"forged"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 443),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert messages[0]["status"] == 403
