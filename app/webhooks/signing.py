"""Standard Webhooks secrets and signatures, made by the `standardwebhooks` library (SPEC §11)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

_SECRET_BYTES = 32


def generate_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks secret format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def signed_headers(message_id: str, body: str, signing_secrets: Sequence[str]) -> dict[str, str]:
    """The headers of one attempt of `body`: `webhook-id` is the delivery id (the same on every
    attempt), `webhook-timestamp` the real current time (receivers check it against their clock)
    and `webhook-signature` one `v1,` signature per secret (two during a rotation's grace period).
    """
    timestamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
    signatures = " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
        for secret in signing_secrets
    )
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
    }
