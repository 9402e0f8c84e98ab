"""Where a bench caller opens its relay socket: the URL of the TwiML's <ConversationRelay>, as
Twilio does (it carries the call's token, and Twilio signs the handshake over it)."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

_RELAY_URL = re.compile(r'<ConversationRelay[^>]*\surl="([^"]+)"')


def relay_socket(twiml: str, base: str) -> tuple[str, str]:
    """(the public URL to sign, the local URL to connect to) of the TwiML's relay."""
    match = _RELAY_URL.search(twiml)
    if match is None:
        raise ValueError("no <ConversationRelay url> in the TwiML")
    public = html.unescape(match.group(1))
    parts = urlsplit(public)
    local = (
        base.replace("http://", "ws://") + parts.path + (f"?{parts.query}" if parts.query else "")
    )
    return public, local
