"""The database side of a ConversationRelay session: bind the call, store the transcript.

Everything here is synchronous SQLAlchemy; the WebSocket session (app/telephony/relay.py) runs it
in the threadpool so the event loop never waits on PostgreSQL. The module-level functions each
run one transaction of their own; `RelayService` holds the rules inside one tenant's transaction.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from app.config.database import transaction
from app.llm.agent import ConversationEntry
from app.models import AIProfile, Call, CallTurn, Tenant
from app.models.base import new_id, utcnow
from app.models.call import CallStatus, EndReason
from app.services.events import emit_event
from app.services.scope import TenantScope, get_scoped, scoped
from app.services.telephony import bind_call_sid, call_payload, telephony_scope, turns_of_call
from app.telephony import twiml

logger = logging.getLogger("vca.relay")

_INSERT_TURNS = insert(cast(Table, CallTurn.__table__))

# A session may take a call Twilio is still connecting, or one a status callback already marked
# answered (outbound calls); a finished call never comes back to life. Either way only the first
# session: `relay_bound_at` marks the call taken.
BINDABLE_STATUSES = (CallStatus.queued, CallStatus.ringing, CallStatus.in_progress)


def storable_text(text: str) -> str:
    """`text` as PostgreSQL stores it: without NUL (which text columns refuse) and with lone
    surrogates (which UTF-8 cannot encode) replaced, so a turn is cleaned, never lost."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16: paired surrogates become their character, lone ones U+FFFD.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class RelayBindError(Exception):
    """The `setup` message does not name a call this session may serve; `reason` is for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AgentProfile:
    """The AI profile settings a session needs, detached from the database session."""

    system_prompt: str
    greeting: str | None
    llm_model: str | None
    temperature: float
    max_tokens: int
    max_call_duration_seconds: int
    transfer_number: str | None


@dataclass(frozen=True)
class NewTurn:
    """An utterance to add to the transcript at position `seq`."""

    seq: int
    role: str
    text: str
    interrupted: bool = False
    latency_ms: int | None = None


@dataclass(frozen=True)
class HeardTurn:
    """The caller interrupted agent turn `seq`, which is kept as `text`: what they heard."""

    seq: int
    text: str


TranscriptChange = NewTurn | HeardTurn


@dataclass
class BoundCall:
    """A call a relay session is attached to, with the conversation so far."""

    scope: TenantScope
    call_id: uuid.UUID
    call_sid: str
    profile: AgentProfile
    answered_at: datetime
    history: list[ConversationEntry] = field(default_factory=list)
    next_seq: int = 1


class RelayService:
    """The rules of a relay session inside one tenant's transaction."""

    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def bind(self, call_id: uuid.UUID, call_sid: str) -> BoundCall:
        """Attach a session to the call `call_id` whose Twilio CallSid is `call_sid`.

        Guarantees: the call exists in this tenant with that CallSid and a bindable status and
        no session has taken it yet (checked under its row lock, so of two sockets racing one
        wins), or RelayBindError and nothing changes. The call becomes `in_progress` with
        `answered_at` set and is marked taken, `call.started` is emitted in the same transaction,
        and the profile's greeting (which Twilio speaks as the welcome greeting) is stored as
        the first agent turn.
        """
        call = self.session.scalars(
            scoped(Call, self.scope)
            .where(Call.id == call_id, Call.provider_call_sid == call_sid)
            .with_for_update()
        ).one_or_none()
        if call is None:
            raise RelayBindError("no call with this id and CallSid")
        if call.status not in BINDABLE_STATUSES:
            raise RelayBindError(f"call is {call.status}")
        if call.relay_bound_at is not None:
            raise RelayBindError("call already has its relay session")
        if call.ai_profile_id is None:
            raise RelayBindError("call has no AI profile")
        profile_row = self.session.scalars(
            scoped(AIProfile, self.scope).where(AIProfile.id == call.ai_profile_id)
        ).one_or_none()
        if profile_row is None:
            raise RelayBindError("the call's AI profile no longer exists")
        profile = AgentProfile(
            system_prompt=profile_row.system_prompt,
            greeting=profile_row.greeting,
            llm_model=profile_row.llm_model,
            temperature=float(profile_row.temperature),
            max_tokens=profile_row.max_tokens,
            max_call_duration_seconds=profile_row.max_call_duration_seconds,
            transfer_number=profile_row.transfer_number,
        )

        turns = turns_of_call(self.session, self.scope, call.id)
        now = utcnow()
        if call.status != CallStatus.in_progress:
            call.status = CallStatus.in_progress
            call.started_at = call.started_at or now
        call.answered_at = call.answered_at or now
        call.relay_bound_at = now
        self.session.flush()
        emit_event(self.session, self.scope.tenant_id, "call.started", {"call": call_payload(call)})

        history = [
            ConversationEntry(
                role="caller" if turn.role == "caller" else "agent",
                text=turn.text,
                seq=turn.seq,
                interrupted=turn.interrupted,
            )
            for turn in turns
        ]
        next_seq = (turns[-1].seq + 1) if turns else 1
        if not turns and profile.greeting and profile.greeting.strip():
            self.apply(call.id, [NewTurn(next_seq, "agent", profile.greeting)])
            history.append(ConversationEntry(role="agent", text=profile.greeting, seq=next_seq))
            next_seq += 1
        return BoundCall(
            scope=self.scope,
            call_id=call.id,
            call_sid=call_sid,
            profile=profile,
            answered_at=call.answered_at or now,
            history=history,
            next_seq=next_seq,
        )

    def apply(self, call_id: uuid.UUID, changes: Sequence[TranscriptChange]) -> None:
        """Apply transcript changes in order; consecutive new turns are one INSERT.

        Core, not the ORM's unit of work: a turn is written while other calls are talking, and
        the ORM spent twice the Python time (holding the interpreter lock) to insert two rows.
        """
        rows: list[dict[str, Any]] = []
        now = utcnow()
        for change in changes:
            if isinstance(change, NewTurn):
                rows.append(
                    {
                        "id": new_id(),
                        "tenant_id": self.scope.tenant_id,
                        "call_id": call_id,
                        "seq": change.seq,
                        "role": change.role,
                        "text": storable_text(change.text),
                        "interrupted": change.interrupted,
                        "latency_ms": change.latency_ms,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            else:
                self._insert_turns(rows)  # the turn may be one added just before
                rows = []
                self.truncate_turn(call_id, seq=change.seq, text=change.text)
        self._insert_turns(rows)

    def _insert_turns(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.execute(_INSERT_TURNS, rows[0] if len(rows) == 1 else rows)

    def truncate_turn(self, call_id: uuid.UUID, *, seq: int, text: str) -> None:
        """Record that the caller interrupted turn `seq`: keep only `text`, what they heard."""
        turn = self.session.scalars(
            scoped(CallTurn, self.scope).where(CallTurn.call_id == call_id, CallTurn.seq == seq)
        ).one_or_none()
        if turn is not None:
            turn.text = storable_text(text)
            turn.interrupted = True
            self.session.flush()

    def store_summary(self, call_id: uuid.UUID, summary: str) -> None:
        """Set the call's post-call summary (a missing call is ignored)."""
        call = self.session.scalars(
            scoped(Call, self.scope).where(Call.id == call_id).with_for_update()
        ).one_or_none()
        if call is not None:
            call.summary = summary
            self.session.flush()

    def note_end_reason(self, call_id: uuid.UUID, reason: EndReason) -> None:
        """Record what is ending the live call `call_id` (the first cause noted wins); Twilio's
        final status turns it into the call's end_reason (`TelephonyService.transition`)."""
        call = self.session.scalars(
            scoped(Call, self.scope).where(Call.id == call_id).with_for_update()
        ).one_or_none()
        if call is not None and not CallStatus(call.status).is_terminal:
            call.pending_end_reason = call.pending_end_reason or reason
            self.session.flush()

    def after_session_twiml(self, call_id: uuid.UUID, handoff_data: str | None) -> str:
        """TwiML for Twilio's `<Connect action>` request once the relay session is over.

        `<Dial>` to the profile's transfer number when the agent asked for a transfer and the
        profile has one; `<Hangup/>` otherwise. The number always comes from the profile, never
        from the handoff data (which the model wrote, so a caller could steer it).
        """
        if handoff_reason(handoff_data) != "transfer":
            return twiml.hangup()
        call = get_scoped(self.session, Call, self.scope, call_id, what="Call")
        profile = (
            self.session.scalars(
                scoped(AIProfile, self.scope).where(AIProfile.id == call.ai_profile_id)
            ).one_or_none()
            if call.ai_profile_id is not None
            else None
        )
        number = profile.transfer_number if profile is not None else None
        if not number:
            logger.warning("transfer requested but the profile has no transfer number")
            return twiml.hangup()
        return twiml.dial(number)


def handoff_reason(handoff_data: str | None) -> str | None:
    """The `reason` of an `end` message's handoffData JSON string, or None if there is none."""
    if not handoff_data:
        return None
    try:
        data = json.loads(handoff_data)
    except ValueError:
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else None


# --------------------------------------------------------------------------- one transaction each


@contextmanager
def _call_sid_transaction(call_sid: str) -> Iterator[tuple[Session, TenantScope] | None]:
    """A transaction bound to the tenant owning `call_sid` (None if no call has that CallSid).

    Twilio names a call only by its CallSid, so the owner is found through the pinned
    cross-tenant lookup (`bind_call_sid`), which binds the transaction to that tenant.
    """
    with transaction() as session:
        tenant_id = bind_call_sid(session, call_sid) if 0 < len(call_sid) <= 64 else None
        tenant = session.get(Tenant, tenant_id) if tenant_id is not None else None
        yield (session, telephony_scope(tenant)) if tenant is not None else None


def bind_call(call_id: uuid.UUID, call_sid: str) -> BoundCall:
    """Resolve `call_sid` and bind the session to its call (see `RelayService.bind`).

    Raises RelayBindError when the CallSid is unknown or belongs to another call than `call_id`.
    """
    with _call_sid_transaction(call_sid) as found:
        if found is None:
            raise RelayBindError("unknown CallSid")
        session, scope = found
        suspended = scope.tenant_status == "suspended"
        if not suspended:
            return RelayService(session, scope).bind(call_id, call_sid)
        # Suspended while the call rang: not handed to the agent; the refusal ends the session
        # and Twilio's final status ends the call with this reason (committed here).
        owned = session.scalar(
            scoped(Call, scope)
            .where(Call.id == call_id, Call.provider_call_sid == call_sid)
            .with_only_columns(Call.id)
        )
        if owned is not None:
            RelayService(session, scope).note_end_reason(call_id, EndReason.tenant_suspended)
    raise RelayBindError("the tenant is suspended")


def store_transcript(
    scope: TenantScope, call_id: uuid.UUID, changes: Sequence[TranscriptChange]
) -> None:
    """Apply transcript changes, in order, in one transaction of their own."""
    with transaction(scope.tenant_id) as session:
        RelayService(session, scope).apply(call_id, changes)


def store_summary(scope: TenantScope, call_id: uuid.UUID, summary: str) -> None:
    """Store the post-call summary in its own transaction."""
    with transaction(scope.tenant_id) as session:
        RelayService(session, scope).store_summary(call_id, summary)


def store_end_reason(scope: TenantScope, call_id: uuid.UUID, reason: EndReason) -> None:
    """Note what is ending the call (see `RelayService.note_end_reason`), in its own transaction."""
    with transaction(scope.tenant_id) as session:
        RelayService(session, scope).note_end_reason(call_id, reason)


# How an `end` message's handoffData `reason` (written by app/telephony/relay.py) ends the call.
END_REASON_OF_HANDOFF = {
    "transfer": EndReason.transferred,
    "end_call": EndReason.agent_hangup,
    "max_duration": EndReason.max_duration,
}


def relay_action_twiml(
    call_sid: str, handoff_data: str | None, *, session_failed: bool = False
) -> str:
    """Answer to `POST /telephony/twilio/relay-action`; an unknown CallSid hangs up.

    `session_failed`: Twilio reports that the relay session ended in an error (the socket
    dropped, our side failed): unless the agent had already ended the call, its end_reason
    will be `relay_error`.
    """
    with _call_sid_transaction(call_sid) as found:
        if found is None:
            logger.warning("relay action for an unknown CallSid", extra={"sid": call_sid[:64]})
            return twiml.hangup()
        session, scope = found
        call_id = session.scalar(
            scoped(Call, scope).where(Call.provider_call_sid == call_sid).with_only_columns(Call.id)
        )
        if call_id is None:
            return twiml.hangup()
        service = RelayService(session, scope)
        if session_failed:
            service.note_end_reason(call_id, EndReason.relay_error)
        return service.after_session_twiml(call_id, handoff_data)
