"""POST /telephony/twilio/relay-action: Twilio's `<Connect action>` once a relay session ends."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest
from starlette.testclient import TestClient

from app.config.settings import settings
from tests.helpers import (
    TenantFixture,
    create_ringing_call,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

ACTION = "/telephony/twilio/relay-action"


def _action(call_sid: str, handoff: dict[str, str] | str | None, **extra: str) -> dict[str, str]:
    form = {
        "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
        "CallSid": call_sid,
        "CallStatus": "in-progress",
        "SessionId": "VX" + "0" * 32,
        "SessionStatus": "ended",
        "SessionDuration": "42",
        **extra,
    }
    if handoff is not None:
        form["HandoffData"] = handoff if isinstance(handoff, str) else json.dumps(handoff)
    return form


def _verbs(response) -> list[ET.Element]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)  # noqa: S314 - our own TwiML
    assert root.tag == "Response"
    return list(root)


def test_a_transfer_dials_the_profiles_number(client: TestClient, tenant: TenantFixture) -> None:
    number = random_e164()
    call = create_ringing_call(tenant.id, transfer_number=number)
    verbs = _verbs(twilio_post(client, ACTION, _action(call.call_sid, {"reason": "transfer"})))
    assert [v.tag for v in verbs] == ["Dial"]
    assert verbs[0].text == number


def test_the_number_comes_from_the_profile_never_from_the_handoff(
    client: TestClient, tenant: TenantFixture
) -> None:
    number = random_e164()
    call = create_ringing_call(tenant.id, transfer_number=number)
    # The handoff data is written by the model, which a caller can talk into anything.
    handoff = {"reason": "transfer", "transfer_to": "+19005550199"}
    verbs = _verbs(twilio_post(client, ACTION, _action(call.call_sid, handoff)))
    assert [(v.tag, v.text) for v in verbs] == [("Dial", number)]


@pytest.mark.parametrize(
    "handoff",
    [
        {"reason": "end_call"},
        {"reason": "max_duration"},
        None,
        "not json",
        "[1, 2]",
        json.dumps({"reason": 7}),
    ],
    ids=["end_call", "max_duration", "missing", "malformed", "not-an-object", "bad-reason"],
)
def test_anything_but_a_transfer_hangs_up(
    client: TestClient, tenant: TenantFixture, handoff: dict[str, str] | str | None
) -> None:
    call = create_ringing_call(tenant.id, transfer_number=random_e164())
    verbs = _verbs(twilio_post(client, ACTION, _action(call.call_sid, handoff)))
    assert [v.tag for v in verbs] == ["Hangup"]


def test_a_transfer_without_a_transfer_number_hangs_up(
    client: TestClient, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id, transfer_number=None)
    verbs = _verbs(twilio_post(client, ACTION, _action(call.call_sid, {"reason": "transfer"})))
    assert [v.tag for v in verbs] == ["Hangup"]


def test_an_unknown_call_sid_hangs_up(client: TestClient) -> None:
    for call_sid in (twilio_call_sid(), "", "CA" + "x" * 100):
        verbs = _verbs(twilio_post(client, ACTION, _action(call_sid, {"reason": "transfer"})))
        assert [v.tag for v in verbs] == ["Hangup"]


def test_each_call_transfers_to_its_own_tenants_number(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    mine, theirs = random_e164(), random_e164()
    calls = {
        create_ringing_call(tenant.id, transfer_number=mine).call_sid: mine,
        create_ringing_call(other_tenant.id, transfer_number=theirs).call_sid: theirs,
    }
    for call_sid, number in calls.items():
        verbs = _verbs(twilio_post(client, ACTION, _action(call_sid, {"reason": "transfer"})))
        assert [(v.tag, v.text) for v in verbs] == [("Dial", number)]


def test_a_bad_signature_is_refused(client: TestClient, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id, transfer_number=random_e164())
    form = _action(call.call_sid, {"reason": "transfer"})
    for kwargs in (
        {"omit_signature": True},
        {"auth_token": "someone-elses-token"},
        {"signed_params": {**form, "HandoffData": json.dumps({"reason": "end_call"})}},
    ):
        response = twilio_post(client, ACTION, form, **kwargs)
        assert response.status_code == 403
        assert response.json()["code"] == "invalid_signature"


def test_without_telephony_configured_it_is_unavailable(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "TWILIO_AUTH_TOKEN", None)
    response = twilio_post(
        client, ACTION, _action(twilio_call_sid(), None), auth_token="anything-at-all"
    )
    assert response.status_code == 503
    assert response.json()["code"] == "telephony_not_configured"
