"""The public URLs Twilio is given for our endpoints, built from the app's own routes."""

from __future__ import annotations

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
