"""Twilio ConversationRelay: the WebSocket the AI agent talks on, and the `<Connect action>`.

Authenticated by `X-Twilio-Signature` (on the handshake and on the action's form), never by API
keys. The protocol itself lives in app/telephony/relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, Response, WebSocket, WebSocketDisconnect

from app import metrics
from app.api.deps import TransactionalRoute
from app.context import set_tenant
from app.errors import error_responses
from app.services.relay import relay_action_twiml
from app.telephony.relay import (
    POLICY_VIOLATION,
    RELAY_TOKEN_PARAMETER,
    RelaySession,
    handshake_rejection,
)
from app.telephony.request import InvalidTwilioSignature, TelephonyNotConfigured, TwilioForm

logger = logging.getLogger("vca.relay")

router = APIRouter(route_class=TransactionalRoute, prefix="/telephony/twilio", tags=["telephony"])

SETUP_TIMEOUT_SECONDS = 10.0


@router.websocket("/relay")
async def conversation_relay(websocket: WebSocket) -> None:
    """Twilio's ConversationRelay WebSocket (JSON text frames), one per connected call."""
    reason = handshake_rejection(websocket.headers, websocket.url.path, websocket.url.query)
    if reason is not None:
        logger.warning("relay handshake refused", extra={"reason": reason})
        # Closing before accepting refuses the upgrade (HTTP 403).
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    session = RelaySession(
        websocket.send_text, url_token=websocket.query_params.get(RELAY_TOKEN_PARAMETER)
    )
    metrics.RELAY_SESSIONS.inc()
    try:
        while True:
            if session.call is None:
                # Twilio sends `setup` at once; a signed socket that stays silent must not hold
                # a connection (and a slot on this process) forever.
                try:
                    message = await asyncio.wait_for(websocket.receive(), SETUP_TIMEOUT_SECONDS)
                except TimeoutError:
                    logger.warning("relay session refused", extra={"reason": "no setup in time"})
                    await _close(websocket, POLICY_VIOLATION)
                    break
            else:
                message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                session.ignore_binary(len(message.get("bytes") or b""))
                continue
            await session.handle_message(text)
            if session.call is not None:  # every later log line of the session names its call
                set_tenant(session.call.scope.tenant_id, session.call.call_id)
            if session.close_code is not None:
                await _close(websocket, session.close_code)
                break
    finally:
        metrics.RELAY_SESSIONS.dec()
        await session.close()


async def _close(websocket: WebSocket, code: int) -> None:
    # The caller may have hung up meanwhile (while the call was being bound): nothing to close.
    with contextlib.suppress(WebSocketDisconnect):
        await websocket.close(code=code)


@router.post(
    "/relay-action",
    response_class=Response,
    responses={
        200: {
            "content": {"application/xml": {"example": "<Response><Hangup/></Response>"}},
            "description": "TwiML: `<Dial>` to the transfer number, else `<Hangup/>`.",
        },
        **error_responses(InvalidTwilioSignature, TelephonyNotConfigured),
    },
    summary="Twilio's <Connect action> after a ConversationRelay session: transfer or hang up",
)
def relay_action(form: TwilioForm) -> Response:
    # Twilio's SessionStatus is `failed` (with an ErrorCode) when the session broke.
    failed = form.get("SessionStatus", "").strip() == "failed" or bool(
        form.get("ErrorCode", "").strip()
    )
    twiml = relay_action_twiml(
        form.get("CallSid", ""), form.get("HandoffData"), session_failed=failed
    )
    return Response(content=twiml, media_type="application/xml")
