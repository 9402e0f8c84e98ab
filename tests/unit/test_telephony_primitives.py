"""Unit tests for app.telephony: webhook signatures, TwiML builders, REST wrapper."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET

import pytest
from twilio.request_validator import RequestValidator

from app.telephony import twiml
from app.telephony.rest import TwilioAPIError, TwilioRest
from app.telephony.signature import is_valid_twilio_signature, public_url, websocket_url
from tests.fakes.fake_twilio import FakeTwilio, new_sid

TOKEN = "test-auth-token-0123456789abcdef"
URL = "https://vca.example.com/prefix/twilio/voice/inbound?tenant=acme&x=1"
FORM = {
    "CallSid": "CA" + "1" * 32,
    "From": "+15551230001",
    "To": "+15551230002",
    "CallStatus": "ringing",
}


def sign(url: str, params: object, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


# -- public URLs -------------------------------------------------------------------------


def test_public_url_keeps_prefix_and_raw_query() -> None:
    assert (
        public_url("https://proxy.example.com/vca/", "/twilio/voice", "b=2&a=%2B1")
        == "https://proxy.example.com/vca/twilio/voice?b=2&a=%2B1"
    )


def test_public_url_without_query_has_no_question_mark() -> None:
    assert public_url("https://vca.example.com", "/twilio/status", "") == (
        "https://vca.example.com/twilio/status"
    )


def test_websocket_url_scheme_mapping() -> None:
    assert websocket_url("https://vca.example.com/p/", "/ws/relay") == (
        "wss://vca.example.com/p/ws/relay"
    )
    assert websocket_url("http://127.0.0.1:8000", "/ws/relay") == "ws://127.0.0.1:8000/ws/relay"
    with pytest.raises(ValueError):
        websocket_url("ftp://example.com", "/ws")


# -- signatures --------------------------------------------------------------------------


def test_valid_signature_is_accepted() -> None:
    assert is_valid_twilio_signature(TOKEN, URL, FORM, sign(URL, FORM))


def test_signature_over_url_built_by_public_url() -> None:
    url = public_url("https://proxy.example.com/vca/", "/twilio/voice", "tenant=acme")
    assert is_valid_twilio_signature(TOKEN, url, FORM, sign(URL.split("?")[0], FORM)) is False
    assert is_valid_twilio_signature(TOKEN, url, FORM, sign(url, FORM))


def test_websocket_handshake_signature_without_params() -> None:
    ws = "wss://vca.example.com/ws/relay?callSid=CA123"
    assert is_valid_twilio_signature(TOKEN, ws, {}, sign(ws, {}))
    assert is_valid_twilio_signature(TOKEN, ws, None, sign(ws, {}))


def test_wrong_token_is_rejected() -> None:
    assert not is_valid_twilio_signature(TOKEN, URL, FORM, sign(URL, FORM, token="other"))


@pytest.mark.parametrize(
    "url",
    [
        URL.replace("https://", "http://"),
        URL.replace("/inbound", "/outbound"),
        URL.replace("tenant=acme", "tenant=evil"),
        URL.split("?")[0],
        "https://attacker.example.com/prefix/twilio/voice/inbound?tenant=acme&x=1",
    ],
)
def test_wrong_url_is_rejected(url: str) -> None:
    assert not is_valid_twilio_signature(TOKEN, url, FORM, sign(URL, FORM))


def test_changed_added_or_removed_param_is_rejected() -> None:
    signature = sign(URL, FORM)
    assert not is_valid_twilio_signature(TOKEN, URL, {**FORM, "To": "+15559999999"}, signature)
    assert not is_valid_twilio_signature(TOKEN, URL, {**FORM, "Extra": "1"}, signature)
    assert not is_valid_twilio_signature(
        TOKEN, URL, {k: v for k, v in FORM.items() if k != "From"}, signature
    )


@pytest.mark.parametrize("signature", [None, "", "not-base64!", "A" * 28])
def test_missing_empty_or_garbage_signature_is_rejected(signature: str | None) -> None:
    assert is_valid_twilio_signature(TOKEN, URL, FORM, signature) is False


def test_empty_token_never_validates() -> None:
    assert not is_valid_twilio_signature("", URL, FORM, sign(URL, FORM, token=""))


def test_repeated_params_as_lists_are_all_signed() -> None:
    params = {"StatusCallbackEvent": ["ringing", "answered"], "CallSid": ["CA1"]}

    class MultiDict(dict[str, list[str]]):  # the Flask-style hook the library understands
        def getall(self, key: str) -> list[str]:
            return self[key]

    signature = sign(URL, MultiDict(params))
    assert is_valid_twilio_signature(TOKEN, URL, params, signature)
    assert not is_valid_twilio_signature(
        TOKEN, URL, {**params, "StatusCallbackEvent": ["ringing"]}, signature
    )


def test_signature_with_default_port_in_url() -> None:
    # Twilio may sign with or without the default port; the library accepts both.
    url_with_port = URL.replace("vca.example.com", "vca.example.com:443")
    assert is_valid_twilio_signature(TOKEN, URL, FORM, sign(url_with_port, FORM))


# -- TwiML -------------------------------------------------------------------------------


def parse(doc: str) -> ET.Element:
    root = ET.fromstring(doc)  # noqa: S314 - our own output, not untrusted input
    assert root.tag == "Response"
    return root


def test_reject() -> None:
    root = parse(twiml.reject())
    assert [child.tag for child in root] == ["Reject"]
    assert root[0].attrib == {"reason": "busy"}
    assert parse(twiml.reject("rejected"))[0].get("reason") == "rejected"
    with pytest.raises(ValueError):
        twiml.reject("nope")


def test_say_and_hangup_escapes_text() -> None:
    message = 'Sorry <b>"we"</b> & co are closed'
    root = parse(twiml.say_and_hangup(message))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == message


def test_conversation_relay_structure() -> None:
    doc = twiml.conversation_relay(
        ws_url="wss://vca.example.com/ws/relay",
        welcome_greeting="Hello!",
        language="en-US",
        voice="en-US-Journey-O",
        parameters={"tenant_id": "42", "agent_id": "7"},
        action_url="https://vca.example.com/twilio/voice/relay-done",
    )
    root = parse(doc)
    assert [child.tag for child in root] == ["Connect"]
    connect = root[0]
    assert connect.attrib == {"action": "https://vca.example.com/twilio/voice/relay-done"}
    (relay,) = list(connect)
    assert relay.tag == "ConversationRelay"
    assert relay.attrib == {
        "url": "wss://vca.example.com/ws/relay",
        "welcomeGreeting": "Hello!",
        "language": "en-US",
        "voice": "en-US-Journey-O",
    }
    assert [(p.tag, p.attrib) for p in relay] == [
        ("Parameter", {"name": "tenant_id", "value": "42"}),
        ("Parameter", {"name": "agent_id", "value": "7"}),
    ]


def test_conversation_relay_omits_none_attributes() -> None:
    root = parse(
        twiml.conversation_relay(
            ws_url="ws://127.0.0.1:8000/ws/relay",
            welcome_greeting=None,
            language="fr-FR",
            voice=None,
            parameters={},
            action_url=None,
        )
    )
    connect = root[0]
    assert connect.attrib == {}
    relay = connect[0]
    assert relay.attrib == {"url": "ws://127.0.0.1:8000/ws/relay", "language": "fr-FR"}
    assert list(relay) == []


def test_conversation_relay_escapes_hostile_greeting_and_params() -> None:
    greeting = 'Hi "there" <Hangup/> & welcome\x00\x07 to ACME\'s line'
    root = parse(
        twiml.conversation_relay(
            ws_url="wss://vca.example.com/ws/relay?a=1&b=2",
            welcome_greeting=greeting,
            language="en-US",
            voice=None,
            parameters={"note": '"/><Dial>+15550000000</Dial>'},
            action_url="https://vca.example.com/done?x=1&y=2",
        )
    )
    connect = root[0]
    relay = connect[0]
    # Only the characters XML cannot carry at all are dropped; the rest round-trips.
    assert relay.get("welcomeGreeting") == 'Hi "there" <Hangup/> & welcome to ACME\'s line'
    assert relay.get("url") == "wss://vca.example.com/ws/relay?a=1&b=2"
    assert connect.get("action") == "https://vca.example.com/done?x=1&y=2"
    assert relay[0].attrib == {"name": "note", "value": '"/><Dial>+15550000000</Dial>'}
    assert root.find(".//Dial") is None
    assert root.find(".//Hangup") is None


def test_conversation_relay_requires_websocket_url() -> None:
    with pytest.raises(ValueError):
        twiml.conversation_relay(
            ws_url="https://vca.example.com/ws",
            welcome_greeting=None,
            language="en-US",
            voice=None,
            parameters={},
            action_url=None,
        )


def test_dial_and_hangup() -> None:
    root = parse(twiml.dial("+15551112222", caller_id="+15553334444"))
    assert [child.tag for child in root] == ["Dial"]
    assert root[0].attrib == {"callerId": "+15553334444"}
    assert root[0].text == "+15551112222"
    assert parse(twiml.dial("+15551112222"))[0].attrib == {}
    root = parse(twiml.hangup())
    assert [child.tag for child in root] == ["Hangup"]


# -- REST against FakeTwilio -------------------------------------------------------------

ACCOUNT_SID = "AC" + "a" * 32
EVENTS = ["initiated", "ringing", "answered", "completed"]


@pytest.fixture
def fake_twilio():
    with FakeTwilio(ACCOUNT_SID, TOKEN) as tw:
        yield tw


def make_rest(tw: FakeTwilio, *, token: str = TOKEN) -> TwilioRest:
    return TwilioRest(
        account_sid=ACCOUNT_SID, auth_token=token, api_base_url=tw.base_url, timeout_seconds=5
    )


def create(rest: TwilioRest, to: str = "+15557654321") -> str:
    return rest.create_call(
        to=to,
        from_="+15551234567",
        url="https://vca.example.com/twilio/voice/outbound?campaign=1",
        status_callback="https://vca.example.com/twilio/status",
        status_callback_events=EVENTS,
    )


def test_create_call_sends_expected_form_and_returns_sid(fake_twilio: FakeTwilio) -> None:
    rest = make_rest(fake_twilio)
    sid = create(rest)

    assert sid.startswith("CA") and len(sid) == 34
    assert fake_twilio.calls[sid]["status"] == "queued"
    (request,) = fake_twilio.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert request.basic_auth == (ACCOUNT_SID, TOKEN)
    assert (request.header("content-type") or "").startswith("application/x-www-form-urlencoded")
    assert request.form == {
        "To": ["+15557654321"],
        "From": ["+15551234567"],
        "Url": ["https://vca.example.com/twilio/voice/outbound?campaign=1"],
        "Method": ["POST"],
        "StatusCallback": ["https://vca.example.com/twilio/status"],
        "StatusCallbackMethod": ["POST"],
        "StatusCallbackEvent": EVENTS,
    }


def test_hangup_call_sets_status_completed(fake_twilio: FakeTwilio) -> None:
    rest = make_rest(fake_twilio)
    sid = create(rest)
    rest.hangup_call(sid)

    update = fake_twilio.requests[-1]
    assert update.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"
    assert update.form == {"Status": ["completed"]}
    assert fake_twilio.calls[sid]["status"] == "completed"

    with pytest.raises(TwilioAPIError) as excinfo:
        rest.hangup_call(new_sid("CA"))
    assert excinfo.value.status == 404
    assert excinfo.value.code == 20404


def test_scripted_400_maps_to_twilio_message(fake_twilio: FakeTwilio) -> None:
    message = "The 'To' number +1555 is not a valid phone number."
    fake_twilio.fail_next(status=400, code=21211, message=message)

    with pytest.raises(TwilioAPIError) as excinfo:
        create(make_rest(fake_twilio))
    assert excinfo.value.status == 400
    assert excinfo.value.code == 21211
    assert excinfo.value.message == message


def test_scripted_500_without_code(fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next(status=500)
    with pytest.raises(TwilioAPIError) as excinfo:
        create(make_rest(fake_twilio))
    assert excinfo.value.status == 500
    assert excinfo.value.code is None
    assert excinfo.value.message == "An internal server error has occurred"


def test_fake_validates_numbers(fake_twilio: FakeTwilio) -> None:
    with pytest.raises(TwilioAPIError) as excinfo:
        create(make_rest(fake_twilio), to="555-1234")
    assert (excinfo.value.status, excinfo.value.code) == (400, 21211)
    assert excinfo.value.message == "Invalid 'To' Phone Number: 555-1234"
    assert fake_twilio.calls == {}


def test_wrong_credentials_give_401(fake_twilio: FakeTwilio) -> None:
    with pytest.raises(TwilioAPIError) as excinfo:
        create(make_rest(fake_twilio, token="wrong-token"))
    assert excinfo.value.status == 401
    assert excinfo.value.code == 20003
    assert excinfo.value.message == "Authenticate"


def test_unreachable_api_gives_status_none() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rest = TwilioRest(
        account_sid=ACCOUNT_SID,
        auth_token=TOKEN,
        api_base_url=f"http://127.0.0.1:{port}",
        timeout_seconds=2,
    )
    with pytest.raises(TwilioAPIError) as excinfo:
        create(rest)
    assert excinfo.value.status is None
    assert excinfo.value.code is None
    assert excinfo.value.message


def test_api_base_url_with_path_prefix_and_default() -> None:
    rest = TwilioRest(account_sid=ACCOUNT_SID, auth_token=TOKEN)
    assert rest.api_base_url == "https://api.twilio.com"
    rest = TwilioRest(
        account_sid=ACCOUNT_SID, auth_token=TOKEN, api_base_url="http://127.0.0.1:9/twilio/"
    )
    assert rest.api_base_url == "http://127.0.0.1:9/twilio"
    with pytest.raises(ValueError):
        TwilioRest(account_sid="", auth_token=TOKEN)


@pytest.mark.parametrize(
    ("greeting", "voice"),
    [
        ('Hi "there" <Hangup/> & welcome\x00 to ACME\'s line', "Polly.Joanna"),
        (None, None),
        ("", ""),
    ],
)
def test_a_calls_relay_twiml_is_the_profiles_document_with_its_id(
    greeting: str | None, voice: str | None
) -> None:
    """Built once per profile and reused: the same document as building it for each call."""
    import uuid

    from app.config.settings import settings
    from app.services.telephony import AnsweringProfile, relay_twiml
    from app.telephony.urls import relay_token
    from tests.helpers import twilio_urls

    profile = AnsweringProfile(uuid.uuid4(), greeting, "en-GB", voice)
    base = settings.PUBLIC_BASE_URL or ""
    urls = twilio_urls()
    # The URLs come from the app's routes: the paths Twilio is given are the ones we serve.
    assert urls.relay == websocket_url(base, "/telephony/twilio/relay")
    assert urls.relay_action == public_url(base, "/telephony/twilio/relay-action", "")
    for call_id in (uuid.uuid4(), uuid.uuid4()):
        assert relay_twiml(call_id, profile, urls) == twiml.conversation_relay(
            ws_url=f"{urls.relay}?token={relay_token(call_id)}",
            welcome_greeting=greeting or None,
            language="en-GB",
            voice=voice or None,
            parameters={"call_id": str(call_id)},
            action_url=urls.relay_action,
        )
