"""Authenticating Twilio's HTTP requests: the signature over the public URL and the form."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request

from app.config.settings import settings
from app.errors import Forbidden, InvalidInput
from app.telephony.rest import TelephonyNotConfigured, require_telephony
from app.telephony.signature import is_valid_twilio_signature, public_url

__all__ = ["InvalidTwilioSignature", "TelephonyNotConfigured", "TwilioForm", "require_telephony"]


class InvalidTwilioSignature(Forbidden):
    code = "invalid_signature"
    default_detail = "The X-Twilio-Signature header is missing or does not match this request."


# What Starlette's form parser allows too: a bound on the work one request can ask for.
MAX_FORM_FIELDS = 1000


async def _form_fields(request: Request) -> dict[str, list[str]]:
    """Every value of every field, in order. Twilio posts URL-encoded forms, read here with the
    standard library (a third of the cost of the general form parser); anything else goes
    through Starlette's."""
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        fields: dict[str, list[str]] = {}
        try:
            pairs = parse_qsl(
                (await request.body()).decode("latin-1"),
                keep_blank_values=True,
                max_num_fields=MAX_FORM_FIELDS,
            )
        except ValueError:
            raise InvalidTwilioSignature() from None  # not a form Twilio would send
        for key, value in pairs:
            fields.setdefault(key, []).append(value)
        return fields
    form = await request.form(max_fields=MAX_FORM_FIELDS)
    return {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form}


async def verified_twilio_form(request: Request) -> dict[str, str]:
    """The form fields of a request that Twilio really signed, or 403 before anything is written.

    Validated against PUBLIC_BASE_URL + path + query (what Twilio called), so it holds behind a proxy.
    A field sent more than once is signed with all its values and read as its last one.
    """
    require_telephony()
    fields = await _form_fields(request)
    # Not request.url: it decodes the raw query string as UTF-8 and raises on any other byte.
    # Latin-1 reads every byte (as Starlette's QueryParams does); a mangled URL just fails to match.
    query = request.scope["query_string"].decode("latin-1")
    url = public_url(settings.PUBLIC_BASE_URL or "", request.scope["path"], query)
    signature = request.headers.get("x-twilio-signature")
    if not is_valid_twilio_signature(settings.TWILIO_AUTH_TOKEN or "", url, fields, signature):
        raise InvalidTwilioSignature()
    form = {key: values[-1] for key, values in fields.items() if values}
    # Signed, yet nothing Twilio sends: refused before anything is looked up or stored.
    if any("\x00" in value for values in fields.values() for value in values):
        raise InvalidInput("A form field contains a NUL character.")
    return form


TwilioForm = Annotated[dict[str, str], Depends(verified_twilio_form)]
