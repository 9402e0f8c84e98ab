"""Streaming client for OpenAI-compatible chat-completions endpoints.

The same code talks to OpenAI, Groq, vLLM, Ollama, LM Studio... because they all
speak ``POST {base_url}/chat/completions`` with server-sent events. Everything is
configured through constructor parameters so a tenant-specific client can be built
without touching global settings.

Latency is the main design constraint: a caller is waiting on the phone, so
text deltas are handed over the moment they arrive, no request is ever retried,
and silence from the provider is turned into :class:`LLMTimeout` quickly so the
call flow can say a fallback phrase instead of leaving dead air.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, SSEError, aconnect_sse

__all__ = [
    "LLMClient",
    "LLMError",
    "LLMEvent",
    "LLMNotConfigured",
    "LLMTimeout",
    "StreamEnd",
    "TextDelta",
    "ToolCall",
    "tool_schema",
]

# Local servers (vLLM, Ollama) accept any key; a placeholder keeps the header well-formed, and
# nothing is ever read from the environment (OPENAI_API_KEY must never reach a third party).
_PLACEHOLDER_API_KEY = "not-needed"
# An error body is read for its error code only; a provider's page of HTML is not read whole.
_MAX_ERROR_BODY = 16 * 1024
# Connections kept to the provider when the caller does not size the pool (a live call holds at
# most one stream at a time, plus its post-call summary).
DEFAULT_MAX_CONNECTIONS = 100


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A fragment of assistant text, in the order the provider produced it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool (function) call requested by the model.

    ``arguments`` is the parsed JSON object; it is ``{}`` when the model produced
    invalid JSON or something other than an object, so callers never have to parse.
    """

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Last event of every successful stream; ``finish_reason`` as reported by the provider."""

    finish_reason: str | None


LLMEvent = TextDelta | ToolCall | StreamEnd


# --------------------------------------------------------------------------- errors


class LLMError(Exception):
    """The LLM request failed. The message is short and never contains credentials."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LLMTimeout(LLMError):
    """The provider did not send anything within the configured timeout."""


class LLMNotConfigured(LLMError):
    """No base URL or no model is configured, so no request can be made."""


# --------------------------------------------------------------------------- helpers


def _request_body(
    model: str,
    messages: list[dict[str, Any]],
    temperature: float | None,
    max_tokens: int | None,
    tools: list[dict[str, Any]] | None,
    stream: bool,
) -> dict[str, Any]:
    """The chat-completions JSON body (our messages and tools are already plain JSON)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if tools:
        body["tools"] = tools
    return body


def tool_schema(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Build a chat-completions tool definition.

    ``parameters`` is a JSON-Schema object describing the function arguments.
    The result is ``{"type": "function", "function": {name, description, parameters}}``.
    """
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


@dataclass(slots=True)
class _PartialToolCall:
    """Tool-call fragments collected for one ``index`` across stream chunks."""

    id: str | None = None
    name: str = ""
    argument_parts: list[str] = field(default_factory=list)

    def build(self) -> ToolCall:
        return ToolCall(
            # Some compatible servers omit the id; the conversation still needs one
            # to pair the tool result message with the call.
            id=self.id or f"call_{uuid.uuid4().hex[:24]}",
            name=self.name,
            arguments=_parse_arguments("".join(self.argument_parts)),
        )


def _parse_arguments(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _drain_tool_calls(partials: dict[int, _PartialToolCall]) -> list[ToolCall]:
    """Finish the pending tool calls in index order and forget them."""
    # A call without a name cannot be dispatched to anything, so it is dropped.
    calls = [partials[index].build() for index in sorted(partials) if partials[index].name]
    partials.clear()
    return calls


class _StatusError(Exception):
    """The provider answered with an HTTP error status (translated by `_translate_error`)."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.body = body


def _error_code(body: bytes) -> str | None:
    """The machine-readable code of an OpenAI-style error body (`{"error": {"code"|"type"}}`)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error", data) if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return code if isinstance(code, str) and 0 < len(code) <= 64 else None


def _translate_error(exc: Exception) -> LLMError:
    """Map a transport or protocol failure to our error types with a message safe to log or show.

    The same outcomes as the `openai` package's exceptions (tests/unit/test_llm_client.py runs
    both against one server): timeout, HTTP status with its code, unreachable, malformed.
    """
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeout("LLM request timed out")
    if isinstance(exc, _StatusError):
        # Only the machine-readable error code is kept: provider messages can echo parts of
        # the request (including masked keys) and can be very long.
        code = _error_code(exc.body)
        detail = f" ({code})" if code else ""
        return LLMError(
            f"LLM provider returned HTTP {exc.status_code}{detail}", status_code=exc.status_code
        )
    if isinstance(exc, ValueError | SSEError | httpx.DecodingError):
        return LLMError("malformed response from the LLM provider")
    if isinstance(exc, httpx.TransportError):
        # Refused, reset, or the stream cut mid-answer (an incomplete chunked body).
        return LLMError("could not reach the LLM provider")
    return LLMError(f"LLM client error ({type(exc).__name__})")


def _unlink(response: httpx.Response) -> None:
    """A closed response, freed by reference counting: httpx's response and the stream wrapper it
    reads from refer to each other, and each cycle left for the collector lengthens the full
    collections that stall every live call (docs/scaling.md)."""
    response.stream = httpx.ByteStream(b"")


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        body = b""
        async for part in response.aiter_bytes():
            body += part
            if len(body) >= _MAX_ERROR_BODY:
                break
        raise _StatusError(response.status_code, body[:_MAX_ERROR_BODY])


def _stream_error(data: Mapping[str, Any]) -> LLMError | None:
    """An error reported inside the stream (`data: {"error": …}`), as OpenAI does mid-answer."""
    if not data.get("error"):
        return None
    error = data["error"]
    code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    detail = f" ({code})" if isinstance(code, str) and 0 < len(code) <= 64 else ""
    return LLMError(f"the LLM provider reported an error{detail}")


def _read_chunk(data: str, partials: dict[int, _PartialToolCall]) -> tuple[str | None, str | None]:
    """One streamed chunk: its text and finish reason; tool-call fragments go to `partials`.

    Usage-only, keep-alive and filter-report chunks carry no choices (some servers omit the
    field entirely); n is always 1. Raises ValueError on a payload that is not a JSON object,
    LLMError on an error the provider reports inside the stream.
    """
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("chunk is not a JSON object")
    error = _stream_error(chunk)
    if error is not None:
        raise error
    choices = chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return None, None
    delta = choice.get("delta")
    content: str | None = None
    if isinstance(delta, dict):
        text = delta.get("content")
        content = text if isinstance(text, str) else None
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict):
                _add_fragment(partials, fragment)
    reason = choice.get("finish_reason")
    return content, reason if isinstance(reason, str) else None


def _add_fragment(partials: dict[int, _PartialToolCall], fragment: dict[str, Any]) -> None:
    index = fragment.get("index")
    partial = partials.setdefault(index if isinstance(index, int) else 0, _PartialToolCall())
    if isinstance(fragment.get("id"), str) and fragment["id"]:
        partial.id = fragment["id"]
    function = fragment.get("function")
    if isinstance(function, dict):
        if isinstance(function.get("name"), str):
            partial.name += function["name"]
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            partial.argument_parts.append(function["arguments"])


# What a request or a stream can fail with below our own types (see `_translate_error`).
_TRANSPORT_ERRORS = (httpx.HTTPError, httpx.StreamError, _StatusError, SSEError, ValueError)


# --------------------------------------------------------------------------- client


class LLMClient:
    """Chat-completions client for one provider endpoint.

    The OpenAI-compatible protocol spoken directly: JSON requests and server-sent events
    (httpx-sse) over one shared `httpx.AsyncClient` whose transport is aiohttp's connection pool.
    Measured (docs/scaling.md): the `openai` package built a typed model per streamed chunk,
    about 30 % of the event loop with 50 live calls; here a chunk is one `json.loads`. httpx's
    own pool (httpcore) scans every connection for each idle one on every request, O(pool²):
    26 ms of CPU per turn at 200 concurrent streams; with aiohttp's pool and C parser a turn
    costs 4–5 ms (httpx2's pool: 7–8 ms). Share one instance between calls and close it with
    :meth:`aclose` on shutdown.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        default_model: str | None,
        timeout_seconds: float,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._base_url = (base_url or "").strip() or None
        self._default_model = (default_model or "").strip() or None
        self._timeout = float(timeout_seconds)
        self._client: httpx.AsyncClient | None = None
        if self._base_url is not None:
            self._client = httpx.AsyncClient(
                # "…/v1" + "chat/completions": a relative path is joined under the base path.
                base_url=self._base_url.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {api_key or _PLACEHOLDER_API_KEY}"},
                # Transport-level backstop; the asyncio deadlines below are the real contract
                # (the transport's read timeout is per socket read, not per chunk).
                timeout=self._timeout,
                # Every live call may stream at once: kept-alive connections for all of them, so
                # a turn never pays for a new connection. No retries (none are configured): a
                # retry would double the silence the caller hears.
                transport=AiohttpTransport(
                    limits=httpx.Limits(
                        max_connections=max_connections, max_keepalive_connections=max_connections
                    )
                ),
            )

    @property
    def configured(self) -> bool:
        """True when a base URL and a default model are set (an API key is optional)."""
        return self._client is not None and self._default_model is not None

    @property
    def default_model(self) -> str | None:
        """The model used when a call does not name one."""
        return self._default_model

    @property
    def timeout_seconds(self) -> float:
        """Maximum silence tolerated before :class:`LLMTimeout` is raised."""
        return self._timeout

    def _resolve(self, model: str | None) -> tuple[httpx.AsyncClient, str]:
        chosen = model or self._default_model
        if self._client is None or not chosen:
            raise LLMNotConfigured("LLM is not configured (base URL and model are required)")
        return self._client, chosen

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[TextDelta | ToolCall | StreamEnd]:
        """Stream one assistant turn.

        Yields, in order: a :class:`TextDelta` for every non-empty content fragment
        as soon as it is received (nothing is buffered); each :class:`ToolCall` once
        its arguments are complete (when the provider reports a finish reason, or at
        the end of the stream); and exactly one :class:`StreamEnd` last.

        Raises (on iteration, since this is an async generator):

        * :class:`LLMNotConfigured` when no base URL or model is available;
        * :class:`LLMTimeout` when the first chunk does not arrive within
          ``timeout_seconds`` of the call, or when the stream then stays silent for
          more than ``timeout_seconds`` between two chunks;
        * :class:`LLMError` for any HTTP, connection or protocol failure, including a
          stream cut before its end.

        The HTTP response is closed before :class:`StreamEnd` is yielded, and also
        when the consuming task is cancelled (barge-in) or the generator is closed
        early. Consumers that may stop iterating without being cancelled should wrap
        the generator in ``contextlib.aclosing`` so the connection is released at once
        rather than when the generator is garbage-collected.
        """
        client, model_name = self._resolve(model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        body = _request_body(model_name, messages, temperature, max_tokens, tools, True)
        started = done = False
        finish_reason: str | None = None
        partials: dict[int, _PartialToolCall] = {}
        response: httpx.Response | None = None
        try:
            # ``AsyncExitStack`` closes the event iterator and the HTTP response on every exit
            # path, including CancelledError and GeneratorExit, so an interrupted turn frees
            # its socket.
            async with contextlib.AsyncExitStack() as stack:
                # The first deadline also covers connecting and waiting for response headers:
                # a provider that accepts the request and then says nothing must not stall it.
                async with asyncio.timeout_at(deadline):
                    source: EventSource = await stack.enter_async_context(
                        aconnect_sse(client, "POST", "chat/completions", json=body)
                    )
                    response = source.response
                    await _raise_for_status(response)
                events = source.aiter_sse()
                stack.push_async_callback(events.aclose)
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            event = await anext(events)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if done:
                            # The answer is complete; a server that keeps the stream open
                            # after [DONE] only loses its connection.
                            break
                        raise
                    started = True
                    deadline = loop.time() + self._timeout
                    if done or not event.data:
                        continue
                    if event.data.startswith("[DONE]"):
                        # Read on to the end of the body, so the connection is kept alive
                        # for the next turn instead of being closed half-read.
                        done = True
                        continue
                    content, reason = _read_chunk(event.data, partials)
                    if content:
                        yield TextDelta(content)
                    if reason:
                        finish_reason = reason
                        # Hand the calls over now rather than after [DONE]: some servers
                        # keep the stream open for a trailing usage chunk.
                        for call in _drain_tool_calls(partials):
                            yield call
        except TimeoutError:
            raise LLMTimeout(
                f"LLM stream stalled for more than {self._timeout:g} s"
                if started
                else f"LLM sent nothing within {self._timeout:g} s"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise _translate_error(exc) from exc
        finally:
            if response is not None:
                _unlink(response)

        # Servers that never report a finish reason (or report "stop" with tool calls, as
        # some local runtimes do) still get their calls delivered.
        for call in _drain_tool_calls(partials):
            yield call
        yield StreamEnd(finish_reason)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_seconds: float | None = None,
    ) -> str:
        """Run one non-streaming completion and return the assistant text ("" if none).

        Meant for work off the call's critical path (post-call summaries). The whole
        request must finish within ``timeout_seconds`` (defaults to the client's
        timeout) or :class:`LLMTimeout` is raised; other failures raise
        :class:`LLMError`, and a missing configuration :class:`LLMNotConfigured`.
        """
        client, model_name = self._resolve(model)
        limit = self._timeout if timeout_seconds is None else float(timeout_seconds)
        body = _request_body(model_name, messages, temperature, max_tokens, None, False)
        try:
            async with asyncio.timeout(limit):
                response = await client.post("chat/completions", json=body, timeout=limit)
                _unlink(response)  # read whole and closed by httpx already
                if response.status_code >= 400:
                    raise _StatusError(response.status_code, response.content[:_MAX_ERROR_BODY])
                data = response.json()
        except TimeoutError:
            raise LLMTimeout(f"LLM did not answer within {limit:g} s") from None
        except _TRANSPORT_ERRORS as exc:
            raise _translate_error(exc) from exc
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise LLMError("LLM response contained no choices")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else ""

    async def aclose(self) -> None:
        """Close the connection pool. The client must not be used afterwards."""
        if self._client is not None:
            await self._client.aclose()
