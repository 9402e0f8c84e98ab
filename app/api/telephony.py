"""Twilio's webhooks (outside /api/v1): authenticated by X-Twilio-Signature, answered in TwiML."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import Callbacks, DbSession, SingleStatementSession, TransactionalRoute
from app.errors import AtCapacity, error_responses
from app.services.telephony import EMPTY_TWIML, TelephonyService
from app.telephony.capacity import live_calls
from app.telephony.request import InvalidTwilioSignature, TelephonyNotConfigured, TwilioForm

router = APIRouter(route_class=TransactionalRoute, prefix="/telephony/twilio", tags=["telephony"])

TWIML_MEDIA_TYPE = "application/xml"
TWIML_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "TwiML for Twilio.",
        "content": {TWIML_MEDIA_TYPE: {"example": '<Response><Reject reason="busy"/></Response>'}},
    }
}


@router.post(
    "/voice",
    response_class=Response,
    responses={
        **TWIML_RESPONSE,
        **error_responses(InvalidTwilioSignature, TelephonyNotConfigured, AtCapacity),
    },
    summary="Twilio voice webhook: route the call by `To` and answer with TwiML",
)
def voice_webhook(form: TwilioForm, session: SingleStatementSession, urls: Callbacks) -> Response:
    # One statement (`answer_inbound_call`), so no transaction around it: one round trip.
    twiml = TelephonyService(session, urls).answer_voice(form, live_calls)
    return Response(content=twiml, media_type=TWIML_MEDIA_TYPE)


@router.post(
    "/status",
    response_class=Response,
    responses={**TWIML_RESPONSE, **error_responses(InvalidTwilioSignature, TelephonyNotConfigured)},
    summary="Twilio status callback: advance the call's state (idempotent, order-independent)",
)
def status_callback(form: TwilioForm, session: DbSession, urls: Callbacks) -> Response:
    TelephonyService(session, urls).apply_status_callback(form)
    return Response(content=EMPTY_TWIML, media_type=TWIML_MEDIA_TYPE)
