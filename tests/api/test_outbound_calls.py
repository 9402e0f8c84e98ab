"""POST /calls: outbound calls placed through Twilio's REST API (a local fake Twilio)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.config.settings import settings
from tests.fakes.fake_twilio import FakeTwilio
from tests.helpers import (
    TenantFixture,
    count_tenant_rows,
    create_number_and_profile,
    insert_ai_profile,
    insert_call,
    insert_phone_number,
    make_tenant,
    parse_twiml,
    random_e164,
    twilio_post,
)

BASE = os.environ["PUBLIC_BASE_URL"]


@pytest.fixture
def fake_twilio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTwilio]:
    with FakeTwilio(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"]) as fake:
        monkeypatch.setattr(settings, "TWILIO_API_BASE_URL", fake.base_url)
        yield fake


def _place(
    client: TestClient, tenant: TenantFixture, headers: dict[str, str] | None = None, **body: Any
) -> Any:
    return client.post(tenant.url("/calls"), json=body, headers=headers or tenant.headers)


def test_outbound_call_is_placed_through_twilio_and_then_answered_by_the_agent(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id, greeting="Calling about your appointment")
    callee = random_e164()
    response = _place(client, tenant, to=callee, phone_number_id=str(setup.number_id))
    assert response.status_code == 201, response.text
    call = response.json()
    assert call["status"] == "queued" and call["direction"] == "outbound"
    assert (call["from_number"], call["to_number"]) == (setup.number, callee)
    assert call["ai_profile_id"] == str(setup.profile_id)
    assert call["phone_number_id"] == str(setup.number_id)

    [sent] = fake_twilio.requests
    assert sent.method == "POST"
    assert sent.path == f"/2010-04-01/Accounts/{os.environ['TWILIO_ACCOUNT_SID']}/Calls.json"
    assert sent.basic_auth == (os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"])
    assert sent.value("To") == callee
    assert sent.value("From") == setup.number
    assert sent.value("Url") == f"{BASE}/telephony/twilio/voice"
    assert sent.value("Method") == "POST"
    assert sent.value("StatusCallback") == f"{BASE}/telephony/twilio/status"
    assert sent.value("StatusCallbackMethod") == "POST"
    assert sent.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    [sid] = fake_twilio.calls
    assert call["provider_call_sid"] == sid

    # The callee answers: Twilio fetches the voice URL for our CallSid -> the agent, no new row.
    answer = twilio_post(
        client,
        "/telephony/twilio/voice",
        {"CallSid": sid, "From": setup.number, "To": callee, "Direction": "outbound-api"},
    )
    relay = parse_twiml(answer.text).find("Connect/ConversationRelay")
    assert relay is not None
    assert relay.get("welcomeGreeting") == "Calling about your appointment"
    assert {p.get("name"): p.get("value") for p in relay.findall("Parameter")} == {
        "call_id": call["id"]
    }
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 1

    for status in ("initiated", "ringing", "in-progress"):
        params = {"CallSid": sid, "CallStatus": status}
        assert twilio_post(client, "/telephony/twilio/status", params).status_code == 200
    with owner_engine.begin() as conn:  # answered long enough ago for 125 s
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text(
                "UPDATE calls SET answered_at = answered_at - interval '5 minutes' WHERE id = :id"
            ),
            {"id": call["id"]},
        )
    done = {"CallSid": sid, "CallStatus": "completed", "CallDuration": "125"}
    assert twilio_post(client, "/telephony/twilio/status", done).status_code == 200
    ended = client.get(tenant.url(f"/calls/{call['id']}"), headers=tenant.headers).json()
    assert (ended["status"], ended["billable_minutes"]) == ("completed", 3)


def test_the_given_profile_is_used(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    setup = create_number_and_profile(tenant.id)
    chosen = insert_ai_profile(tenant.id, name="Sales")
    response = _place(
        client,
        tenant,
        to=random_e164(),
        phone_number_id=str(setup.number_id),
        ai_profile_id=str(chosen),
    )
    assert response.status_code == 201, response.text
    assert response.json()["ai_profile_id"] == str(chosen)


def test_the_default_profile_is_used_when_the_number_has_none(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    setup = create_number_and_profile(tenant.id, attach_profile=False, default_profile=True)
    response = _place(client, tenant, to=random_e164(), phone_number_id=str(setup.number_id))
    assert response.status_code == 201, response.text
    assert response.json()["ai_profile_id"] == str(setup.profile_id)


def test_a_national_number_with_spaces_is_normalized(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    setup = create_number_and_profile(tenant.id)
    response = _place(client, tenant, to="+1 415 555 2671", phone_number_id=str(setup.number_id))
    assert response.status_code == 201, response.text
    assert fake_twilio.requests[-1].value("To") == "+14155552671"


def _refused(
    client: TestClient,
    tenant: TenantFixture,
    fake_twilio: FakeTwilio,
    engine: Engine,
    status: int,
    code: str,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> Any:
    before = count_tenant_rows(engine, "calls", tenant.id)
    response = _place(client, tenant, headers, **body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert fake_twilio.requests == []
    assert count_tenant_rows(engine, "calls", tenant.id) == before
    return response


@pytest.mark.parametrize("to", ["12345", "+1 555", "not a number", "4155552671", "+999123456789"])
def test_an_invalid_to_is_422(
    client: TestClient,
    tenant: TenantFixture,
    fake_twilio: FakeTwilio,
    owner_engine: Engine,
    to: str,
) -> None:
    setup = create_number_and_profile(tenant.id)
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        422,
        "invalid_phone_number",
        to=to,
        phone_number_id=str(setup.number_id),
    )


def test_the_number_and_profile_must_be_the_tenants(
    client: TestClient,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    fake_twilio: FakeTwilio,
    owner_engine: Engine,
) -> None:
    mine = create_number_and_profile(tenant.id)
    theirs = create_number_and_profile(other_tenant.id)
    to = random_e164()
    for number_id in (theirs.number_id, uuid.uuid4()):
        _refused(
            client,
            tenant,
            fake_twilio,
            owner_engine,
            404,
            "not_found",
            to=to,
            phone_number_id=str(number_id),
        )
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        404,
        "not_found",
        to=to,
        phone_number_id=str(mine.number_id),
        ai_profile_id=str(theirs.profile_id),
    )


def test_an_inactive_number_or_no_profile_is_422(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    inactive = create_number_and_profile(tenant.id, number_status="inactive")
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        422,
        "phone_number_inactive",
        to=random_e164(),
        phone_number_id=str(inactive.number_id),
    )
    bare_id, _ = insert_phone_number(tenant.id)
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        422,
        "no_ai_profile",
        to=random_e164(),
        phone_number_id=str(bare_id),
    )


def test_unknown_body_fields_are_422(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        422,
        "validation_error",
        to=random_e164(),
        phone_number_id=str(setup.number_id),
        record=True,
    )


def test_concurrency_limit_is_429_with_retry_after(
    client: TestClient, admin_headers: dict[str, str], fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="free")  # one concurrent call
    setup = create_number_and_profile(tenant.id)
    insert_call(tenant.id, status="ringing")
    response = _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        429,
        "concurrency_limit",
        to=random_e164(),
        phone_number_id=str(setup.number_id),
    )
    assert int(response.headers["retry-after"]) > 0


def test_free_minutes_exhausted_is_403(
    client: TestClient, admin_headers: dict[str, str], fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    from app.config.database import transaction
    from app.models import UsageRecord

    tenant = make_tenant(client, admin_headers, plan="free")
    setup = create_number_and_profile(tenant.id)
    used = insert_call(tenant.id, status="completed", billable_minutes=60)
    with transaction(tenant.id) as session:
        session.add(
            UsageRecord(
                tenant_id=tenant.id,
                call_id=used,
                period=datetime.now(UTC).strftime("%Y-%m"),
                minutes=60,
            )
        )
    _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        403,
        "minutes_exhausted",
        to=random_e164(),
        phone_number_id=str(setup.number_id),
    )


def test_a_suspended_tenant_cannot_call_out_even_by_the_platform_admin(
    client: TestClient, admin_headers: dict[str, str], fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    tenant = make_tenant(client, admin_headers, plan="pro")
    setup = create_number_and_profile(tenant.id)
    client.patch(tenant.url(), json={"status": "suspended"}, headers=admin_headers)
    for headers in (tenant.headers, admin_headers):
        _refused(
            client,
            tenant,
            fake_twilio,
            owner_engine,
            403,
            "tenant_suspended",
            headers,
            to=random_e164(),
            phone_number_id=str(setup.number_id),
        )


def test_a_twilio_error_is_502_with_its_message_and_leaves_no_call(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio, owner_engine: Engine
) -> None:
    setup = create_number_and_profile(tenant.id)
    message = "The number +15005550001 is unverified. Trial accounts may only make calls to verified numbers."
    fake_twilio.fail_next(400, 21219, message)
    response = _place(client, tenant, to=random_e164(), phone_number_id=str(setup.number_id))
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "provider_error"
    assert message in response.json()["detail"]
    assert len(fake_twilio.requests) == 1
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 0


def test_twilio_unreachable_is_502_and_leaves_no_call(
    client: TestClient,
    tenant: TenantFixture,
    owner_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeTwilio() as fake:
        dead = fake.base_url  # the port is closed once the fake stops
    monkeypatch.setattr(settings, "TWILIO_API_BASE_URL", dead)
    setup = create_number_and_profile(tenant.id)
    response = _place(client, tenant, to=random_e164(), phone_number_id=str(setup.number_id))
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "provider_error"
    assert count_tenant_rows(owner_engine, "calls", tenant.id) == 0


def test_without_twilio_credentials_it_is_503(
    client: TestClient,
    tenant: TenantFixture,
    fake_twilio: FakeTwilio,
    owner_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = create_number_and_profile(tenant.id)
    monkeypatch.setattr(settings, "TWILIO_ACCOUNT_SID", None)
    response = _refused(
        client,
        tenant,
        fake_twilio,
        owner_engine,
        503,
        "telephony_not_configured",
        to=random_e164(),
        phone_number_id=str(setup.number_id),
    )
    assert response.headers["retry-after"]


def test_a_stalled_twilio_does_not_delay_the_tenants_inbound_calls(
    client: TestClient, tenant: TenantFixture, fake_twilio: FakeTwilio
) -> None:
    """The outbound call's reservation is committed before Twilio is asked, so the tenant's row
    lock (which inbound admission takes) is not held while Twilio takes its time."""
    import threading
    import time

    outbound = create_number_and_profile(tenant.id)
    inbound = create_number_and_profile(tenant.id)
    released = fake_twilio.stall_calls()
    placed: list[Any] = []
    caller = threading.Thread(
        target=lambda: placed.append(
            _place(client, tenant, to=random_e164(), phone_number_id=str(outbound.number_id))
        )
    )
    caller.start()
    try:
        deadline = time.monotonic() + 10
        while not fake_twilio.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_twilio.requests, "the outbound call never reached Twilio"
        started = time.monotonic()
        answer = twilio_post(
            client,
            "/telephony/twilio/voice",
            {"CallSid": "CA" + uuid.uuid4().hex, "From": random_e164(), "To": inbound.number},
        )
        waited = time.monotonic() - started
        assert answer.status_code == 200
        assert parse_twiml(answer.text).find(".//ConversationRelay") is not None
        assert caller.is_alive(), "Twilio was to be still answering the outbound call"
        assert waited < 2.0
    finally:
        released.set()
        caller.join(timeout=15)
    assert placed and placed[0].status_code == 201, placed
