"""LLMClient against a real OpenAI-compatible HTTP server (tests/fakes/fake_llm.py), no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from app.llm.client import (
    LLMClient,
    LLMError,
    LLMNotConfigured,
    LLMTimeout,
    StreamEnd,
    TextDelta,
    ToolCall,
    _read_chunk,
    tool_schema,
)
from tests.fakes.fake_llm import FakeLLM, FakeToolCall, Script

pytestmark = pytest.mark.anyio

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a receptionist."},
    {"role": "user", "content": "Hello?"},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    # One server for the module: starting/stopping uvicorn costs a few hundred ms.
    with FakeLLM() as llm:
        yield llm


@pytest.fixture
def llm(server: FakeLLM) -> Iterator[FakeLLM]:
    server.reset()
    server.responder = None
    server.api_key = None
    yield server
    server.reset()


@pytest.fixture
async def client(llm: FakeLLM) -> AsyncIterator[LLMClient]:
    c = LLMClient(
        base_url=llm.base_url, api_key="sk-test", default_model="fake-default", timeout_seconds=2.0
    )
    yield c
    await c.aclose()


async def collect(
    client: LLMClient, messages: list[dict[str, Any]] = MESSAGES, **kwargs: Any
) -> list[TextDelta | ToolCall | StreamEnd]:
    return [event async for event in client.stream_chat(messages, **kwargs)]


async def wait_until(predicate: Any, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


# --------------------------------------------------------------------------- streaming


async def test_tokens_arrive_in_order_and_incrementally(llm: FakeLLM, client: LLMClient) -> None:
    tokens = ["Good", " morning", ",", " how", " can", " I", " help?"]
    delay = 0.08
    llm.push(Script(tokens=tokens, inter_token_delay=delay))

    received: list[tuple[float, TextDelta | ToolCall | StreamEnd]] = []
    async for event in client.stream_chat(MESSAGES):
        received.append((time.perf_counter(), event))

    events = [event for _, event in received]
    assert events == [TextDelta(t) for t in tokens] + [StreamEnd("stop")]
    first_arrival = received[0][0]
    [first_sent] = llm.first_token_sent_at
    # The server writes the last token (len-1)*delay after the first one, so receiving
    # the first delta before that proves nothing is buffered client-side.
    last_sent_earliest = first_sent + (len(tokens) - 1) * delay
    assert first_arrival < last_sent_earliest - 2 * delay
    assert first_arrival - first_sent < 0.1
    # Deltas were spread over time as the server produced them.
    assert received[-2][0] - first_arrival >= (len(tokens) - 1) * delay * 0.9


async def test_request_carries_model_parameters_messages_and_tools(
    llm: FakeLLM, client: LLMClient
) -> None:
    tools = [
        tool_schema(
            "end_call",
            "Hang up politely.",
            {"type": "object", "properties": {"reason": {"type": "string"}}, "required": []},
        )
    ]
    await collect(client, model="tenant-model", temperature=0.3, max_tokens=42, tools=tools)
    await collect(client)

    explicit, defaults = llm.requests
    assert explicit["model"] == "tenant-model"
    assert explicit["temperature"] == 0.3
    assert explicit["max_tokens"] == 42
    assert explicit["messages"] == MESSAGES
    assert explicit["tools"] == tools
    assert explicit["stream"] is True

    assert defaults["model"] == "fake-default"
    for absent in ("temperature", "max_tokens", "tools"):
        assert absent not in defaults
    assert llm.request_headers[0]["authorization"] == "Bearer sk-test"


async def test_fragmented_tool_calls_are_assembled(llm: FakeLLM, client: LLMClient) -> None:
    booking = {"date": "2024-05-01", "time": "10:00", "notes": 'first visit, "urgent"'}
    llm.push(
        Script(
            tokens=["One moment."],
            tool_call=FakeToolCall("book_appointment", booking, id="call_abc", fragments=5),
            tool_calls=[FakeToolCall("lookup_caller", {"phone": "+15550100"}, fragments=3)],
        )
    )

    events = await collect(client)

    assert events[0] == TextDelta("One moment.")
    assert events[1] == ToolCall(id="call_abc", name="book_appointment", arguments=booking)
    second = events[2]
    assert isinstance(second, ToolCall)
    assert second.name == "lookup_caller"
    assert second.arguments == {"phone": "+15550100"}
    assert second.id
    assert events[3:] == [StreamEnd("tool_calls")]


async def test_invalid_tool_arguments_become_empty_dict(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script(tokens=[], tool_call=FakeToolCall("transfer", raw_arguments='{"to": "sales"')))

    events = await collect(client)

    call, end = events
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("transfer", {})
    assert end == StreamEnd("tool_calls")


# --------------------------------------------------------------------------- failures


async def test_first_token_timeout_when_server_hangs(llm: FakeLLM) -> None:
    llm.push(Script(hang=True))
    c = LLMClient(base_url=llm.base_url, api_key=None, default_model="m", timeout_seconds=0.3)
    try:
        started = time.perf_counter()
        with pytest.raises(LLMTimeout):
            await collect(c)
        elapsed = time.perf_counter() - started
    finally:
        await c.aclose()
    assert 0.25 < elapsed < 1.5
    # The abandoned request is torn down server-side too (connection closed).
    assert await wait_until(lambda: llm.in_flight == 0)


async def test_timeout_when_headers_arrive_but_no_chunk(llm: FakeLLM) -> None:
    llm.push(Script(stall_after_tokens=0))
    c = LLMClient(base_url=llm.base_url, api_key=None, default_model="m", timeout_seconds=0.3)
    try:
        started = time.perf_counter()
        with pytest.raises(LLMTimeout):
            await collect(c)
        assert time.perf_counter() - started < 1.5
    finally:
        await c.aclose()


async def test_timeout_when_stream_stalls_between_chunks(llm: FakeLLM) -> None:
    llm.push(Script(tokens=["Sure", ",", " one", " sec"], stall_after_tokens=2))
    c = LLMClient(base_url=llm.base_url, api_key=None, default_model="m", timeout_seconds=0.3)
    received: list[Any] = []
    try:
        with pytest.raises(LLMTimeout):
            async for event in c.stream_chat(MESSAGES):
                received.append(event)
    finally:
        await c.aclose()
    assert received == [TextDelta("Sure"), TextDelta(",")]


async def test_slow_but_steady_stream_does_not_time_out(llm: FakeLLM) -> None:
    # Total duration exceeds the timeout, but no single gap does.
    llm.push(Script(tokens=["a", "b", "c", "d"], first_token_delay=0.15, inter_token_delay=0.15))
    c = LLMClient(base_url=llm.base_url, api_key=None, default_model="m", timeout_seconds=0.3)
    try:
        events = await collect(c)
    finally:
        await c.aclose()
    assert events[-1] == StreamEnd("stop")
    assert len(events) == 5


async def test_http_500_raises_llm_error_without_retry(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script(status=500))

    with pytest.raises(LLMError) as info:
        await collect(client)

    assert not isinstance(info.value, LLMTimeout)
    assert info.value.status_code == 500
    assert "500" in str(info.value)
    assert len(llm.requests) == 1


async def test_auth_failure_message_does_not_leak_key(llm: FakeLLM) -> None:
    llm.api_key = "sk-right"
    c = LLMClient(
        base_url=llm.base_url, api_key="sk-wrong-secret", default_model="m", timeout_seconds=2
    )
    try:
        with pytest.raises(LLMError) as info:
            await collect(c)
    finally:
        await c.aclose()
    assert info.value.status_code == 401
    assert "sk-wrong-secret" not in str(info.value)


async def test_connection_refused_raises_llm_error() -> None:
    c = LLMClient(
        base_url="http://127.0.0.1:9/v1", api_key=None, default_model="m", timeout_seconds=2
    )
    try:
        with pytest.raises(LLMError):
            await collect(c)
    finally:
        await c.aclose()


async def test_local_server_without_key_gets_placeholder(llm: FakeLLM) -> None:
    c = LLMClient(base_url=llm.base_url, api_key="", default_model="m", timeout_seconds=2)
    try:
        events = await collect(c)
    finally:
        await c.aclose()
    assert events[-1] == StreamEnd("stop")
    assert llm.request_headers[-1]["authorization"] == "Bearer not-needed"


async def test_not_configured() -> None:
    no_url = LLMClient(base_url=None, api_key="k", default_model="m", timeout_seconds=1)
    no_model = LLMClient(
        base_url="http://127.0.0.1:9/v1", api_key="", default_model=None, timeout_seconds=1
    )
    try:
        assert not no_url.configured
        assert not no_model.configured
        for c in (no_url, no_model):
            with pytest.raises(LLMNotConfigured):
                await collect(c)
            with pytest.raises(LLMNotConfigured):
                await c.complete(MESSAGES)
    finally:
        await no_url.aclose()
        await no_model.aclose()


async def test_stream_cut_mid_answer_raises_llm_error(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script(tokens=["We open", " at", " nine"], cut_after_tokens=2))
    received: list[Any] = []
    with pytest.raises(LLMError) as info:
        async for event in client.stream_chat(MESSAGES):
            received.append(event)
    assert not isinstance(info.value, LLMTimeout)
    assert received == [TextDelta("We open"), TextDelta(" at")]


async def test_turns_reuse_one_kept_alive_connection(llm: FakeLLM, client: LLMClient) -> None:
    """The stream is read to its end after [DONE], so the connection goes back to the pool
    instead of being closed half-read: a turn never pays for a new connection."""
    await collect(client)
    await collect(client)
    await client.complete(MESSAGES)
    first, *others = llm.client_ports
    assert first is not None
    assert others == [first, first]


def test_errors_and_garbage_inside_the_stream() -> None:
    partials: dict[int, Any] = {}
    with pytest.raises(LLMError, match="reported an error"):
        _read_chunk('{"error": {"message": "overloaded", "type": "server_error"}}', partials)
    for garbage in ("[1, 2]", "not json", '"text"'):
        with pytest.raises(ValueError):
            _read_chunk(garbage, partials)
    # Chunks without choices (usage, keep-alive) or with odd shapes carry nothing.
    assert _read_chunk('{"choices": []}', partials) == (None, None)
    assert _read_chunk('{"usage": {"total_tokens": 3}}', partials) == (None, None)
    assert _read_chunk('{"choices": [{"delta": null, "finish_reason": 7}]}', partials) == (
        None,
        None,
    )
    assert not partials


# --------------------------------------------------------------------------- the openai package

# The reference behaviour: what the `openai` package makes of the same server answers. Our client
# speaks the protocol itself (for speed), and must come to the same outcome for each.
REFERENCE_SCRIPTS = {
    "text": Script(tokens=["Good", " morning", "."]),
    "tool_calls": Script(
        tokens=["Goodbye."],
        tool_calls=[
            FakeToolCall("end_call", {"reason": "done"}, id="call_1"),
            FakeToolCall("transfer_call", {}, fragments=1),
        ],
    ),
    "http_500": Script(status=500),
    "http_429": Script(status=429, error_type="rate_limit_error"),
    "stream_cut": Script(tokens=["a", "b", "c"], cut_after_tokens=1),
    "silent": Script(hang=True),
    "stalled": Script(tokens=["a", "b"], stall_after_tokens=1),
}


async def _reference_outcome(base_url: str) -> tuple[list[str], list[str], str | None, Any]:
    """(texts, tool names, finish reason, error kind) as the openai package sees the stream."""
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=0.5)
    texts: list[str] = []
    tools: list[str] = []
    finish: str | None = None
    error: Any = None
    try:
        stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    texts.append(choice.delta.content)
                for fragment in choice.delta.tool_calls or ():
                    if fragment.function is not None and fragment.function.name:
                        tools.append(fragment.function.name)
                finish = choice.finish_reason or finish
    except openai.APITimeoutError:
        error = "timeout"
    except openai.APIStatusError as exc:
        error = ("status", exc.status_code)
    except Exception:
        error = "error"
    finally:
        await sdk.close()
    return texts, tools, finish, error


async def _our_outcome(base_url: str) -> tuple[list[str], list[str], str | None, Any]:
    ours = LLMClient(base_url=base_url, api_key="sk-test", default_model="m", timeout_seconds=0.5)
    texts: list[str] = []
    tools: list[str] = []
    finish: str | None = None
    error: Any = None
    try:
        async for event in ours.stream_chat(MESSAGES):
            if isinstance(event, TextDelta):
                texts.append(event.text)
            elif isinstance(event, ToolCall):
                tools.append(event.name)
            else:
                finish = event.finish_reason
    except LLMTimeout:
        error = "timeout"
    except LLMError as exc:
        error = ("status", exc.status_code) if exc.status_code is not None else "error"
    finally:
        await ours.aclose()
    return texts, tools, finish, error


@pytest.mark.parametrize("case", REFERENCE_SCRIPTS)
async def test_same_outcome_as_the_openai_package(llm: FakeLLM, case: str) -> None:
    llm.push(REFERENCE_SCRIPTS[case])
    reference = await _reference_outcome(llm.base_url)
    llm.push(REFERENCE_SCRIPTS[case])
    assert await _our_outcome(llm.base_url) == reference


# --------------------------------------------------------------------------- complete()


async def test_complete_returns_text(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script.text("The caller booked a visit for Monday."))

    text = await client.complete(MESSAGES, temperature=0.0, max_tokens=200)

    assert text == "The caller booked a visit for Monday."
    [request] = llm.requests
    assert not request.get("stream")
    assert request["max_tokens"] == 200
    assert request["temperature"] == 0.0
    assert request["model"] == "fake-default"


async def test_complete_has_total_timeout_and_maps_errors(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script(first_token_delay=2.0), Script(status=503))

    started = time.perf_counter()
    with pytest.raises(LLMTimeout):
        await client.complete(MESSAGES, timeout_seconds=0.3)
    assert time.perf_counter() - started < 1.5

    with pytest.raises(LLMError) as info:
        await client.complete(MESSAGES)
    assert info.value.status_code == 503


# --------------------------------------------------------------------------- concurrency


async def test_cancelling_consumer_closes_stream_promptly(llm: FakeLLM, client: LLMClient) -> None:
    llm.push(Script(tokens=[f"w{i} " for i in range(50)], inter_token_delay=0.1))
    got_first = asyncio.Event()
    received: list[Any] = []

    async def consume() -> None:
        async for event in client.stream_chat(MESSAGES):
            received.append(event)
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 2)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 0.2
    # The server saw the disconnect: the HTTP stream was really closed, not abandoned.
    assert await wait_until(lambda: llm.in_flight == 0, timeout=0.5)
    assert len(received) < 5

    # The pool is still usable afterwards.
    events = await collect(client)
    assert events[-1] == StreamEnd("stop")


async def test_slow_stream_does_not_delay_fast_stream(llm: FakeLLM, client: LLMClient) -> None:
    def responder(request: dict[str, Any]) -> Script:
        if request["messages"][-1]["content"] == "slow":
            return Script(tokens=["slow"], first_token_delay=1.0)
        return Script(tokens=["fast"])

    llm.responder = responder
    finished: list[str] = []
    started = time.perf_counter()
    elapsed: dict[str, float] = {}

    async def run(label: str) -> None:
        events = await collect(client, [{"role": "user", "content": label}])
        assert events == [TextDelta(label), StreamEnd("stop")]
        finished.append(label)
        elapsed[label] = time.perf_counter() - started

    await asyncio.gather(run("slow"), run("fast"))

    assert finished == ["fast", "slow"]
    assert elapsed["fast"] < 0.5
    assert elapsed["slow"] >= 1.0


def test_tool_schema_shape() -> None:
    params = {"type": "object", "properties": {}}
    assert tool_schema("noop", "Does nothing.", params) == {
        "type": "function",
        "function": {"name": "noop", "description": "Does nothing.", "parameters": params},
    }


async def test_the_shared_client_is_closed_on_shutdown(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config.settings import settings
    from app.llm import agent

    monkeypatch.setattr(settings, "LLM_BASE_URL", llm.base_url)
    monkeypatch.setattr(settings, "LLM_MODEL", "m")
    agent.reset_llm_client()
    shared = agent.get_llm_client()
    assert await collect(shared)
    await agent.close_llm_client()
    assert shared._client is not None and shared._client.is_closed
    assert agent.get_llm_client() is not shared  # the next use opens a new pool
    await agent.close_llm_client()
