"""RelaySession driven directly (no socket): keypad input, hang-ups, the prompt window.

The session's dependencies are real: PostgreSQL through app/services/relay.py, and the fake LLM
server through an LLMClient handed in as the session's client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.config.database import transaction
from app.llm.agent import MAX_HISTORY_MESSAGES, ConversationEntry, build_messages
from app.llm.client import LLMClient
from app.models import CallTurn, Tenant
from app.services.relay import HeardTurn, NewTurn, store_transcript
from app.services.telephony import telephony_scope
from app.telephony.relay import APOLOGY, RelaySession, _AgentTurn
from app.telephony.urls import relay_token
from tests.fakes.fake_llm import FakeLLM, Script
from tests.helpers import RingingCall, TenantFixture, create_ringing_call


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def llm(llm_server: FakeLLM) -> FakeLLM:
    llm_server.reset()
    return llm_server


class Harness:
    """A session plus the frames it sent, on the running event loop."""

    def __init__(self, llm: FakeLLM, **options: Any) -> None:
        self.frames: list[dict[str, Any]] = []
        self.client = LLMClient(
            base_url=llm.base_url, api_key=None, default_model="fake", timeout_seconds=5
        )

        async def send(text: str) -> None:
            self.frames.append(json.loads(text))

        self.session = RelaySession(send, llm=lambda: self.client, **options)

    async def setup(self, call: RingingCall) -> None:
        # Twilio opened the socket on the call's relay URL, with its token.
        self.session.url_token = relay_token(call.call_id)
        await self.message(
            type="setup", callSid=call.call_sid, customParameters={"call_id": str(call.call_id)}
        )
        assert self.session.call is not None

    async def message(self, **fields: Any) -> None:
        await self.session.handle_message(json.dumps(fields))

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.005)

    def answered(self) -> bool:
        return any(f["type"] == "text" and f["last"] for f in self.frames)


def answers(llm: FakeLLM) -> list[dict[str, Any]]:
    """The streamed (answer) requests; close() also asks for a post-call summary."""
    return [request for request in llm.requests if request.get("stream")]


def turns(call: RingingCall) -> list[tuple[str, str, bool]]:
    with transaction(call.tenant_id) as session:
        rows = session.query(CallTurn).filter_by(call_id=call.call_id).order_by(CallTurn.seq)
        return [(t.role, t.text, t.interrupted) for t in rows]


def test_keys_pressed_in_a_burst_are_one_caller_turn(llm: FakeLLM, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script.text("Thanks, account 123 found."))

    async def scenario() -> Harness:
        harness = Harness(llm, dtmf_settle_seconds=0.1)
        await harness.setup(call)
        for digit in "123#":
            await harness.message(type="dtmf", digit=digit)
        await harness.until(harness.answered)
        await harness.session.close()
        return harness

    asyncio.run(scenario())
    assert len(answers(llm)) == 1
    assert answers(llm)[0]["messages"][-1] == {
        "role": "user",
        "content": "The caller pressed 123# on the keypad.",
    }
    # close() returns only once the transcript is written.
    assert turns(call) == [
        ("caller", "The caller pressed 123# on the keypad.", False),
        ("agent", "Thanks, account 123 found.", False),
    ]


def test_keys_then_speech_are_answered_once(llm: FakeLLM, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script.text("Got it."))

    async def scenario() -> None:
        harness = Harness(llm, dtmf_settle_seconds=5)
        await harness.setup(call)
        await harness.message(type="dtmf", digit="7")
        await harness.message(type="prompt", voicePrompt="That's my choice.", last=True)
        await harness.until(harness.answered)
        await harness.session.close()

    asyncio.run(scenario())
    assert [m["content"] for m in answers(llm)[0]["messages"][1:]] == [
        "The caller pressed 7 on the keypad.",
        "That's my choice.",
    ]
    assert len(answers(llm)) == 1
    assert [role for role, _, _ in turns(call)] == ["caller", "caller", "agent"]


def test_hanging_up_mid_answer_keeps_what_was_sent(llm: FakeLLM, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script(tokens=["We are", " open", " until"], stall_after_tokens=2))

    async def scenario() -> Harness:
        harness = Harness(llm)
        await harness.setup(call)
        await harness.message(type="prompt", voicePrompt="Are you open?", last=True)
        await harness.until(lambda: len(harness.frames) == 2)
        await harness.session.close()
        await harness.until(lambda: llm.in_flight == 0)
        return harness

    harness = asyncio.run(scenario())
    assert [f["token"] for f in harness.frames] == ["We are", " open"]
    assert turns(call) == [("caller", "Are you open?", False), ("agent", "We are open", True)]


def test_close_before_setup_is_harmless(llm: FakeLLM) -> None:
    async def scenario() -> Harness:
        harness = Harness(llm)
        await harness.session.close()
        await harness.session.handle_message(json.dumps({"type": "prompt", "voicePrompt": "hi"}))
        return harness

    harness = asyncio.run(scenario())
    assert harness.frames == [] and llm.requests == []


def test_the_model_sees_the_system_prompt_and_the_latest_utterances() -> None:
    history = [
        ConversationEntry(role="caller" if i % 2 == 0 else "agent", text=f"utterance {i}")
        for i in range(MAX_HISTORY_MESSAGES + 40)
    ]
    history.insert(5, ConversationEntry(role="agent", text="", interrupted=True))
    messages = build_messages("Be kind.", history, can_transfer=False)
    assert len(messages) == MAX_HISTORY_MESSAGES + 1
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be kind.")
    assert "transfer_call" not in messages[0]["content"]
    assert messages[-1] == {
        "role": "assistant",
        "content": f"utterance {MAX_HISTORY_MESSAGES + 39}",
    }
    assert messages[1]["content"] == "utterance 40"
    assert "transfer_call" in build_messages("", history, can_transfer=True)[0]["content"]


def test_an_empty_answer_is_never_silence(llm: FakeLLM, tenant: TenantFixture) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script(tokens=[]), Script(tokens=[], tool_call=("no_such_tool", {})))

    async def scenario() -> Harness:
        harness = Harness(llm)
        await harness.setup(call)
        for words in ("Hello?", "Anyone?"):
            harness.frames.clear()
            await harness.message(type="prompt", voicePrompt=words, last=True)
            await harness.until(harness.answered)
            assert harness.frames == [{"type": "text", "token": APOLOGY, "last": True}]
        await harness.session.close()
        return harness

    asyncio.run(scenario())
    assert [text for _, text, _ in turns(call)] == ["Hello?", APOLOGY, "Anyone?", APOLOGY]


class TimedStore:
    """The real relay store (PostgreSQL), noting when each transcript write starts."""

    def __init__(self) -> None:
        from app.services import relay as real

        self._real = real
        self.writes: list[tuple[float, list[str]]] = []  # (started at, roles of new turns)

    def bind_call(self, call_id: Any, call_sid: str) -> Any:
        return self._real.bind_call(call_id, call_sid)

    def store_transcript(self, scope: Any, call_id: Any, changes: Any) -> None:
        roles = [change.role for change in changes if isinstance(change, NewTurn)]
        self.writes.append((time.perf_counter(), roles))
        self._real.store_transcript(scope, call_id, changes)

    def store_summary(self, scope: Any, call_id: Any, summary: str) -> None:
        self._real.store_summary(scope, call_id, summary)

    def store_end_reason(self, scope: Any, call_id: Any, reason: Any) -> None:
        self._real.store_end_reason(scope, call_id, reason)


def _first_text_at(harness: Harness, sent_at: list[float]) -> float:
    return next(
        at for frame, at in zip(harness.frames, sent_at, strict=True) if frame["type"] == "text"
    )


@pytest.mark.parametrize("quiet_wait", [None, 0.05])
def test_transcript_writes_wait_for_the_answer_but_not_forever(
    llm: FakeLLM, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch, quiet_wait: float | None
) -> None:
    import app.telephony.relay as relay_module

    if quiet_wait is not None:
        monkeypatch.setattr(relay_module, "QUIET_WAIT_SECONDS", quiet_wait)
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script.text("Sure.", first_token_delay=0.3))
    store = TimedStore()
    sent_at: list[float] = []

    async def scenario() -> Harness:
        harness = Harness(llm, store=store)
        original = harness.session._send_text

        async def timed_send(text: str) -> None:
            sent_at.append(time.perf_counter())
            await original(text)

        harness.session._send_text = timed_send
        await harness.setup(call)
        await harness.message(type="prompt", voicePrompt="Can you help?", last=True)
        await harness.until(harness.answered)
        await harness.session.close()
        return harness

    harness = asyncio.run(scenario())
    first_text = _first_text_at(harness, sent_at)
    caller_write = next(at for at, roles in store.writes if "caller" in roles)
    if quiet_wait is None:
        # Nothing is written while the answer is produced; then the turn's two rows go together.
        assert caller_write > sent_at[-1]
        assert [roles for _, roles in store.writes] == [["caller", "agent"]]
    else:
        # An answer slower than the bound does not hold the transcript back.
        assert caller_write < first_text
    assert turns(call) == [("caller", "Can you help?", False), ("agent", "Sure.", False)]


def test_one_write_applies_new_turns_and_an_interruption_of_one_of_them_in_order(
    tenant: TenantFixture,
) -> None:
    call = create_ringing_call(tenant.id, greeting=None)
    with transaction(tenant.id) as session:
        owner = session.get(Tenant, tenant.id)
        assert owner is not None
        scope = telephony_scope(owner)
    store_transcript(
        scope,
        call.call_id,
        [
            NewTurn(seq=1, role="caller", text="What time do you open?"),
            NewTurn(seq=2, role="agent", text="We open at nine, and close at six.", latency_ms=420),
            HeardTurn(seq=2, text="We open at nine"),
            NewTurn(seq=3, role="caller", text="Thanks."),
        ],
    )
    assert turns(call) == [
        ("caller", "What time do you open?", False),
        ("agent", "We open at nine", True),
        ("caller", "Thanks.", False),
    ]


def test_a_call_leaves_no_garbage_for_the_cycle_collector(
    llm: FakeLLM, tenant: TenantFixture
) -> None:
    """A session, its turns and its LLM responses are freed by reference counting: each cycle
    a call leaves lengthens the full collections that pause every live call (app/app.py)."""
    call = create_ringing_call(tenant.id, greeting=None)
    llm.push(Script(tokens=["One", " moment"], stall_after_tokens=1))  # cut off by the caller
    llm.push(Script(tokens=["Goodbye", " then"], stall_after_tokens=1))  # cut off by the hang-up
    frames: list[str] = []

    async def scenario() -> None:
        # Like the socket's `send_text`, the session's send does not refer back to the session
        # (a Harness would: it holds the session and its send holds the harness).
        client = LLMClient(
            base_url=llm.base_url, api_key=None, default_model="fake", timeout_seconds=5
        )

        async def send(text: str) -> None:
            frames.append(text)

        session = RelaySession(send, llm=lambda: client)
        session.url_token = relay_token(call.call_id)

        async def say(**fields: Any) -> None:
            await session.handle_message(json.dumps(fields))

        async def until_frames(count: int) -> None:
            async with asyncio.timeout(5):
                while len(frames) < count:
                    await asyncio.sleep(0.005)

        await say(
            type="setup", callSid=call.call_sid, customParameters={"call_id": str(call.call_id)}
        )
        await say(type="prompt", voicePrompt="Hello?", last=True)
        await until_frames(1)
        await say(type="interrupt", utteranceUntilInterrupt="One")
        await say(type="prompt", voicePrompt="Never mind.", last=True)
        await until_frames(2)
        await session.close()  # cancels the answer and the duration timer
        await client.aclose()

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        asyncio.run(scenario())
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, RelaySession | _AgentTurn | httpx.Response)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(answers(llm)) == 2 and len(llm.requests) == 3  # two answers and the summary
    assert [type(o).__name__ for o in left] == []
