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
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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

# Local servers (vLLM, Ollama) accept any key, but the SDK refuses an empty one and
# would otherwise fall back to OPENAI_API_KEY from the environment, which must never
# be sent to a third-party endpoint.
_PLACEHOLDER_API_KEY = "not-needed"


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
    """The chat-completions JSON body, built directly.

    `client.chat.completions.create` first walks every message through the SDK's typed
    transform (about 0.4 ms of event-loop time per message here: 16 ms for a 40-message call,
    during which every other call's tokens on this process wait). Our messages are already
    plain JSON, so the request goes through the SDK's generic `post` instead.
    """
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


def _translate_error(exc: openai.OpenAIError) -> LLMError:
    """Map an SDK exception to our error types with a message safe to log or show."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeout("LLM request timed out")
    if isinstance(exc, openai.APIStatusError):
        # Only the machine-readable error code is kept: provider messages can echo
        # parts of the request (including masked keys) and can be very long.
        detail = ""
        body = exc.body
        if isinstance(body, dict):
            code = body.get("code") or body.get("type")
            if isinstance(code, str) and 0 < len(code) <= 64:
                detail = f" ({code})"
        return LLMError(
            f"LLM provider returned HTTP {exc.status_code}{detail}", status_code=exc.status_code
        )
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("could not reach the LLM provider")
    if isinstance(exc, openai.APIError):
        return LLMError("the LLM provider reported an error")
    return LLMError(f"LLM client error ({type(exc).__name__})")


# --------------------------------------------------------------------------- client


class LLMClient:
    """Chat-completions client for one provider endpoint.

    One instance owns one ``AsyncOpenAI`` (and therefore one HTTP connection pool);
    share it between calls and close it with :meth:`aclose` on shutdown.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        default_model: str | None,
        timeout_seconds: float,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._base_url = (base_url or "").strip() or None
        self._default_model = (default_model or "").strip() or None
        self._timeout = float(timeout_seconds)
        self._client: AsyncOpenAI | None = None
        if self._base_url is not None:
            self._client = AsyncOpenAI(
                base_url=self._base_url,
                api_key=api_key or _PLACEHOLDER_API_KEY,
                # A retry would double the silence the caller hears; the call flow
                # handles failures itself with a spoken fallback.
                max_retries=0,
                # Transport-level backstop; the asyncio deadlines below are the real
                # contract (httpx's read timeout is per socket read, not per chunk).
                timeout=self._timeout,
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

    def _resolve(self, model: str | None) -> tuple[AsyncOpenAI, str]:
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
        * :class:`LLMError` for any HTTP, connection or protocol failure.

        The HTTP response is closed before :class:`StreamEnd` is yielded, and also
        when the consuming task is cancelled (barge-in) or the generator is closed
        early. Consumers that may stop iterating without being cancelled should wrap
        the generator in ``contextlib.aclosing`` so the connection is released at once
        rather than when the generator is garbage-collected.
        """
        client, model_name = self._resolve(model)
        loop = asyncio.get_running_loop()
        first_chunk_deadline = loop.time() + self._timeout

        try:
            # The deadline also covers connecting and waiting for response headers:
            # a provider that accepts the request and then says nothing must not
            # stall the turn.
            async with asyncio.timeout_at(first_chunk_deadline):
                stream = await client.post(
                    "/chat/completions",
                    body=_request_body(model_name, messages, temperature, max_tokens, tools, True),
                    cast_to=ChatCompletionChunk,
                    stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk],
                )
        except TimeoutError:
            raise LLMTimeout(f"LLM sent nothing within {self._timeout:g} s") from None
        except openai.OpenAIError as exc:
            raise _translate_error(exc) from exc

        finish_reason: str | None = None
        partials: dict[int, _PartialToolCall] = {}
        # ``async with`` closes the HTTP response on every exit path, including
        # CancelledError and GeneratorExit, so an interrupted turn frees its socket.
        async with stream:
            deadline = first_chunk_deadline
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise LLMTimeout(
                        f"LLM stream stalled for more than {self._timeout:g} s"
                    ) from None
                except openai.OpenAIError as exc:
                    raise _translate_error(exc) from exc
                except ValueError as exc:
                    # Malformed SSE payload (json.JSONDecodeError) from a non-conforming server.
                    raise LLMError("malformed response from the LLM provider") from exc
                deadline = loop.time() + self._timeout

                # Usage-only, keep-alive and filter-report chunks carry no choices (some
                # servers omit the field entirely); n is always 1.
                choices = getattr(chunk, "choices", None) or ()
                for choice in choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        yield TextDelta(delta.content)
                    for fragment in delta.tool_calls or ():
                        partial = partials.setdefault(fragment.index, _PartialToolCall())
                        if fragment.id:
                            partial.id = fragment.id
                        function = fragment.function
                        if function is not None:
                            if function.name:
                                partial.name += function.name
                            if function.arguments:
                                partial.argument_parts.append(function.arguments)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                        # Hand the calls over now rather than after [DONE]: some
                        # servers keep the stream open for a trailing usage chunk.
                        for call in _drain_tool_calls(partials):
                            yield call

            # Servers that never report a finish reason (or report "stop" with tool
            # calls, as some local runtimes do) still get their calls delivered.
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
        try:
            async with asyncio.timeout(limit):
                response = await client.post(
                    "/chat/completions",
                    body=_request_body(model_name, messages, temperature, max_tokens, None, False),
                    cast_to=ChatCompletion,
                    options={"timeout": limit},
                )
        except TimeoutError:
            raise LLMTimeout(f"LLM did not answer within {limit:g} s") from None
        except openai.OpenAIError as exc:
            raise _translate_error(exc) from exc
        except ValueError as exc:
            raise LLMError("malformed response from the LLM provider") from exc
        if not response.choices:
            raise LLMError("LLM response contained no choices")
        return response.choices[0].message.content or ""

    async def aclose(self) -> None:
        """Close the connection pool. The client must not be used afterwards."""
        if self._client is not None:
            await self._client.close()
