"""The public URLs Twilio is given for our endpoints, built from the app's own routes."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from app.telephony.signature import public_url, websocket_url


@dataclass(frozen=True)
class TwilioUrls:
    """Where Twilio calls us: the voice webhook, the status callback, the ConversationRelay
    socket and the `<Connect action>` after a relay session ends."""

    voice: str
    status: str
    relay: str
    relay_action: str

    @classmethod
    def from_paths(
        cls, base: str, *, voice: str, status: str, relay: str, relay_action: str
    ) -> TwilioUrls:
        return cls(
            voice=public_url(base, voice, ""),
            status=public_url(base, status, ""),
            relay=websocket_url(base, relay),
            relay_action=public_url(base, relay_action, ""),
        )


# The relay URL's query parameter that carries a call's token.
RELAY_TOKEN_PARAMETER = "token"  # noqa: S105 - a parameter name, not a secret


def relay_token(call_id: uuid.UUID, auth_token: str | None = None) -> str:
    """The token the relay URL of call `call_id` carries: an HMAC of the call id under a key
    derived from the Twilio auth token. Twilio signs the handshake over the URL with it, and
    `setup` must name this call, so a captured handshake opens no session for another call."""
    if auth_token is None:
        from app.config.settings import settings

        auth_token = settings.TWILIO_AUTH_TOKEN or ""
    key = hashlib.sha256(b"vca relay token\0" + auth_token.encode()).digest()
    return hmac.new(key, call_id.bytes, hashlib.sha256).hexdigest()[:32]


def relay_token_matches(token: str | None, call_id: uuid.UUID) -> bool:
    """Whether `token` (from the socket's URL) is call `call_id`'s, in constant time."""
    return token is not None and hmac.compare_digest(token.encode(), relay_token(call_id).encode())
