"""A real OpenAI-compatible chat-completions server for tests and benchmarks.

It listens on 127.0.0.1 (ephemeral port) in a background thread, so any
OpenAI-compatible client (``openai.AsyncOpenAI``, our ``LLMClient``) talks to it
over real HTTP, real SSE framing and real sockets::

    with FakeLLM() as llm:
        llm.push(Script(tokens=["Hi", " there"], first_token_delay=0.2))
        client = LLMClient(base_url=llm.base_url, api_key=None,
                           default_model="fake", timeout_seconds=2)
        ...
        assert llm.requests[-1]["messages"][-1]["content"] == "hello"

Served: ``POST /v1/chat/completions`` with ``"stream": true`` (SSE
``data: {chunk}\\n\\n`` lines, then ``data: [DONE]``) or without (one JSON body).
Chunks and bodies have OpenAI's shape (``id``, ``object``, ``created``, ``model``,
``choices[0].delta`` / ``choices[0].message``, ``finish_reason``).

What each request gets is decided, in this order, by: the next queued
:class:`Script` (``push``), then ``responder(request_json)`` if it returns a
Script, then ``default``. Delays are asyncio sleeps on the server's event loop, so
a slow response never delays a concurrent one. A request that is hanging or
sleeping stops as soon as its client disconnects or the server is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["FakeLLM", "FakeToolCall", "Script"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PATHS = {"/v1/chat/completions", "/chat/completions"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call the fake model emits; its JSON arguments are streamed in ``fragments`` parts.

    ``raw_arguments``, when set, is sent verbatim instead of ``json.dumps(arguments)``
    (to simulate a model producing invalid JSON).
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    fragments: int = 3
    raw_arguments: str | None = None

    def arguments_json(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(self.arguments)


@dataclass
class Script:
    """How the fake answers one request.

    * ``tokens``: content fragments, streamed one SSE chunk each (joined when not streaming).
    * ``first_token_delay``: seconds between receiving the request and the first chunk
      (the HTTP headers are sent immediately). When not streaming: before the body.
    * ``inter_token_delay``: seconds between consecutive chunks (tokens and tool fragments).
    * ``tool_call`` / ``tool_calls``: tool calls emitted after the tokens, each with an
      id/name chunk followed by argument fragments, like OpenAI does.
      ``tool_call`` also accepts a ``(name, arguments)`` tuple.
    * ``status``: an HTTP status >= 400 answers with an OpenAI-style error body instead.
    * ``hang``: never send anything (not even headers) until the client goes away.
    * ``stall_after_tokens``: send this many tokens, then go silent without ending.
    * ``cut_after_tokens``: send this many tokens, then drop the connection mid-stream.
    * ``finish_reason``: defaults to ``"tool_calls"`` when tool calls are emitted, else
      ``"stop"``.
    """

    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " fake", "."])
    first_token_delay: float = 0.0
    inter_token_delay: float = 0.0
    tool_call: FakeToolCall | tuple[str, dict[str, Any]] | None = None
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    status: int = 200
    error_message: str = "The server had an error while processing your request."
    error_type: str | None = None
    hang: bool = False
    stall_after_tokens: int | None = None
    cut_after_tokens: int | None = None
    finish_reason: str | None = None

    @classmethod
    def text(cls, text: str, **kwargs: Any) -> Script:
        """A script streaming ``text`` word by word (spaces kept with the following word)."""
        return cls(tokens=re.findall(r"\s*\S+|\s+$", text), **kwargs)

    def all_tool_calls(self) -> list[FakeToolCall]:
        calls = list(self.tool_calls)
        if isinstance(self.tool_call, FakeToolCall):
            calls.insert(0, self.tool_call)
        elif self.tool_call is not None:
            name, arguments = self.tool_call
            calls.insert(0, FakeToolCall(name=name, arguments=dict(arguments)))
        return calls

    def resolved_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.all_tool_calls() else "stop"


Responder = Callable[[dict[str, Any]], Script | None]


def _split(text: str, parts: int) -> list[str]:
    """Cut ``text`` into ``parts`` non-empty pieces (fewer if it is shorter)."""
    if not text:
        return [""]
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _RequestState:
    """Per-request abort signal: set when the client disconnects or the server stops."""

    def __init__(self) -> None:
        self.abort = asyncio.Event()
        self.disconnected = False

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if aborted meanwhile (the response must stop)."""
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self.abort.wait()
            except TimeoutError:
                return True
        return not self.abort.is_set()


class FakeLLM:
    """OpenAI-compatible fake server; see the module docstring.

    ``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>``
    (others get a 401 with OpenAI's ``invalid_api_key`` error). Recorded data
    (``requests``, ``request_headers``, ``first_token_sent_at``) is thread-safe to
    read from the test thread and returned as copies.
    """

    def __init__(
        self,
        *,
        default: Script | None = None,
        responder: Responder | None = None,
        api_key: str | None = None,
    ) -> None:
        self.default = default or Script()
        self.responder = responder
        self.api_key = api_key
        self._lock = threading.Lock()
        self._scripts: deque[Script] = deque()
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._client_ports: list[int | None] = []
        self._first_token_sent_at: list[float] = []
        # First content token text -> when it was written, for matching concurrent streams.
        self._first_token_by_text: dict[str, float] = {}
        self._counter = 0
        self._active: set[_RequestState] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the value to give an OpenAI client as base URL."""
        if self.port is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *scripts: Script) -> None:
        """Queue scripts; each one answers exactly one upcoming request, in order."""
        with self._lock:
            self._scripts.extend(scripts)

    def reset(self) -> None:
        """Forget queued scripts and everything recorded so far."""
        with self._lock:
            self._scripts.clear()
            self._requests.clear()
            self._headers.clear()
            self._client_ports.clear()
            self._first_token_sent_at.clear()
            self._first_token_by_text.clear()

    @property
    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    @property
    def in_flight(self) -> int:
        """Responses still being produced (drops when a client disconnects mid-stream)."""
        return len(self._active)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of all requests received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """Headers (lower-cased names) of all requests, parallel to ``requests``."""
        with self._lock:
            return list(self._headers)

    @property
    def client_ports(self) -> list[int | None]:
        """The client's TCP port of each request, parallel to ``requests``: one port for two
        requests means the client kept its connection alive between them."""
        with self._lock:
            return list(self._client_ports)

    @property
    def first_token_sent_at(self) -> list[float]:
        """``time.perf_counter()`` right after the first content token of each response
        was handed to the socket, in the order those writes happened."""
        with self._lock:
            return list(self._first_token_sent_at)

    def first_token_time(self, token: str) -> float | None:
        """When a streamed response whose first token is `token` wrote it (perf_counter)."""
        with self._lock:
            return self._first_token_by_text.get(token)

    def start(self) -> FakeLLM:
        """Start serving; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeLLM already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Accepted sockets inherit TCP_NODELAY on Linux: without it every small SSE write waits on
        # the client's delayed ACK (~40 ms), which real providers do not add.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            loop="asyncio",
            interface="asgi3",
            lifespan="on",
            ws="none",
            # Don't let uvicorn reconfigure the test process's logging.
            log_config=None,
            log_level="warning",
            access_log=False,
            # Backstop only: stop() aborts in-flight responses first.
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        server = self._server

        def serve() -> None:
            # uvicorn reports a failed startup with sys.exit(); turn it into a plain
            # return so start() raises instead of the thread dying with SystemExit.
            with contextlib.suppress(SystemExit):
                server.run(sockets=[sock])

        self._thread = threading.Thread(target=serve, name="fake-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                sock.close()
                self._server = self._thread = None
                raise RuntimeError("FakeLLM server failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Abort in-flight responses, shut the server down and join its thread."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already stopped
                loop.call_soon_threadsafe(self._abort_all)
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = self._loop = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ server side

    def _abort_all(self) -> None:
        for state in list(self._active):
            state.abort.set()

    def _next_script(self, body: dict[str, Any]) -> Script:
        with self._lock:
            if self._scripts:
                return self._scripts.popleft()
        if self.responder is not None:
            script = self.responder(body)
            if script is not None:
                return script
        return self.default

    def _mark_first_token(self, token: str | None = None) -> None:
        now = time.perf_counter()
        with self._lock:
            self._first_token_sent_at.append(now)
            if token is not None:
                self._first_token_by_text[token] = now

    async def _app(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/_fake/first-tokens":
            # For a benchmark running this server in another process: first token -> the
            # perf_counter (CLOCK_MONOTONIC, comparable across processes) it was written at.
            with self._lock:
                await self._send_json(send, 200, dict(self._first_token_by_text))
            return
        if scope["method"] != "POST" or scope["path"].rstrip("/") not in _PATHS:
            await self._send_error(send, 404, f"Unknown route {scope['path']}", "not_found_error")
            return
        raw = await self._read_body(receive)
        if raw is None:
            return  # client left before sending its body
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            await self._send_error(send, 400, "Request body is not a JSON object.")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self._requests.append(body)
            self._headers.append(headers)
            self._client_ports.append((scope.get("client") or (None, None))[1])
            self._counter += 1
            completion_id = f"chatcmpl-fake{self._counter:06d}"

        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await self._send_error(
                send, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
            return

        script = self._next_script(body)
        state = _RequestState()
        self._active.add(state)
        watcher = asyncio.create_task(self._watch_disconnect(receive, state))
        try:
            if script.hang:
                await state.abort.wait()
                if not state.disconnected:
                    await self._send_error(send, 503, "Server shutting down.")
            elif script.status >= 400:
                if await state.pause(script.first_token_delay):
                    await self._send_error(
                        send, script.status, script.error_message, script.error_type
                    )
            elif body.get("stream"):
                await self._stream(send, body, script, state, completion_id)
            else:
                await self._complete(send, body, script, state, completion_id)
        finally:
            watcher.cancel()
            self._active.discard(state)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _watch_disconnect(receive: Receive, state: _RequestState) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.disconnected = True
                state.abort.set()
                return

    @staticmethod
    async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _send_error(
        self,
        send: Send,
        status: int,
        message: str,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        kind = error_type or _ERROR_TYPES.get(status, "server_error")
        error = {"message": message, "type": kind, "param": None, "code": code}
        await self._send_json(send, status, {"error": error})

    async def _stream(
        self,
        send: Send,
        body: dict[str, Any],
        script: Script,
        state: _RequestState,
        completion_id: str,
    ) -> None:
        model = str(body.get("model") or "fake-model")
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                }
            )

        async def finish() -> None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        # Each entry is one write; the first one carries the role chunk like OpenAI's.
        writes: list[tuple[bytes, bool]] = []  # (payload, is_content_token)
        for token in script.tokens:
            writes.append((chunk({"content": token}), True))
        for index, call in enumerate(script.all_tool_calls()):
            call_id = call.id or f"call_fake{index}_{completion_id[-6:]}"
            writes.append(
                (
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": call_id,
                                    "type": "function",
                                    "function": {"name": call.name, "arguments": ""},
                                }
                            ]
                        }
                    ),
                    False,
                )
            )
            for piece in _split(call.arguments_json(), call.fragments):
                fragment = {"index": index, "function": {"arguments": piece}}
                writes.append((chunk({"tool_calls": [fragment]}), False))

        role = chunk({"role": "assistant", "content": ""})
        if not await state.pause(script.first_token_delay):
            await finish()
            return
        first_token_marked = False
        tokens_sent = 0
        for position, (payload, is_token) in enumerate(writes):
            if position > 0 and not await state.pause(script.inter_token_delay):
                await finish()
                return
            if script.stall_after_tokens is not None and tokens_sent >= script.stall_after_tokens:
                await state.abort.wait()
                await finish()
                return
            if script.cut_after_tokens is not None and tokens_sent >= script.cut_after_tokens:
                # The server drops the connection: the chunked body never ends.
                raise ConnectionResetError("fake LLM: stream cut")
            data = role + payload if position == 0 else payload
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if is_token:
                tokens_sent += 1
                if not first_token_marked:
                    first_token_marked = True
                    self._mark_first_token(script.tokens[0] if script.tokens else None)
        if not writes:
            await send({"type": "http.response.body", "body": role, "more_body": True})

        final = chunk({}, script.resolved_finish_reason()) + _sse("[DONE]")
        await send({"type": "http.response.body", "body": final, "more_body": False})

    async def _complete(
        self,
        send: Send,
        body: dict[str, Any],
        script: Script,
        state: _RequestState,
        completion_id: str,
    ) -> None:
        if not await state.pause(script.first_token_delay):
            if not state.disconnected:
                await self._send_error(send, 503, "Server shutting down.")
            return
        text = "".join(script.tokens)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        calls = script.all_tool_calls()
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.id or f"call_fake{index}_{completion_id[-6:]}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for index, call in enumerate(calls)
            ]
        completion_tokens = len(script.tokens)
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or "fake-model"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": script.resolved_finish_reason(),
                }
            ],
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": completion_tokens,
                "total_tokens": completion_tokens,
            },
        }
        await self._send_json(send, 200, payload)
        if text:
            self._mark_first_token()
