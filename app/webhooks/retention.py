"""Webhook retention (SPEC §11): the worker deletes what was delivered more than
`WEBHOOK_RETENTION_DAYS` ago, every tenant's, in small batches.

Only finished deliveries go (succeeded or dead, unchanged for the retention period), their attempts
with them (ON DELETE CASCADE), then events older than the period with no delivery left, so an
event still being delivered stays with its delivery. Each batch is one short transaction of at
most `batch_size` rows taken with `FOR UPDATE SKIP LOCKED`: a row a worker or a redelivery holds is
skipped (taken on a later pass), and nobody waits on the purge.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text

from app.config.database import system_scope, transaction
from app.config.settings import settings
from app.models.base import utcnow

BATCH_SIZE = 500
# Per call, so the worker's claim loop is never held long; the rest waits for the next call.
MAX_BATCHES = 20

# Each batch's rows by their row address (ctid, exact while the batch holds their locks), as the
# worker's claim does (app/webhooks/delivery.py): the primary key is (tenant_id, id), so an array
# of ids alone would match no index.
_DELETE_DELIVERIES = text("""
DELETE FROM webhook_deliveries WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM webhook_deliveries
    WHERE status IN ('succeeded', 'dead') AND updated_at < :cutoff
    ORDER BY updated_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
))
""")
_DELETE_EVENTS = text("""
DELETE FROM webhook_events WHERE ctid = ANY (ARRAY(
    SELECT ev.ctid FROM webhook_events AS ev
    WHERE ev.created_at < :cutoff
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries AS d
          WHERE d.tenant_id = ev.tenant_id AND d.event_id = ev.id
      )
    ORDER BY ev.created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
))
""")


def purge_expired(
    now: datetime | None = None,
    *,
    retention: timedelta | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> tuple[int, int]:
    """Delete up to `max_batches` batches of expired deliveries, then of events; returns how many
    deliveries and events went (attempts go with their delivery)."""
    cutoff = (now or utcnow()) - (retention or timedelta(days=settings.WEBHOOK_RETENTION_DAYS))
    counts = []
    for statement in (_DELETE_DELIVERIES, _DELETE_EVENTS):
        deleted = 0
        for _ in range(max_batches):
            with transaction() as session, system_scope(session):
                result = session.execute(statement, {"cutoff": cutoff, "limit": batch_size})
                batch = result.rowcount  # type: ignore[attr-defined]
            deleted += batch
            if batch < batch_size:
                break
        counts.append(deleted)
    return counts[0], counts[1]
