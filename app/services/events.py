"""Domain events for tenants' webhooks, written in the caller's transaction (transactional outbox).

`emit_event` must be called inside the same transaction as the change that causes the event, so a
rolled-back change sends nothing. It writes the event row and one delivery row per enabled endpoint
of the tenant subscribed to the type, then NOTIFYs the workers; PostgreSQL delivers a NOTIFY only
when the transaction commits, so a waiting worker wakes up exactly when there is something to send.
Delivery is the worker's job (app/webhooks/delivery.py).
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.models.base import new_id, utcnow

EVENT_TYPES = (
    "call.started",
    "call.ended",
    "usage.threshold_reached",
    "invoice.issued",
    "webhook.test",
)

# The channel the workers LISTEN on; the payload is empty (the rows are the message).
NOTIFY_CHANNEL = "webhook_deliveries"
_NOTIFY = text("SELECT pg_notify(:channel, '')")

# Plain SQL, two round trips per event: emit_event sits on hot paths (a call's status callback).
# The first writes the event and returns the endpoints to deliver it to (enabled, and subscribed
# to the type, an empty list meaning all types; or just the one named).
_INSERT_EVENT = text("""
WITH event AS (
    INSERT INTO webhook_events (id, tenant_id, event_type, body, created_at, updated_at)
    VALUES (:event_id, :tenant_id, :event_type, :body, :now, :now)
)
SELECT id FROM webhook_endpoints
WHERE tenant_id = :tenant_id AND enabled
  AND CASE WHEN CAST(:endpoint_id AS uuid) IS NULL
           THEN cardinality(event_types) = 0 OR :event_type = ANY(event_types)
           ELSE id = CAST(:endpoint_id AS uuid) END
ORDER BY id
""")
# The second writes one delivery per endpoint and wakes the workers (at commit).
_INSERT_DELIVERIES = text("""
WITH inserted AS (
    INSERT INTO webhook_deliveries (
        id, tenant_id, endpoint_id, event_id, event_type, status, attempt_count,
        next_attempt_at, created_at, updated_at
    )
    SELECT d.id, :tenant_id, d.endpoint_id, :event_id, :event_type, 'pending', 0, :now, :now, :now
    FROM unnest(CAST(:ids AS uuid[]), CAST(:endpoint_ids AS uuid[])) AS d(id, endpoint_id)
)
SELECT pg_notify(:channel, '')
""")


@dataclass(frozen=True)
class RecordedEvent:
    event_id: uuid.UUID
    delivery_ids: list[uuid.UUID]


def emit_event(
    session: Session, tenant_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> None:
    """Record `event_type` for `tenant_id` in the current transaction.

    Guarantees: nothing is sent unless the caller's transaction commits; each enabled endpoint of
    the tenant subscribed to the type (an empty subscription means all types) gets exactly one
    delivery, whose id is the `webhook-id` of every attempt. `data` must be JSON-serialisable
    (UUIDs, datetimes, dates, Decimals and enums are converted). An unknown type is a bug in the
    caller: ValueError.
    """
    record_event(session, tenant_id, event_type, data)


def record_event(
    session: Session,
    tenant_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    *,
    endpoint_id: uuid.UUID | None = None,
) -> RecordedEvent:
    """`emit_event`, optionally for one endpoint only (which then need not be subscribed to the
    type: used by the test event). Returns the event id and the deliveries created."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    now = utcnow()
    # Serialised once: this text is stored, signed and sent byte for byte on every attempt.
    body = json.dumps(
        {
            "type": event_type,
            "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": data,
        },
        default=_json_default,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    event_id = new_id()
    endpoint_ids = list(
        session.scalars(
            _INSERT_EVENT,
            {
                "event_id": event_id,
                "tenant_id": tenant_id,
                "event_type": event_type,
                "body": body,
                "now": now,
                "endpoint_id": endpoint_id,
            },
        )
    )
    delivery_ids = [new_id() for _ in endpoint_ids]
    if endpoint_ids:
        session.execute(
            _INSERT_DELIVERIES,
            {
                "ids": [str(i) for i in delivery_ids],
                "endpoint_ids": [str(i) for i in endpoint_ids],
                "tenant_id": tenant_id,
                "event_id": event_id,
                "event_type": event_type,
                "now": now,
                "channel": NOTIFY_CHANNEL,
            },
        )
    return RecordedEvent(event_id=event_id, delivery_ids=delivery_ids)


def notify_workers(session: Session) -> None:
    """Wake the waiting workers when (and only if) the current transaction commits."""
    session.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL})


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable in an event")
