"""TwiML documents the voice webhooks answer with.

Everything is built with the twilio library's ``VoiceResponse`` (ElementTree under the
hood), so text and attribute values are always XML-escaped; on top of that, characters
XML 1.0 cannot represent at all (most C0 controls) are dropped, because ElementTree
would emit them verbatim and Twilio would reject the whole document.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

__all__ = ["conversation_relay", "dial", "hangup", "reject", "say_and_hangup"]

_REJECT_REASONS = frozenset({"busy", "rejected"})

# Everything outside the XML 1.0 ``Char`` production.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _XML_ILLEGAL.sub("", text)


def reject(reason: str = "busy") -> str:
    """``<Response><Reject reason="..."/></Response>``: refuse the call unanswered (free).

    :raises ValueError: if ``reason`` is not one Twilio knows (``busy`` or ``rejected``).
    """
    if reason not in _REJECT_REASONS:
        raise ValueError(f"unsupported <Reject> reason {reason!r}")
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response)


def say_and_hangup(message: str) -> str:
    """``<Response><Say>message</Say><Hangup/></Response>`` with ``message`` escaped."""
    response = VoiceResponse()
    response.say(_clean(message))
    response.hangup()
    return str(response)


def conversation_relay(
    *,
    ws_url: str,
    welcome_greeting: str | None,
    language: str,
    voice: str | None,
    parameters: dict[str, str],
    action_url: str | None,
) -> str:
    """Hand the call to ConversationRelay, which talks to our WebSocket at ``ws_url``.

    Produces ``<Response><Connect action=...><ConversationRelay url=... welcomeGreeting=...
    language=... voice=...><Parameter name=... value=.../>...</ConversationRelay>
    </Connect></Response>``. Attributes whose argument is ``None`` are omitted (Twilio
    then applies its defaults); every ``parameters`` item becomes one ``<Parameter>``,
    delivered back to us in the ``setup`` message's ``customParameters``. All values are
    XML-escaped, so hostile greeting text cannot break out of the attribute.

    :raises ValueError: if ``ws_url`` is not an absolute ``ws://``/``wss://`` URL or
        ``language`` is empty.
    """
    parts = urlsplit(ws_url)
    if parts.scheme.lower() not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"ConversationRelay needs a ws:// or wss:// URL, got {ws_url!r}")
    if not language:
        raise ValueError("ConversationRelay needs a language")

    response = VoiceResponse()
    connect = response.connect(action=_clean(action_url) if action_url is not None else None)
    relay = connect.conversation_relay(
        url=_clean(ws_url),
        welcome_greeting=_clean(welcome_greeting) if welcome_greeting is not None else None,
        language=_clean(language),
        voice=_clean(voice) if voice is not None else None,
    )
    for name, value in parameters.items():
        relay.parameter(name=_clean(name), value=_clean(value))
    return str(response)


def dial(number: str, *, caller_id: str | None = None) -> str:
    """``<Response><Dial callerId="...">number</Dial></Response>`` (transfer the call).

    ``callerId`` is omitted when ``caller_id`` is ``None``; Twilio then presents the
    original caller's number.
    """
    response = VoiceResponse()
    response.dial(_clean(number), caller_id=_clean(caller_id) if caller_id is not None else None)
    return str(response)


def hangup() -> str:
    """``<Response><Hangup/></Response>``."""
    response = VoiceResponse()
    response.hangup()
    return str(response)
