"""WS /telephony/twilio/relay: the ConversationRelay protocol, spoken as Twilio speaks it.

The app runs under a real uvicorn on 127.0.0.1 (so concurrent sessions are real), the client is
the `websockets` library with the handshake signed by the twilio library, and the LLM is
tests/fakes/fake_llm.py's real SSE server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import uvicorn
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from app.config.database import transaction
from app.config.settings import settings
from app.llm.agent import reset_llm_client
from app.models import Call, CallTurn
from app.services import relay as relay_service
from app.services.scope import get_scoped
from app.telephony import relay as relay_protocol
from app.telephony.relay import APOLOGY, GOODBYE, TIME_LIMIT_GOODBYE, TRANSFER_NOTICE
from app.telephony.signature import websocket_url
from app.telephony.urls import relay_token
from tests.fakes.fake_llm import FakeLLM, Script
from tests.helpers import (
    RingingCall,
    TenantFixture,
    count_tenant_rows,
    create_number_and_profile,
    create_ringing_call,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

RELAY_PATH = "/telephony/twilio/relay"
BASE = os.environ["PUBLIC_BASE_URL"]
SIGNED_URL = websocket_url(BASE, RELAY_PATH)
TIMEOUT = 5.0


# --------------------------------------------------------------------------- infrastructure


@pytest.fixture(scope="module")
def server(app: Any) -> Iterator[str]:
    """The app under uvicorn on an ephemeral port; yields its ws:// base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="off"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: uv.run(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"ws://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def llm(llm_server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """The fake LLM, configured as the app's LLM for this test."""
    llm_server.reset()
    llm_server.default = Script()
    llm_server.responder = None
    monkeypatch.setattr(settings, "LLM_BASE_URL", llm_server.base_url)
    monkeypatch.setattr(settings, "LLM_MODEL", "fake-model")
    monkeypatch.setattr(settings, "LLM_TIMEOUT_SECONDS", 5.0)
    reset_llm_client()
    yield llm_server
    reset_llm_client()


_open: list[ClientConnection] = []


@pytest.fixture(autouse=True)
def relay_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Quick keypad settling; afterwards every socket closed and every session finished, so a
    late post-call summary never takes another test's scripted LLM answer."""
    monkeypatch.setattr(relay_protocol, "DTMF_SETTLE_SECONDS", 0.05)
    yield
    while _open:
        _open.pop().close()
    eventually(lambda: relay_protocol.live_sessions() == 0, timeout=10)


def sign(url: str = SIGNED_URL, token: str | None = None) -> str:
    return str(
        RequestValidator(token or os.environ["TWILIO_AUTH_TOKEN"]).compute_signature(url, {})
    )


class Relay:
    """Twilio's side of the socket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, message: dict[str, Any] | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, str)
        return json.loads(frame)

    def setup(self, call_sid: str, call_id: uuid.UUID | str, **extra: Any) -> None:
        self.send(
            {
                "type": "setup",
                "sessionId": "VX" + uuid.uuid4().hex,
                "accountSid": os.environ["TWILIO_ACCOUNT_SID"],
                "callSid": call_sid,
                "from": "+14155550100",
                "to": "+14155550101",
                "direction": "inbound",
                "customParameters": {"call_id": str(call_id)},
                **extra,
            }
        )

    def prompt(self, text: str) -> None:
        self.send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})

    def answer(self, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Text frames up to and including the one marked last."""
        frames = []
        while True:
            frame = self.recv(timeout)
            assert frame["type"] == "text", frame
            frames.append(frame)
            if frame["last"]:
                return frames

    def expect_closed(self, code: int = 1008) -> None:
        with pytest.raises(ConnectionClosed) as closed:
            self.ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == code


def open_relay(
    server: str,
    call_id: uuid.UUID | str | None = None,
    *,
    token: str | None = None,
    signature: str | None = None,
    headers: bool = True,
) -> Relay:
    """A signed socket to the relay URL the TwiML of call `call_id` names (with its token)."""
    if token is None and isinstance(call_id, uuid.UUID):
        token = relay_token(call_id)
    query = "" if token is None else "?" + urlencode({"token": token})
    extra = {"X-Twilio-Signature": signature or sign(SIGNED_URL + query)} if headers else {}
    ws = connect(
        server + RELAY_PATH + query,
        additional_headers=extra,
        open_timeout=TIMEOUT,
        close_timeout=2,
        compression=None,
        proxy=None,
    ).__enter__()
    _open.append(ws)
    return Relay(ws)


def spoken(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["token"] for frame in frames)


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def stored_turns(call: RingingCall | tuple[uuid.UUID, uuid.UUID]) -> list[tuple[Any, ...]]:
    tenant_id, call_id = (call.tenant_id, call.call_id) if isinstance(call, RingingCall) else call
    with transaction(tenant_id) as session:
        turns = session.query(CallTurn).filter_by(call_id=call_id).order_by(CallTurn.seq).all()
        return [(t.seq, t.role, t.text, t.interrupted, t.latency_ms) for t in turns]


def stored_call(tenant_id: uuid.UUID, call_id: uuid.UUID) -> Call:
    with transaction(tenant_id) as session:
        return get_scoped(session, Call, tenant_id, call_id, what="Call")


def hang_up(client: TestClient, call: RingingCall, duration: int = 12) -> Call:
    """Twilio's final `completed` status callback for `call`; returns the call as stored."""
    response = twilio_post(
        client,
        "/telephony/twilio/status",
        {"CallSid": call.call_sid, "CallStatus": "completed", "CallDuration": str(duration)},
    )
    assert response.status_code == 200, response.text
    return stored_call(call.tenant_id, call.call_id)


def llm_messages(llm: FakeLLM, index: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in llm.requests[index]["messages"]]


# --------------------------------------------------------------------------- the conversation


def test_a_call_from_the_voice_webhook_holds_a_conversation(
    client: TestClient,
    server: str,
    llm: FakeLLM,
    tenant: TenantFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    real_emit = relay_service.emit_event

    def recording_emit(session: Any, tenant_id: uuid.UUID, kind: str, data: Any) -> None:
        events.append((kind, data))
        real_emit(session, tenant_id, kind, data)

    monkeypatch.setattr(relay_service, "emit_event", recording_emit)

    # The voice webhook creates the call and hands it to ConversationRelay.
    setup = create_number_and_profile(
        tenant.id,
        system_prompt="You are the receptionist of Acme Dental.",
        greeting="Thanks for calling Acme Dental.",
        temperature=0.3,
        max_tokens=120,
    )
    call_sid = twilio_call_sid()
    voice = twilio_post(
        client,
        "/telephony/twilio/voice",
        {"CallSid": call_sid, "From": random_e164(), "To": setup.number, "Direction": "inbound"},
    )
    assert voice.status_code == 200, voice.text
    relay_el = ET.fromstring(voice.text).find("Connect/ConversationRelay")  # noqa: S314
    assert relay_el is not None
    call_id = uuid.UUID(relay_el.find("Parameter[@name='call_id']").get("value"))  # type: ignore[union-attr]
    # The relay URL carries the call's token; Twilio signs the handshake over it.
    assert relay_el.get("url") == f"{SIGNED_URL}?token={relay_token(call_id)}"

    llm.push(
        Script(tokens=["Sure", ",", " I can", " help."], stall_after_tokens=2),
        Script.text("We open at nine."),
        Script.text("You chose option five."),
        Script(tokens=["Goodbye", "!"], tool_call=("end_call", {"reason": "caller is done"})),
    )
    relay = open_relay(server, call_id)
    relay.setup(call_sid, call_id)

    # Tokens are forwarded as they arrive: the model stalls after two, and both are already here.
    relay.prompt("Hi, can you help me?")
    assert relay.recv() == {"type": "text", "token": "Sure", "last": False}
    assert relay.recv() == {"type": "text", "token": ",", "last": False}

    # Barge-in: the stream is cancelled at once (the LLM's HTTP response is closed).
    relay.send(
        {"type": "interrupt", "utteranceUntilInterrupt": "Sure", "durationUntilInterruptMs": "460"}
    )
    eventually(lambda: llm.in_flight == 0, timeout=1.0)

    relay.prompt("When do you open?")
    frames = relay.answer()
    # The first word goes out at once; the rest shares one frame up to the sentence's end.
    assert [f["token"] for f in frames] == ["We", " open at nine.", ""]
    assert [f["last"] for f in frames] == [False, False, True]
    sent = llm.requests[1]
    assert llm_messages(llm, 1)[1:] == [
        ("assistant", "Thanks for calling Acme Dental."),
        ("user", "Hi, can you help me?"),
        ("assistant", "Sure"),  # only what the caller heard
        ("user", "When do you open?"),
    ]
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][0]["content"].startswith("You are the receptionist of Acme Dental.")
    assert sent["model"] == "fake-model"
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 120 and sent["stream"] is True
    # No transfer number on the profile: only end_call is offered.
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["end_call"]

    relay.send({"type": "dtmf", "digit": "5"})
    assert spoken(relay.answer()) == "You chose option five."
    assert llm_messages(llm, 2)[-1] == ("user", "The caller pressed 5 on the keypad.")

    relay.prompt("That's all, thanks.")
    frames = relay.answer()
    assert spoken(frames) == "Goodbye!"
    end = relay.recv()
    assert end["type"] == "end"
    assert json.loads(end["handoffData"]) == {"reason": "end_call"}
    relay.ws.close()

    turns = eventually(
        lambda: len(stored_turns((tenant.id, call_id))) == 9 and stored_turns((tenant.id, call_id))
    )
    assert [(seq, role, text, interrupted) for seq, role, text, interrupted, _ in turns] == [
        (1, "agent", "Thanks for calling Acme Dental.", False),
        (2, "caller", "Hi, can you help me?", False),
        (3, "agent", "Sure", True),
        (4, "caller", "When do you open?", False),
        (5, "agent", "We open at nine.", False),
        (6, "caller", "The caller pressed 5 on the keypad.", False),
        (7, "agent", "You chose option five.", False),
        (8, "caller", "That's all, thanks.", False),
        (9, "agent", "Goodbye!", False),
    ]
    latencies = {seq: latency for seq, role, _, _, latency in turns if role == "agent"}
    assert latencies[1] is None  # the greeting is spoken by Twilio, not answered
    assert all(latencies[seq] is not None and latencies[seq] >= 0 for seq in (3, 5, 7, 9))

    call = stored_call(tenant.id, call_id)
    assert call.status == "in_progress" and call.answered_at is not None
    assert [kind for kind, _ in events] == ["call.started"]
    assert events[0][1]["call"]["id"] == str(call_id)
    assert events[0][1]["call"]["status"] == "in_progress"

    # After the socket closes, the post-call summary is written (the fake's default answer).
    summary = eventually(lambda: stored_call(tenant.id, call_id).summary)
    assert summary == "Hello from the fake."
    assert "Caller: When do you open?" in llm.requests[-1]["messages"][1]["content"]


def test_interrupting_a_finished_answer_truncates_what_was_stored(
    server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(
        Script.text("Our prices start at fifty dollars for a cleaning."),
        Script(tokens=["Let", " me", " check"], stall_after_tokens=1),
        Script.text("Yes."),
    )
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("How much is a cleaning?")
    assert spoken(relay.answer()) == "Our prices start at fifty dollars for a cleaning."
    # Twilio was still reading the answer out when the caller spoke.
    relay.send(
        {
            "type": "interrupt",
            "utteranceUntilInterrupt": "Our prices start at",
            "durationUntilInterruptMs": 900,
        }
    )
    eventually(lambda: any(t[3] for t in stored_turns(call)))
    # A new utterance while the next answer streams (no interrupt message) supersedes it.
    relay.prompt("And for kids?")
    assert relay.recv()["token"] == "Let"
    relay.prompt("Hello?")
    assert spoken(relay.answer()) == "Yes."
    assert llm_messages(llm)[1:] == [
        ("user", "How much is a cleaning?"),
        ("assistant", "Our prices start at"),
        ("user", "And for kids?"),
        ("assistant", "Let"),
        ("user", "Hello?"),
    ]
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 6 and stored_turns(call))
    assert [(role, text, interrupted) for _, role, text, interrupted, _ in turns] == [
        ("caller", "How much is a cleaning?", False),
        ("agent", "Our prices start at", True),
        ("caller", "And for kids?", False),
        ("agent", "Let", True),
        ("caller", "Hello?", False),
        ("agent", "Yes.", False),
    ]


def test_transfer_call_ends_the_session_and_the_action_dials_the_transfer_number(
    client: TestClient, server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    transfer_to = random_e164()
    call = create_ringing_call(tenant.id, transfer_number=transfer_to, llm_model="profile-model")
    llm.push(Script(tokens=[], tool_call=("transfer_call", {"reason": "wants a human"})))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Can I talk to a person?")
    assert relay.answer() == [{"type": "text", "token": TRANSFER_NOTICE, "last": True}]
    end = relay.recv()
    assert end["type"] == "end"
    assert json.loads(end["handoffData"]) == {"reason": "transfer", "transfer_to": transfer_to}
    request = llm.requests[0]
    assert request["model"] == "profile-model"
    assert [t["function"]["name"] for t in request["tools"]] == ["end_call", "transfer_call"]
    # Once ended, the agent says nothing more.
    relay.prompt("Hello?")
    with pytest.raises(TimeoutError):
        relay.recv(timeout=0.3)
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 3 and stored_turns(call))
    assert turns[-1][1:3] == ("agent", TRANSFER_NOTICE)

    # Twilio then asks the <Connect action> URL what to do with the call.
    action = twilio_post(
        client,
        "/telephony/twilio/relay-action",
        {"CallSid": call.call_sid, "SessionStatus": "ended", "HandoffData": end["handoffData"]},
    )
    assert action.status_code == 200, action.text
    dial = ET.fromstring(action.text).find("Dial")  # noqa: S314 - our own TwiML
    assert dial is not None and dial.text == transfer_to
    assert hang_up(client, call).end_reason == "transferred"


def test_end_call_without_words_says_goodbye(
    client: TestClient, server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id)
    llm.push(Script(tokens=[], tool_call=("end_call", {})))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Bye.")
    assert relay.answer() == [{"type": "text", "token": GOODBYE, "last": True}]
    assert relay.recv() == {"type": "end", "handoffData": json.dumps({"reason": "end_call"})}
    relay.ws.close()
    # Until Twilio's final status the call has no end_reason; then the agent's hang-up is it.
    assert stored_call(tenant.id, call.call_id).end_reason is None
    ended = hang_up(client, call)
    assert (ended.status, ended.end_reason) == ("completed", "agent_hangup")


def test_a_caller_hanging_up_is_caller_hangup(
    client: TestClient, server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id)
    llm.push(Script.text("Sure."))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Hello?")
    assert spoken(relay.answer()) == "Sure."
    relay.ws.close()
    ended = hang_up(client, call)
    assert (ended.status, ended.end_reason) == ("completed", "caller_hangup")


def test_drill_relay_socket_dropped_ends_through_the_status_callback_metered_once(
    client: TestClient, server: str, llm: FakeLLM, tenant: TenantFixture, owner_engine: Any
) -> None:
    """Fault drill: the relay socket is dropped mid-answer (no close frame); Twilio reports the
    session failed, then sends its final status, twice."""
    call = create_ringing_call(tenant.id)
    llm.push(Script(tokens=["One", " moment"], stall_after_tokens=1))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Hello?")
    assert relay.recv()["token"] == "One"
    relay.ws.socket.close()  # the TCP connection dies: no close handshake
    eventually(lambda: relay_protocol.live_sessions() == 0)
    twilio_post(
        client,
        "/telephony/twilio/relay-action",
        {"CallSid": call.call_sid, "SessionStatus": "failed", "ErrorCode": "64105"},
    )
    for _ in range(2):
        ended = hang_up(client, call, duration=20)
    assert (ended.status, ended.end_reason, ended.billable_minutes) == (
        "completed",
        "relay_error",
        1,
    )
    assert count_tenant_rows(owner_engine, "usage_records", tenant.id) == 1
    where = "event_type = 'call.ended'"
    assert count_tenant_rows(owner_engine, "webhook_events", tenant.id, where) == 1
    # What was sent before the drop is kept, as interrupted.
    assert stored_turns(call)[-1][1:4] == ("agent", "One", True)


def test_a_failed_relay_session_is_relay_error(
    client: TestClient, server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id)
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    eventually(lambda: stored_call(tenant.id, call.call_id).status == "in_progress")
    relay.ws.close()
    action = twilio_post(
        client,
        "/telephony/twilio/relay-action",
        {"CallSid": call.call_sid, "SessionStatus": "failed", "ErrorCode": "64107"},
    )
    assert ET.fromstring(action.text).find("Hangup") is not None  # noqa: S314 - our own TwiML
    ended = hang_up(client, call)
    assert (ended.status, ended.end_reason) == ("completed", "relay_error")


# --------------------------------------------------------------------------- failures and limits


@pytest.mark.parametrize(
    "failure", [Script(hang=True), Script(status=500)], ids=["timeout", "error"]
)
def test_llm_failure_gets_an_apology_and_the_call_goes_on(
    server: str,
    llm: FakeLLM,
    tenant: TenantFixture,
    monkeypatch: pytest.MonkeyPatch,
    failure: Script,
) -> None:
    monkeypatch.setattr(settings, "LLM_TIMEOUT_SECONDS", 0.3)
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(failure, Script.text("Back again."))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Hello?")
    assert relay.answer() == [{"type": "text", "token": APOLOGY, "last": True}]
    relay.prompt("Are you there?")
    assert spoken(relay.answer()) == "Back again."
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 4 and stored_turns(call))
    assert turns[1][1:4] == ("agent", APOLOGY, False)
    assert turns[1][4] is not None


def test_drill_llm_stream_cut_mid_answer_apologises_and_the_call_goes_on(
    server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    """Fault drill: the LLM's connection drops after two tokens of an answer."""
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(
        Script(tokens=["We open", " at", " nine", "."], cut_after_tokens=2), Script.text("Yes.")
    )
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    started = time.monotonic()
    relay.prompt("When do you open?")
    frames = relay.answer()
    assert time.monotonic() - started < 3
    assert spoken(frames) == "We open at " + APOLOGY
    relay.prompt("Are you open on Sunday?")
    assert spoken(relay.answer()) == "Yes."
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 5 and stored_turns(call))
    assert [turn[1:4] for turn in turns] == [
        ("caller", "When do you open?", False),
        ("agent", "We open at", True),
        ("agent", APOLOGY, False),
        ("caller", "Are you open on Sunday?", False),
        ("agent", "Yes.", False),
    ]


def test_without_an_llm_the_caller_hears_the_apology(
    server: str, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "LLM_BASE_URL", None)
    reset_llm_client()
    call = create_ringing_call(tenant.id)
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Hello?")
    assert relay.answer() == [{"type": "text", "token": APOLOGY, "last": True}]
    relay.ws.close()
    eventually(lambda: len(stored_turns(call)) == 3)
    assert stored_call(tenant.id, call.call_id).summary is None


def test_max_call_duration_ends_the_call(
    client: TestClient,
    server: str,
    llm: FakeLLM,
    tenant: TenantFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits: list[int] = []

    def short_limit(seconds: int) -> float:
        limits.append(seconds)
        return 0.4

    monkeypatch.setattr(relay_protocol, "duration_limit", short_limit)
    call = create_ringing_call(tenant.id, max_call_duration_seconds=30)
    llm.push(Script(tokens=["Let", " me", " see"], stall_after_tokens=1))
    relay = open_relay(server, call.call_id)
    started = time.monotonic()
    relay.setup(call.call_sid, call.call_id)
    relay.prompt("Tell me everything.")
    assert relay.recv()["token"] == "Let"
    assert relay.recv() == {"type": "text", "token": TIME_LIMIT_GOODBYE, "last": True}
    assert relay.recv() == {"type": "end", "handoffData": json.dumps({"reason": "max_duration"})}
    assert time.monotonic() - started < 2
    assert limits == [30]
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 4 and stored_turns(call))
    assert [(role, text, interrupted) for _, role, text, interrupted, _ in turns[1:]] == [
        ("caller", "Tell me everything.", False),
        ("agent", "Let", True),
        ("agent", TIME_LIMIT_GOODBYE, False),
    ]
    assert hang_up(client, call).end_reason == "max_duration"


def test_garbage_frames_are_ignored_and_the_session_survives(
    server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id)
    llm.push(Script.text("Still here."))
    relay = open_relay(server, call.call_id)
    relay.send("this is not json")  # before setup too
    relay.setup(call.call_sid, call.call_id)
    for frame in (
        "{broken",
        "[1, 2, 3]",
        '"just a string"',
        json.dumps({"type": "no-such-type"}),
        json.dumps({"no": "type"}),
        json.dumps({"type": "prompt", "voicePrompt": "x" * (70 * 1024), "last": True}),
        json.dumps({"type": "prompt", "voicePrompt": 42, "last": True}),
        json.dumps({"type": "prompt", "voicePrompt": "partial", "last": False}),
        json.dumps({"type": "dtmf", "digit": "not a key"}),
        json.dumps({"type": "interrupt", "durationUntilInterruptMs": "soon"}),
        json.dumps({"type": "error", "description": "Invalid message received"}),
        json.dumps({"type": "setup", "callSid": "CA" + "0" * 32}),
    ):
        relay.send(frame)
    relay.ws.send(b"\x00\x01binary")
    relay.prompt("Are you alive?")
    assert spoken(relay.answer()) == "Still here."
    assert len(llm.requests) == 1
    relay.ws.close()


def test_two_sessions_do_not_wait_for_each_other(
    server: str, llm: FakeLLM, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    def responder(body: dict[str, Any]) -> Script | None:
        last = body["messages"][-1]["content"]
        if body.get("stream") and "slow" in last:
            return Script(tokens=["slow"], first_token_delay=1.5)
        return Script(tokens=["fast"])

    llm.responder = responder
    slow_call = create_ringing_call(tenant.id)
    fast_call = create_ringing_call(other_tenant.id)
    slow, fast = open_relay(server, slow_call.call_id), open_relay(server, fast_call.call_id)
    slow.setup(slow_call.call_sid, slow_call.call_id)
    fast.setup(fast_call.call_sid, fast_call.call_id)
    # Make sure both sessions are bound before timing.
    eventually(lambda: len(stored_turns(slow_call)) == 1 and len(stored_turns(fast_call)) == 1)

    arrived: dict[str, float] = {}

    def first_frame(name: str, relay: Relay) -> None:
        relay.recv()
        arrived[name] = time.perf_counter()

    readers = [
        threading.Thread(target=first_frame, args=("slow", slow)),
        threading.Thread(target=first_frame, args=("fast", fast)),
    ]
    for reader in readers:
        reader.start()
    sent_at = time.perf_counter()
    slow.prompt("slow please")
    fast.prompt("fast please")
    for reader in readers:
        reader.join(timeout=TIMEOUT)
    assert set(arrived) == {"slow", "fast"}
    assert arrived["fast"] < arrived["slow"]
    assert arrived["fast"] - sent_at < 1.0
    assert arrived["slow"] - sent_at >= 1.5
    slow.ws.close()
    fast.ws.close()


def test_a_second_socket_for_a_live_call_is_closed_and_changes_nothing(
    server: str, llm: FakeLLM, tenant: TenantFixture, owner_engine: Any
) -> None:
    call = create_ringing_call(tenant.id, greeting="Hello!")
    llm.push(Script.text("First answer."))
    first = open_relay(server, call.call_id)
    first.setup(call.call_sid, call.call_id)
    first.prompt("One.")
    assert spoken(first.answer()) == "First answer."
    bound = stored_call(tenant.id, call.call_id)

    # The same signed URL and setup again (a replay, or a second Twilio connection).
    second = open_relay(server, call.call_id)
    second.setup(call.call_sid, call.call_id)
    second.expect_closed(1008)
    assert stored_call(tenant.id, call.call_id).updated_at == bound.updated_at
    assert (
        count_tenant_rows(owner_engine, "webhook_events", tenant.id, "event_type = 'call.started'")
        == 1
    )

    # The first session goes on undisturbed.
    llm.push(Script.text("Second answer."))
    first.prompt("Two.")
    assert spoken(first.answer()) == "Second answer."
    first.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 5 and stored_turns(call))
    assert [seq for seq, *_ in turns] == [1, 2, 3, 4, 5]


def test_of_two_sockets_racing_for_one_call_exactly_one_wins(
    server: str, tenant: TenantFixture
) -> None:
    for _ in range(3):
        call = create_ringing_call(tenant.id, greeting="Hello!")
        relays = [open_relay(server, call.call_id) for _ in range(4)]
        threads = [
            threading.Thread(target=relay.setup, args=(call.call_sid, call.call_id))
            for relay in relays
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        closed = 0
        for relay in relays:
            try:
                relay.ws.recv(timeout=1.0)
            except TimeoutError:
                continue  # the owner: open, waiting for the caller
            except ConnectionClosed:
                closed += 1
        assert closed == 3
        assert [turn[1:3] for turn in stored_turns(call)] == [("agent", "Hello!")]


def test_a_captured_handshake_opens_no_other_call(server: str, tenant: TenantFixture) -> None:
    mine, theirs = create_ringing_call(tenant.id), create_ringing_call(tenant.id)
    # The socket URL and signature of my call, with a setup naming another call.
    relay = open_relay(server, mine.call_id)
    relay.setup(theirs.call_sid, theirs.call_id)
    relay.expect_closed(1008)
    # No token, or a forged one, opens nothing either.
    for token in (None, "0" * 32):
        relay = open_relay(server, token=token)
        relay.setup(theirs.call_sid, theirs.call_id)
        relay.expect_closed(1008)
    assert stored_call(tenant.id, theirs.call_id).status == "ringing"


def test_a_call_whose_tenant_was_suspended_while_it_rang_is_not_handed_to_the_agent(
    client: TestClient, server: str, llm: FakeLLM, admin_headers: dict[str, str]
) -> None:
    from tests.helpers import create_tenant

    tenant = create_tenant(plan="pro")
    call = create_ringing_call(tenant.id)
    suspended = client.patch(
        f"/api/v1/tenants/{tenant.id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.expect_closed(1008)
    assert stored_turns(call) == [] and llm.requests == []
    ended = hang_up(client, call)
    assert (ended.status, ended.end_reason) == ("completed", "tenant_suspended")


def test_a_turn_with_characters_postgresql_refuses_is_cleaned_not_lost(
    server: str, llm: FakeLLM, tenant: TenantFixture
) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script.text("Fine."))
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.send('{"type": "prompt", "voicePrompt": "a\\u0000b\\ud800c", "last": true}')
    assert spoken(relay.answer()) == "Fine."
    relay.ws.close()
    turns = eventually(lambda: len(stored_turns(call)) == 2 and stored_turns(call))
    assert [turn[1:3] for turn in turns] == [("caller", "ab\ufffdc"), ("agent", "Fine.")]


# --------------------------------------------------------------------------- who may connect


def test_a_bad_or_missing_signature_is_refused(server: str) -> None:
    for signature, headers in (
        (sign(token="not-the-token"), True),
        (sign(url="wss://elsewhere.example.test" + RELAY_PATH), True),
        (None, False),
    ):
        with pytest.raises(InvalidStatus) as refused:
            open_relay(server, signature=signature, headers=headers)
        assert refused.value.response.status_code == 403


def test_without_telephony_configured_the_handshake_is_refused(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "TWILIO_AUTH_TOKEN", None)
    with pytest.raises(InvalidStatus) as refused:
        open_relay(server)
    assert refused.value.response.status_code == 403


def test_the_first_message_must_be_setup(server: str) -> None:
    relay = open_relay(server)
    relay.prompt("Hello")
    relay.expect_closed()


def test_a_socket_that_never_sends_setup_is_closed(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import relay as relay_api

    monkeypatch.setattr(relay_api, "SETUP_TIMEOUT_SECONDS", 0.3)
    relay = open_relay(server)
    relay.expect_closed()


def test_an_unknown_call_is_closed(server: str, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id)
    for call_sid, call_id in (
        (twilio_call_sid(), call.call_id),  # unknown CallSid
        (call.call_sid, uuid.uuid4()),  # the CallSid's call is another one
        (call.call_sid, "not-a-uuid"),
        ("", call.call_id),
    ):
        relay = open_relay(server, call_id)
        relay.setup(call_sid, call_id)
        relay.expect_closed()
    assert stored_call(tenant.id, call.call_id).status == "ringing"


def test_a_foreign_call_is_closed_and_left_untouched(
    server: str, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    mine = create_ringing_call(tenant.id)
    theirs = create_ringing_call(other_tenant.id)
    relay = open_relay(server, theirs.call_id)
    relay.setup(mine.call_sid, theirs.call_id)  # another tenant's call id with my CallSid
    relay.expect_closed()
    relay = open_relay(server, mine.call_id)
    relay.setup(theirs.call_sid, mine.call_id)
    relay.expect_closed()
    for call in (mine, theirs):
        assert stored_call(call.tenant_id, call.call_id).status == "ringing"
        assert stored_turns(call) == []


def test_a_finished_call_cannot_be_bound(server: str, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id)
    with transaction(tenant.id) as session:
        row = get_scoped(session, Call, tenant.id, call.call_id, what="Call")
        row.status = "completed"
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.expect_closed()
    assert stored_turns(call) == []


def test_a_refusal_after_the_caller_hung_up_closes_quietly(
    server: str, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The caller hangs up while the call is being bound (its final status callback won):
    closing a socket that is already gone is no error, and no traceback in the log."""
    call = create_ringing_call(tenant.id)
    hung_up, refused = threading.Event(), threading.Event()

    def bind_after_hang_up(call_id: uuid.UUID, call_sid: str) -> Any:
        hung_up.wait(TIMEOUT)
        time.sleep(0.2)  # the server has seen the close
        refused.set()
        raise relay_service.RelayBindError("call is completed")

    monkeypatch.setattr(relay_service, "bind_call", bind_after_hang_up)
    relay = open_relay(server, call.call_id)
    relay.setup(call.call_sid, call.call_id)
    relay.ws.close()
    hung_up.set()
    assert refused.wait(TIMEOUT)
    time.sleep(0.3)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
