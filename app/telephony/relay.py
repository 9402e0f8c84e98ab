"""One ConversationRelay session: Twilio's WebSocket protocol between a caller and the LLM.

Twilio does the speech recognition and synthesis; this side receives JSON text frames
(`setup`, `prompt`, `interrupt`, `dtmf`, `error`) and answers with `text` tokens streamed from
the LLM as they arrive, and `end` to hang up or hand the call over for a transfer.

`RelaySession` holds all of the protocol and takes its outside world as arguments (a `send`
coroutine, the LLM client getter, the database operations, a way to run them off the event
loop), so the WebSocket route stays thin and the logic is testable.

Latency is the design constraint: the LLM stream runs as its own task so an `interrupt` cancels
it at once; transcript changes go through one per-session queue, written in the threadpool
between answers, so the event loop never waits on PostgreSQL and the transcript is in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import anyio.to_thread

from app import metrics
from app.config.settings import settings
from app.llm.agent import (
    END_CALL,
    TRANSFER_CALL,
    ConversationEntry,
    build_messages,
    build_summary_messages,
    get_llm_client,
    phone_tools,
)
from app.llm.client import LLMClient, LLMError, LLMEvent, TextDelta, ToolCall
from app.models.base import utcnow
from app.models.call import EndReason
from app.services import relay as relay_store
from app.services.relay import (
    END_REASON_OF_HANDOFF,
    AgentProfile,
    BoundCall,
    HeardTurn,
    NewTurn,
    RelayBindError,
    TranscriptChange,
    storable_text,
)
from app.services.scope import TenantScope
from app.telephony.capacity import live_calls
from app.telephony.signature import is_valid_twilio_signature, websocket_url
from app.telephony.urls import RELAY_TOKEN_PARAMETER, relay_token_matches

__all__ = [
    "APOLOGY",
    "RELAY_TOKEN_PARAMETER",
    "MAX_FRAME_CHARS",
    "RelaySession",
    "duration_limit",
    "handshake_rejection",
    "live_sessions",
]

logger = logging.getLogger("vca.relay")

# Twilio's frames are small; anything this big is not a protocol message worth parsing.
MAX_FRAME_CHARS = 64 * 1024

APOLOGY = "I'm sorry, I'm having trouble answering right now. Could you say that again?"
GOODBYE = "Thank you for calling. Goodbye!"
TRANSFER_NOTICE = "Please hold while I transfer you to a colleague."
TIME_LIMIT_GOODBYE = (
    "I'm sorry, we have reached the time limit for this call. Thank you for calling. Goodbye!"
)

# Keypad presses arrive one frame per key; waiting this long after the last one lets a caller
# type a whole number before the model answers once.
DTMF_SETTLE_SECONDS = 0.7
# How long transcript writes wait for an answer to be over before going ahead anyway.
QUIET_WAIT_SECONDS = 2.0
_DTMF_KEYS = frozenset("0123456789*#ABCDabcd")
# Held text goes out at once when it ends a sentence: the speech synthesizer's natural unit.
_SENTENCE_ENDS = frozenset(".!?")

# WebSocket close codes (RFC 6455).
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011

T = TypeVar("T")
Send = Callable[[str], Awaitable[None]]
RunSync = Callable[[Callable[[], T]], Awaitable[T]]


def live_sessions() -> int:
    """How many relay sessions this process is serving (calls on the line, or just ended)."""
    return live_calls.count()


def duration_limit(profile_seconds: int) -> float:
    """Seconds a call may last, from the profile's max_call_duration_seconds (tests patch this)."""
    return float(profile_seconds)


def handshake_rejection(headers: Mapping[str, str], path: str, query: str) -> str | None:
    """Why a WebSocket handshake must be refused, or None if Twilio really signed it.

    The signature is over the public `wss://` URL (PUBLIC_BASE_URL + path + query) with no
    parameters, as Twilio computes it for the ConversationRelay handshake.
    """
    if not settings.telephony_configured:
        return "telephony is not configured"
    url = websocket_url(settings.PUBLIC_BASE_URL or "", path)
    if query:
        url += "?" + query
    signature = headers.get("x-twilio-signature")
    if not is_valid_twilio_signature(settings.TWILIO_AUTH_TOKEN or "", url, {}, signature):
        return "missing or invalid X-Twilio-Signature"
    return None


class RelayStore(Protocol):
    """The database operations a session needs (blocking; run through `run_sync`)."""

    def bind_call(self, call_id: uuid.UUID, call_sid: str) -> BoundCall: ...

    def store_transcript(
        self, scope: TenantScope, call_id: uuid.UUID, changes: Sequence[TranscriptChange]
    ) -> None: ...

    def store_summary(self, scope: TenantScope, call_id: uuid.UUID, summary: str) -> None: ...

    def store_end_reason(
        self, scope: TenantScope, call_id: uuid.UUID, reason: EndReason
    ) -> None: ...


async def _run_in_thread(function: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(function)


@dataclass(eq=False)
class _AgentTurn:
    """An agent answer being produced: what has been sent so far and when it started."""

    received_at: float  # perf_counter() when the caller's input arrived
    parts: list[str] = field(default_factory=list)
    latency_ms: int | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    pending: list[str] = field(default_factory=list)  # text held back to share one frame
    flush: asyncio.TimerHandle | None = None
    done: bool = False  # no longer producing output
    recorded: bool = False  # added to the transcript

    @property
    def spoken(self) -> str:
        return "".join(self.parts)


class RelaySession:
    """The protocol state of one ConversationRelay WebSocket.

    Feed every text frame to `handle_message` (it never raises and returns quickly: LLM
    answers run in a task of their own); check `close_code` afterwards and close the socket
    with it when it is set; call `close()` once the socket is gone.
    """

    def __init__(
        self,
        send: Send,
        *,
        llm: Callable[[], LLMClient] = get_llm_client,
        store: RelayStore | None = None,
        run_sync: RunSync[Any] = _run_in_thread,
        dtmf_settle_seconds: float | None = None,
        coalesce_seconds: float | None = None,
        url_token: str | None = None,
    ) -> None:
        self._send_text = send
        # The token of the relay URL the socket was opened on (signed by Twilio with it): only
        # the call it was issued for may be set up on this socket.
        self.url_token = url_token
        self._llm_getter = llm
        self._store: RelayStore = store if store is not None else relay_store
        self._run_sync = run_sync
        self._dtmf_settle = dtmf_settle_seconds
        self._coalesce = (
            settings.RELAY_COALESCE_MS / 1000 if coalesce_seconds is None else coalesce_seconds
        )
        self._flushes: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

        self.call: BoundCall | None = None
        self.history: list[ConversationEntry] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended = False  # `end` sent: the agent says nothing more
        self._closed = False
        self._next_seq = 1
        self._turn: _AgentTurn | None = None
        self._last_agent: ConversationEntry | None = None
        self._digits: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self._duration_task: asyncio.Task[None] | None = None
        self._writes: asyncio.Queue[TranscriptChange] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Clear while an answer is being produced: transcript writes (threads holding the
        # interpreter lock in bursts) wait, so they never stand between the LLM and the caller.
        self._quiet = asyncio.Event()
        self._quiet.set()

    # ------------------------------------------------------------------ entry points

    @property
    def log_context(self) -> dict[str, Any]:
        if self.call is None:
            return {}
        return {"call_id": str(self.call.call_id), "tenant_id": str(self.call.scope.tenant_id)}

    async def handle_message(self, raw: str) -> None:
        """Process one text frame from Twilio. Bad frames are logged and ignored."""
        if self._closed or self.close_code is not None:
            return
        if len(raw) > MAX_FRAME_CHARS:
            logger.warning(
                "relay frame too large, ignored", extra={**self.log_context, "size": len(raw)}
            )
            return
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            logger.warning("relay frame is not JSON, ignored", extra=self.log_context)
            return
        if not isinstance(message, dict):
            logger.warning("relay frame is not a JSON object, ignored", extra=self.log_context)
            return
        kind = message.get("type")
        try:
            if self.call is None:
                if kind != "setup":
                    self._refuse(f"first message was {str(kind)[:32]!r}, not setup")
                    return
                await self._on_setup(message)
            elif kind == "prompt":
                self._on_prompt(message)
            elif kind == "interrupt":
                self._on_interrupt(message)
            elif kind == "dtmf":
                self._on_dtmf(message)
            elif kind == "error":
                description = str(message.get("description", ""))[:500]
                logger.warning(
                    "ConversationRelay reported an error",
                    extra={**self.log_context, "description": description},
                )
            elif kind == "setup":
                logger.warning("second setup message ignored", extra=self.log_context)
            else:
                logger.warning(
                    "unknown relay message type ignored",
                    extra={**self.log_context, "message_type": str(kind)[:32]},
                )
        except Exception:
            # A bug in one handler must not drop the caller.
            logger.exception("relay message handling failed", extra=self.log_context)

    def ignore_binary(self, size: int) -> None:
        """ConversationRelay sends only text frames; a binary one is logged and dropped."""
        logger.warning("binary relay frame ignored", extra={**self.log_context, "size": size})

    async def close(self) -> None:
        """The socket is gone: stop everything, finish the transcript, then summarize the call."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        if self._digits:
            # The caller typed and hung up: keep it in the transcript, nobody to answer.
            self._flush_digits(respond=False)
        turn = self._turn
        if turn is not None and not turn.done:
            self._cancel_turn(turn)
            if turn.parts:
                self._finish_turn(turn, text=turn.spoken, interrupted=True)
        if self._writer is not None:
            self._quiet.set()
            await self._writes.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        try:
            await self._summarize()
        finally:
            live_calls.discard(self)

    # ------------------------------------------------------------------ setup

    def _refuse(self, reason: str, code: int = POLICY_VIOLATION) -> None:
        logger.warning("relay session refused", extra={**self.log_context, "reason": reason})
        self.close_code = code
        self.close_reason = reason

    async def _on_setup(self, message: dict[str, Any]) -> None:
        params = message.get("customParameters")
        raw_call_id = params.get("call_id") if isinstance(params, dict) else None
        call_sid = message.get("callSid")
        if not isinstance(call_sid, str) or not call_sid:
            self._refuse("setup without callSid")
            return
        try:
            call_id = uuid.UUID(str(raw_call_id))
        except ValueError:
            self._refuse("setup without a valid call_id parameter")
            return
        if not relay_token_matches(self.url_token, call_id):
            self._refuse("the relay URL's token is not this call's")
            return
        try:
            bound = await self._run_sync(partial(self._store.bind_call, call_id, call_sid))
        except RelayBindError as exc:
            self._refuse(exc.reason)
            return
        except Exception:
            logger.exception("could not bind the relay session to its call")
            self._refuse("could not bind the call", INTERNAL_ERROR)
            return
        self.call = bound
        live_calls.add(self, bound.call_id)
        self.history = list(bound.history)
        self._next_seq = bound.next_seq
        agent_turns = [entry for entry in self.history if entry.role == "agent"]
        self._last_agent = agent_turns[-1] if agent_turns else None
        self._writer = asyncio.create_task(self._write_loop(bound))
        elapsed = (utcnow() - bound.answered_at).total_seconds()
        remaining = duration_limit(bound.profile.max_call_duration_seconds) - max(0.0, elapsed)
        self._duration_task = asyncio.create_task(self._enforce_duration(remaining))
        logger.info("relay session bound", extra=self.log_context)

    # ------------------------------------------------------------------ caller input

    def _on_prompt(self, message: dict[str, Any]) -> None:
        if self.ended:
            return
        # Partial transcripts (partialPrompts) are answered only once the utterance is complete.
        if message.get("last") is False:
            return
        text = message.get("voicePrompt")
        if not isinstance(text, str) or not text.strip():
            return
        self._on_caller_input(text.strip(), time.perf_counter())

    def _on_dtmf(self, message: dict[str, Any]) -> None:
        if self.ended:
            return
        digit = message.get("digit")
        if not isinstance(digit, str) or not digit or not set(digit) <= _DTMF_KEYS:
            logger.warning("invalid dtmf message ignored", extra=self.log_context)
            return
        self._digits.append(digit[:16])
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        self._dtmf_task = asyncio.create_task(self._settle_digits())

    async def _settle_digits(self) -> None:
        await asyncio.sleep(DTMF_SETTLE_SECONDS if self._dtmf_settle is None else self._dtmf_settle)
        self._dtmf_task = None
        if not self.ended and not self._closed:
            self._flush_digits(respond=True)

    def _flush_digits(self, *, respond: bool) -> None:
        digits = "".join(self._digits)
        self._digits.clear()
        if not digits:
            return
        text = f"The caller pressed {digits} on the keypad."
        if respond:
            self._on_caller_input(text, time.perf_counter())
        else:
            self._add_entry(ConversationEntry(role="caller", text=text))

    def _on_caller_input(self, text: str, received_at: float) -> None:
        """The caller said (or typed) something: stop the agent, record it, answer."""
        # As it will be stored, and sendable to the LLM (lone surrogates are not JSON's).
        text = storable_text(text)
        turn = self._turn
        if turn is not None and not turn.done:
            # New input without an `interrupt` (nothing was playing yet, or interruptions are
            # off): the answer in progress is obsolete. Keep what was already sent.
            self._cancel_turn(turn)
            if turn.parts:
                self._finish_turn(turn, text=turn.spoken, interrupted=True)
        if self._digits:
            # Keys typed just before speaking belong before the words, answered together.
            if self._dtmf_task is not None:
                self._dtmf_task.cancel()
                self._dtmf_task = None
            self._flush_digits(respond=False)
        self._add_entry(ConversationEntry(role="caller", text=text))
        if self.call is None:
            return
        turn = _AgentTurn(received_at=received_at)
        self._quiet.clear()
        turn.task = asyncio.create_task(self._answer(self.call, turn))
        self._turn = turn

    def _on_interrupt(self, message: dict[str, Any]) -> None:
        utterance = message.get("utteranceUntilInterrupt")
        # Without the field we know the agent was cut off, not where: keep the text.
        heard = utterance if isinstance(utterance, str) else None
        turn = self._turn
        if turn is not None and not turn.done and turn.parts:
            self._cancel_turn(turn)
            self._finish_turn(turn, text=turn.spoken if heard is None else heard, interrupted=True)
        elif self._last_agent is not None and not self._last_agent.interrupted:
            # The answer had been fully sent, but Twilio was still reading it out.
            entry = self._last_agent
            entry.text = entry.text if heard is None else heard
            entry.interrupted = True
            if entry.seq is not None:
                self._write(HeardTurn(seq=entry.seq, text=entry.text))
        logger.info(
            "caller interrupted the agent",
            extra={
                **self.log_context,
                "duration_until_interrupt_ms": _as_int(message.get("durationUntilInterruptMs")),
            },
        )

    # ------------------------------------------------------------------ agent output

    async def _answer(self, call: BoundCall, turn: _AgentTurn) -> None:
        """Stream one LLM answer to Twilio, then act on the tools it called."""
        profile = call.profile
        can_transfer = bool(profile.transfer_number)
        try:
            try:
                client = self._llm_getter()
                messages = build_messages(
                    profile.system_prompt, self.history, can_transfer=can_transfer
                )
                stream = client.stream_chat(
                    messages,
                    model=profile.llm_model,
                    temperature=profile.temperature,
                    max_tokens=profile.max_tokens,
                    tools=phone_tools(can_transfer=can_transfer),
                )
                async with contextlib.aclosing(
                    cast(AsyncGenerator[LLMEvent, None], stream)
                ) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            await self._say(turn, event.text)
                        elif isinstance(event, ToolCall):
                            turn.tool_calls.append(event)
            except LLMError as exc:
                logger.warning(
                    "LLM failed; the caller hears an apology",
                    extra={**self.log_context, "error": str(exc), "kind": type(exc).__name__},
                )
                turn.tool_calls.clear()
                await self._flush(turn)
                if not turn.parts:
                    await self._speak(turn, APOLOGY, last=True)
                    self._finish_turn(turn, text=turn.spoken, interrupted=False)
                    return
                # Cut mid-answer: what was sent is kept as an interrupted turn, and the caller
                # hears the apology after it (its own turn) rather than a sentence left hanging.
                self._finish_turn(turn, text=turn.spoken, interrupted=True)
                await self._send({"type": "text", "token": " " + APOLOGY, "last": True})
                self._add_entry(ConversationEntry(role="agent", text=APOLOGY))
                return

            await self._flush(turn)
            action = self._chosen_action(profile, turn.tool_calls)
            closing = ""
            if not turn.spoken.strip():
                # Never leave the caller in silence, whatever the model returned.
                if action is None:
                    closing = APOLOGY
                else:
                    closing = TRANSFER_NOTICE if action[0] == "transfer" else GOODBYE
            await self._speak(turn, closing, last=True)
            self._finish_turn(turn, text=turn.spoken, interrupted=False)
            if action is not None:
                await self._end(action[1])
        except asyncio.CancelledError:
            raise
        except Exception:
            # Most often the socket is gone (send failed); close() finishes the transcript.
            logger.warning("agent turn aborted", extra=self.log_context, exc_info=True)
        finally:
            if self._turn is turn:
                self._quiet.set()

    def _chosen_action(
        self, profile: AgentProfile, calls: list[ToolCall]
    ) -> tuple[str, dict[str, str]] | None:
        for call in calls:
            reason = str(call.arguments.get("reason", ""))[:200]
            if call.name == TRANSFER_CALL and profile.transfer_number:
                logger.info("agent transfers the call", extra={**self.log_context, "why": reason})
                return "transfer", {
                    "reason": "transfer",
                    "transfer_to": profile.transfer_number,
                }
            if call.name == END_CALL:
                logger.info("agent ends the call", extra={**self.log_context, "why": reason})
                return "end", {"reason": "end_call"}
            logger.warning(
                "model called an unknown tool",
                extra={**self.log_context, "tool": call.name[:64]},
            )
        return None

    async def _say(self, turn: _AgentTurn, text: str) -> None:
        """Send an answer's text: its first words at once, then phrase-sized frames.

        Frames after the first are held up to `coalesce` seconds or to a sentence's end: at
        50 tokens/s a token is 20 ms of text but about 150 ms of speech, so the synthesizer never
        waits on the hold, and a turn costs a few frames (each a write on the shared event loop)
        instead of one per token (measured: docs/scaling.md).
        """
        if self._coalesce <= 0 or not turn.parts:
            await self._speak(turn, text)
            return
        turn.pending.append(text)
        if text.rstrip()[-1:] in _SENTENCE_ENDS:
            await self._flush(turn)
        elif turn.flush is None:
            turn.flush = asyncio.get_running_loop().call_later(
                self._coalesce, self._flush_later, turn
            )

    def _flush_later(self, turn: _AgentTurn) -> None:
        turn.flush = None
        if turn.pending and not turn.done:
            task = asyncio.create_task(self._flush(turn))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, turn: _AgentTurn) -> None:
        """Send the held text now (the send lock keeps frames in order)."""
        if turn.flush is not None:
            turn.flush.cancel()
            turn.flush = None
        if turn.pending:
            text = "".join(turn.pending)
            turn.pending.clear()
            await self._speak(turn, text)

    async def _speak(self, turn: _AgentTurn, text: str, *, last: bool = False) -> None:
        await self._send({"type": "text", "token": text, "last": last})
        if turn.latency_ms is None and (text or last):
            turn.latency_ms = round((time.perf_counter() - turn.received_at) * 1000)
            metrics.AGENT_TURN_LATENCY.observe(turn.latency_ms / 1000)
        if text:
            turn.parts.append(text)

    async def _enforce_duration(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
        if self.ended or self._closed:
            return
        logger.info("call reached its maximum duration", extra=self.log_context)
        turn = self._turn
        if turn is not None and not turn.done:
            self._cancel_turn(turn)
            if turn.parts:
                self._finish_turn(turn, text=turn.spoken, interrupted=True)
        self.ended = True
        try:
            await self._send({"type": "text", "token": TIME_LIMIT_GOODBYE, "last": True})
            self._add_entry(ConversationEntry(role="agent", text=TIME_LIMIT_GOODBYE))
            await self._end({"reason": "max_duration"})
        except Exception:
            logger.warning("could not end the call at its time limit", exc_info=True)

    async def _end(self, handoff: dict[str, str]) -> None:
        """Tell Twilio to end the session; Twilio then calls the `<Connect action>` URL.

        Why the call ends is stored first, so Twilio's final status (which follows the `end`)
        finds it and the call gets that end_reason rather than `caller_hangup`.
        """
        self.ended = True
        self._cancel_timers()
        reason = END_REASON_OF_HANDOFF.get(handoff.get("reason", ""))
        call = self.call
        if reason is not None and call is not None:
            try:
                await self._run_sync(
                    partial(self._store.store_end_reason, call.scope, call.call_id, reason)
                )
            except Exception:
                logger.exception("could not store why the call ends", extra=self.log_context)
        await self._send({"type": "end", "handoffData": json.dumps(handoff)})

    async def _send(self, message: dict[str, Any]) -> None:
        # One frame at a time: the answer task, the timers and the handlers all send.
        async with self._send_lock:
            await self._send_text(json.dumps(message))

    # ------------------------------------------------------------------ bookkeeping

    def _cancel_turn(self, turn: _AgentTurn) -> None:
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        # Its CancelledError holds the task's frame, which holds the turn: no cycle for the
        # collector to find (a full collection stalls every live call).
        turn.task = None
        if turn.flush is not None:
            turn.flush.cancel()
            turn.flush = None
        turn.pending.clear()  # never sent, so never heard
        turn.done = True

    def _cancel_timers(self) -> None:
        current = asyncio.current_task()
        for task in (self._dtmf_task, self._duration_task):
            if task is not None and task is not current:
                task.cancel()
        self._dtmf_task = self._duration_task = None  # see _cancel_turn: no cycles

    def _finish_turn(self, turn: _AgentTurn, *, text: str, interrupted: bool) -> None:
        """Record an agent turn once, with what the caller heard (or was sent); a turn that
        never said anything leaves no trace."""
        turn.done = True
        if turn.recorded or not turn.parts:
            return
        turn.recorded = True
        self._add_entry(
            ConversationEntry(role="agent", text=text, interrupted=interrupted),
            latency_ms=turn.latency_ms,
        )

    def _add_entry(self, entry: ConversationEntry, *, latency_ms: int | None = None) -> None:
        entry.seq = self._next_seq
        self._next_seq += 1
        self.history.append(entry)
        if entry.role == "agent":
            self._last_agent = entry
        self._write(
            NewTurn(
                seq=entry.seq,
                role=entry.role,
                text=entry.text,
                interrupted=entry.interrupted,
                latency_ms=latency_ms,
            )
        )

    def _write(self, change: TranscriptChange) -> None:
        if self.call is not None:
            self._writes.put_nowait(change)

    async def _write_loop(self, call: BoundCall) -> None:
        """Store the transcript in order, in one transaction per quiet moment.

        Waits (bounded: an LLM that never answers must not hold the transcript back) until no
        answer is being produced, then writes everything queued so far together: a turn's
        caller and agent rows cost one trip to a thread and one transaction, and neither runs
        while an answer is on its way to the caller.
        """
        while True:
            batch = [await self._writes.get()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), QUIET_WAIT_SECONDS)
            while not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._run_sync(
                    partial(self._store.store_transcript, call.scope, call.call_id, batch)
                )
            except Exception:
                logger.exception("could not store transcript changes", extra=self.log_context)
            finally:
                for _ in batch:
                    self._writes.task_done()

    async def _summarize(self) -> None:
        """Store a short summary of a call in which the caller said something (LLM permitting)."""
        if self.call is None or not any(entry.role == "caller" for entry in self.history):
            return
        try:
            client = self._llm_getter()
            if not client.configured:
                return
            summary = await client.complete(
                build_summary_messages(self.history),
                model=self.call.profile.llm_model,
                max_tokens=200,
                timeout_seconds=max(client.timeout_seconds, 30.0),
            )
            if summary.strip():
                call = self.call
                await self._run_sync(
                    partial(self._store.store_summary, call.scope, call.call_id, summary.strip())
                )
        except Exception as exc:
            logger.warning(
                "post-call summary failed", extra={**self.log_context, "error": str(exc)[:200]}
            )


def _as_int(value: Any) -> int | None:
    """Twilio sends durationUntilInterruptMs as a number or as a string of digits (anything else,
    infinities included, is None)."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
