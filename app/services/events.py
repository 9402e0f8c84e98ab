"""Domain events for tenants' webhooks, written in the caller's transaction (transactional outbox).

`emit_event` must be called inside the same transaction as the change that causes the event, so a
rolled-back change sends nothing. Delivery is the worker's job (app/worker.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

EVENT_TYPES = ("call.started", "call.ended", "usage.threshold_reached", "webhook.test")


def emit_event(
    session: Session, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> None:
    """Record `event_type` for `tenant_id` in the current transaction (placeholder until the
    webhook outbox lands: it validates the type and writes nothing yet)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
