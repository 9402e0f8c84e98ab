"""Authenticating Twilio's HTTP requests: the signature over the public URL and the form."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config.settings import settings
from app.errors import Forbidden, ServiceUnavailable
from app.telephony.signature import is_valid_twilio_signature, public_url


class TelephonyNotConfigured(ServiceUnavailable):
    code = "telephony_not_configured"
    default_detail = (
        "Telephony is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL)."
    )


class InvalidTwilioSignature(Forbidden):
    code = "invalid_signature"
    default_detail = "The X-Twilio-Signature header is missing or does not match this request."


def require_telephony() -> None:
    if not settings.telephony_configured:
        raise TelephonyNotConfigured()


async def verified_twilio_form(request: Request) -> dict[str, str]:
    """The form fields of a request that Twilio really signed, or 403 before anything is written.

    Validated against PUBLIC_BASE_URL + path + query (what Twilio called), so it holds behind a proxy.
    """
    require_telephony()
    form = await request.form()
    url = public_url(settings.PUBLIC_BASE_URL or "", request.url.path, request.url.query)
    signature = request.headers.get("x-twilio-signature")
    fields = {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form}
    if not is_valid_twilio_signature(settings.TWILIO_AUTH_TOKEN or "", url, fields, signature):
        raise InvalidTwilioSignature()
    return {key: value for key, value in form.items() if isinstance(value, str)}


TwilioForm = Annotated[dict[str, str], Depends(verified_twilio_form)]
