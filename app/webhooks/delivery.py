"""A delivery's life after the outbox wrote it: claimed, signed and sent, its outcome recorded.

    pending | failed --claim--> delivering --record--> succeeded | failed (retried later) | dead
                                delivering --release--> pending | failed (given back unsent)
                                delivering --lease expires--> delivering (claimed again) | dead

Rules (SPEC §11): a 2xx is success; anything else is a failure retried after 5 s, 5 min, 30 min,
2 h, 5 h, 10 h and 10 h (a larger `Retry-After` wins), after which the delivery is `dead`. A 410
disables the endpoint; so does failing continuously for 5 days. A claim holds its delivery until
its lease expires: a worker killed mid-send loses nothing, another one sends it again with the same
`webhook-id`. That lost send counts as an attempt whose outcome is unknown, so a delivery that
kills every worker sending it ("poison") is `dead` after MAX_ATTEMPTS like any other. Every
function takes the time it acts at (`now`, `at`) from its caller.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, text, update
from sqlalchemy.orm import Session

from app import crypto
from app.config.database import system_scope
from app.config.settings import WEBHOOK_LEASE_MARGIN_SECONDS, settings
from app.models import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from app.services.scope import tenant_filter
from app.webhooks.sender import DeliveryResult, post_webhook, storable_text
from app.webhooks.signing import signed_headers

logger = logging.getLogger("vca.webhooks")

RETRY_DELAYS = tuple(
    timedelta(seconds=s) for s in (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
DISABLE_AFTER_FAILING_FOR = timedelta(days=5)
# A send may start only while its lease outlasts it by this much (see `can_send`).
LEASE_MARGIN = timedelta(seconds=WEBHOOK_LEASE_MARGIN_SECONDS)
_MAX_ERROR_CHARS = 1000

DISABLED_GONE = "The endpoint answered 410 Gone."
DISABLED_FAILING = "Every delivery failed for 5 days."
ENDPOINT_DISABLED_ERROR = "not sent: the endpoint is disabled"
UNDECRYPTABLE_ERROR = "not sent: no key of ENCRYPTION_KEYS decrypts the endpoint's secret"
LOST_SEND_ERROR = "lease expired: its worker stopped before recording an outcome; outcome unknown"


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a worker holds until `lease_expires_at`, with what it needs to send it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    endpoint_enabled: bool
    secrets: tuple[str, ...]
    body: str
    attempt_number: int
    lease_expires_at: datetime
    # Taken back from an expired lease: its last send was lost with its worker, maybe because it
    # kills whoever sends it, so it is claimed and sent alone (see claim_due_deliveries).
    taken_over: bool = False


@dataclass(frozen=True)
class DeliveryOutcome:
    """What happened to a claimed delivery: `result` is None when it was not sent because its
    endpoint had been disabled. `at` is when it happened."""

    claimed: ClaimedDelivery
    result: DeliveryResult | None
    at: datetime


# --- claim ------------------------------------------------------------------------------------

# SKIP LOCKED lets concurrent workers take disjoint rows; the row locks last only for this
# statement's transaction, after which status='delivering' plus the lease keeps others away.
#
# Every step is an index lookup whatever the statistics say. Written as a join of the picked rows
# with endpoints and events, the planner chose by its row estimates, and when they favoured hash
# joins each claim read all of webhook_deliveries and webhook_events: 20-70 ms a claim at 40,000
# events, half the worker's throughput, in about half of the benchmark's runs. The picked rows
# are an array of their row addresses (ctid: exact while the row lock is held, and fetched without
# an index), and the endpoint and the event are LATERAL lookups (LIMIT 1 keeps each one a per-row
# index probe instead of a join the planner may turn around). Not an array of ids: the primary
# key is (tenant_id, id), so ids alone match no index (a claim read the whole table, 124 ms at
# 200,000 deliveries); and two arrays, of tenants and ids, made tenants x ids index probes.
_CLAIM_SQL = """
WITH picked AS (
    UPDATE webhook_deliveries AS d
    SET {assignments}, updated_at = now()
    WHERE d.ctid = ANY (ARRAY(
        SELECT ctid FROM webhook_deliveries
        WHERE {condition}
        ORDER BY {order}
        LIMIT {limit}
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING d.id, d.tenant_id, d.endpoint_id, d.event_id, d.attempt_count, d.last_attempt_at
){log_lost_sends}
SELECT c.id, c.tenant_id, c.endpoint_id, c.attempt_count, e.url, e.enabled, e.secret,
       e.previous_secret, e.previous_secret_expires_at, ev.body
FROM picked AS c
CROSS JOIN LATERAL (
    SELECT url, enabled, secret, previous_secret, previous_secret_expires_at
    FROM webhook_endpoints WHERE tenant_id = c.tenant_id AND id = c.endpoint_id LIMIT 1
) AS e
CROSS JOIN LATERAL (
    SELECT body FROM webhook_events WHERE tenant_id = c.tenant_id AND id = c.event_id LIMIT 1
) AS ev
"""
# An expired lease is a send whose outcome no worker recorded (it was killed, ran out of memory,
# crashed): it counts as an attempt, logged with its outcome unknown at the lease's expiry (when
# it was given up; the send itself was earlier), so a delivery that kills every worker ends `dead`
# after MAX_ATTEMPTS (`claim_due_deliveries`) instead of being sent every lease for ever. The SET
# sees the row as it was.
_LOST_SEND_COUNTED = """attempt_count = d.attempt_count + 1, lease_expires_at = :lease_expires_at,
        last_status_code = NULL, last_error = :lost_send_error,
        last_attempt_at = d.lease_expires_at"""
_LOG_LOST_SENDS = """,
logged AS (
    INSERT INTO webhook_delivery_attempts (
        id, tenant_id, delivery_id, attempt_number, status_code, error, duration_ms,
        response_excerpt, attempted_at
    )
    SELECT gen_random_uuid(), tenant_id, id, attempt_count, NULL, :lost_send_error, NULL, NULL,
           last_attempt_at
    FROM picked
)"""
# Expired leases first (a crashed worker's deliveries), one per claim, then due ones, oldest due
# first: each statement walks its own partial index in order, so a claim costs the same at any
# backlog.
CLAIM_STATEMENTS = (
    text(
        _CLAIM_SQL.format(
            assignments=_LOST_SEND_COUNTED,
            condition="status = 'delivering' AND lease_expires_at <= :now",
            order="lease_expires_at",
            limit="1",
            log_lost_sends=_LOG_LOST_SENDS,
        )
    ),
    text(
        _CLAIM_SQL.format(
            assignments="status = 'delivering', lease_expires_at = :lease_expires_at",
            condition="status IN ('pending', 'failed') AND next_attempt_at <= :now",
            order="next_attempt_at",
            limit=":limit",
            log_lost_sends="",
        )
    ),
)


def claim_due_deliveries(
    session: Session, *, now: datetime, limit: int, lease: timedelta
) -> list[ClaimedDelivery]:
    """Take up to `limit` deliveries of any tenant that are due (or whose lease expired) at `now`.

    The worker's claim loop, the one cross-tenant step of delivery (SPEC §2). The caller's
    transaction must commit before sending: the commit is what makes the claim visible. Concurrent
    callers never get the same delivery while its lease runs. A delivery whose lease expired has
    its lost send logged and counted as an attempt; one out of attempts that way is `dead`, not
    claimed.

    A delivery taken back from an expired lease comes alone (`taken_over`): the claims its worker
    held all expired together, and had they been sent together again, one that kills its worker
    ("poison") would have cost every other one an attempt per crash, until they were all `dead`.
    Alone, only the poison goes on losing attempts.
    """
    if limit < 1:
        return []
    lease_expires_at = now + lease
    params = {
        "now": now,
        "lease_expires_at": lease_expires_at,
        "lost_send_error": LOST_SEND_ERROR,
        "limit": limit,
    }
    expired, due = CLAIM_STATEMENTS
    with system_scope(session):
        rows = session.execute(expired, params).all()
        if rows and retry_delay(rows[0].attempt_count, None) is None:
            # The lost send was its last attempt (a rare path: one more statement).
            session.execute(_OUT_OF_ATTEMPTS, {"tenant_id": rows[0].tenant_id, "id": rows[0].id})
            rows = []
        taken_over = bool(rows)  # LIMIT 1: one at most, and then nothing else
        if not taken_over:
            rows = session.execute(due, params).all()
    return [
        _claimed(row, now=now, lease_expires_at=lease_expires_at, taken_over=taken_over)
        for row in rows
    ]


_OUT_OF_ATTEMPTS = text("""
UPDATE webhook_deliveries SET
    status = 'dead', lease_expires_at = NULL, next_attempt_at = NULL, updated_at = now()
WHERE tenant_id = :tenant_id AND id = :id
""")


def _claimed(
    row: Row[Any], *, now: datetime, lease_expires_at: datetime, taken_over: bool
) -> ClaimedDelivery:
    stored = [row.secret]
    if (
        row.previous_secret
        and row.previous_secret_expires_at
        and row.previous_secret_expires_at > now
    ):
        stored.append(row.previous_secret)
    try:
        signing = [crypto.decrypt(secret) for secret in stored]
    except crypto.SecretUnreadable:
        # Not the whole claim's failure: this one is recorded as a failed attempt (see `send`).
        logger.error(
            "webhook secret unreadable with ENCRYPTION_KEYS", extra={"delivery_id": str(row.id)}
        )
        signing = []
    return ClaimedDelivery(
        id=row.id,
        tenant_id=row.tenant_id,
        endpoint_id=row.endpoint_id,
        url=row.url,
        endpoint_enabled=row.enabled,
        secrets=tuple(signing),
        body=row.body,
        attempt_number=row.attempt_count + 1,
        lease_expires_at=lease_expires_at,
        taken_over=taken_over,
    )


# --- send -------------------------------------------------------------------------------------


def send_budget(timeout_seconds: float) -> timedelta:
    """How much lease one send needs: its timeout and a margin for recording the outcome."""
    return timedelta(seconds=timeout_seconds) + LEASE_MARGIN


def can_send(claimed: ClaimedDelivery, *, now: datetime, timeout_seconds: float) -> bool:
    """Whether a send started at `now` ends before the lease does; if not, another worker could
    take the delivery over mid-send and send it too, so it is to be released instead."""
    return now + send_budget(timeout_seconds) <= claimed.lease_expires_at


def send(claimed: ClaimedDelivery, *, timeout_seconds: float) -> DeliveryResult:
    """One attempt: the stored body, byte for byte, signed with the endpoint's active secrets and
    POSTed (SSRF rules checked again, no redirects followed). Never raises."""
    if not claimed.secrets:
        return DeliveryResult(
            status_code=None,
            error=UNDECRYPTABLE_ERROR,
            duration_ms=0,
            retry_after_seconds=None,
            response_body_excerpt="",
        )
    return post_webhook(
        claimed.url,
        claimed.body.encode(),
        signed_headers(str(claimed.id), claimed.body, claimed.secrets),
        timeout_seconds=timeout_seconds,
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS,
        require_https=settings.webhook_require_https,
    )


# --- record -----------------------------------------------------------------------------------


def retry_delay(attempt_number: int, retry_after_seconds: int | None) -> timedelta | None:
    """The wait after failed attempt `attempt_number` (1-based), or None when it was the last."""
    if attempt_number >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS[attempt_number - 1]
    if retry_after_seconds is not None and retry_after_seconds > delay.total_seconds():
        return timedelta(seconds=retry_after_seconds)
    return delay


# Core tables: the worker writes in bulk and has no use for the ORM's unit of work.
_ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
_DELIVERIES = cast(Table, WebhookDelivery.__table__)
_ATTEMPTS = cast(Table, WebhookDeliveryAttempt.__table__)

# The deliveries still held by these claims (status and the exact lease: a claim that expired and
# was taken over, or a deleted delivery, is not), locked until the outcomes are written.
_LOCK_HELD = text("""
SELECT id, lease_expires_at FROM webhook_deliveries
WHERE tenant_id = :tenant_id AND id = ANY(:ids) AND status = 'delivering'
ORDER BY id
FOR UPDATE
""")
# Each outcome, one row at a time (executemany). A sent one:
_RECORD_SENT = text("""
UPDATE webhook_deliveries SET
    status = :status, attempt_count = :attempt_count, next_attempt_at = :next_attempt_at,
    lease_expires_at = NULL, last_status_code = :status_code, last_error = :error,
    last_attempt_at = :at,
    delivered_at = coalesce(:delivered_at, delivered_at),
    updated_at = now()
WHERE tenant_id = :tenant_id AND id = :id
""")
# One not sent because its endpoint was disabled: dead, and nothing about the last attempt changes.
_RECORD_UNSENT = text("""
UPDATE webhook_deliveries SET
    status = 'dead', next_attempt_at = NULL, lease_expires_at = NULL, last_error = :error,
    updated_at = now()
WHERE tenant_id = :tenant_id AND id = :id
""")


def record_delivery_outcomes(
    session: Session, tenant_id: uuid.UUID, outcomes: Sequence[DeliveryOutcome]
) -> dict[uuid.UUID, str]:
    """Store the outcomes of one tenant's deliveries (in completion order) and schedule what follows.

    Runs in `tenant_id`'s transaction, in a few round trips whatever the number of outcomes
    (psycopg pipelines an executemany). Returns the new status of each delivery whose claim still
    held; a delivery missing from the result had lost its claim (lease expired and taken over, or
    deleted) and nothing of it was written, so a late result never overwrites another worker's.
    """
    if not outcomes:
        return {}
    disabled = _apply_endpoint_effects(session, tenant_id, outcomes)
    leases = {o.claimed.id: o.claimed.lease_expires_at for o in outcomes}
    locked = session.execute(_LOCK_HELD, {"tenant_id": tenant_id, "ids": list(leases)})
    held = {row.id for row in locked if row.lease_expires_at == leases[row.id]}
    sent: list[dict[str, Any]] = []
    unsent: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    statuses: dict[uuid.UUID, str] = {}
    for outcome in outcomes:
        claimed, result, at = outcome.claimed, outcome.result, outcome.at
        if claimed.id not in held:
            continue
        if result is None:
            statuses[claimed.id] = "dead"
            unsent.append(
                {"tenant_id": tenant_id, "id": claimed.id, "error": ENDPOINT_DISABLED_ERROR}
            )
            continue
        status, next_attempt_at = next_state(
            claimed, result, at, endpoint_disabled=claimed.endpoint_id in disabled
        )
        statuses[claimed.id] = status
        sent.append(
            {
                "tenant_id": tenant_id,
                "id": claimed.id,
                "status": status,
                "attempt_count": claimed.attempt_number,
                "next_attempt_at": next_attempt_at,
                "status_code": result.status_code,
                "error": _error_text(result),
                "at": at,
                "delivered_at": at if status == "succeeded" else None,
            }
        )
        attempts.append(
            {
                "tenant_id": tenant_id,
                "delivery_id": claimed.id,
                "attempt_number": claimed.attempt_number,
                "status_code": result.status_code,
                "error": storable_text(result.error) if result.error else None,
                "duration_ms": result.duration_ms,
                # Checked again here: whatever produced the result, it must not fail the batch.
                "response_excerpt": storable_text(result.response_body_excerpt) or None,
                "attempted_at": at,
            }
        )
    if unsent:
        session.execute(_RECORD_UNSENT, unsent)
    if sent:
        session.execute(_RECORD_SENT, sent)
        session.execute(insert(_ATTEMPTS), attempts)
    return statuses


def next_state(
    claimed: ClaimedDelivery, result: DeliveryResult, at: datetime, *, endpoint_disabled: bool
) -> tuple[str, datetime | None]:
    """A sent delivery's new status and next attempt time: succeeded; failed, retried after its
    delay; or dead, out of attempts or with its endpoint disabled."""
    if result.ok:
        return "succeeded", None
    delay = (
        None
        if endpoint_disabled
        else retry_delay(claimed.attempt_number, result.retry_after_seconds)
    )
    if delay is None:
        return "dead", None
    return "failed", at + delay


def _apply_endpoint_effects(
    session: Session, tenant_id: uuid.UUID, outcomes: Sequence[DeliveryOutcome]
) -> set[uuid.UUID]:
    """410 disables the endpoint; a success ends its failure streak; a failure starts one, and a
    streak of 5 days disables it. Returns the endpoints disabled now. Each statement matches (and
    locks) rows only when their state changes, so successful deliveries never contend here."""
    last: dict[uuid.UUID, DeliveryOutcome] = {}
    first_failure: dict[uuid.UUID, datetime] = {}
    gone: set[uuid.UUID] = set()
    for outcome in outcomes:
        if outcome.result is None:
            continue
        endpoint_id = outcome.claimed.endpoint_id
        last[endpoint_id] = outcome
        if outcome.result.status_code == 410:
            gone.add(endpoint_id)
        elif not outcome.result.ok:
            first_failure.setdefault(endpoint_id, outcome.at)
    succeeded = [e for e, o in last.items() if e not in gone and o.result and o.result.ok]
    failing = [e for e, o in last.items() if e not in gone and o.result and not o.result.ok]
    endpoints = _ENDPOINTS.c
    mine = tenant_filter(_ENDPOINTS, tenant_id)
    if gone:
        session.execute(
            update(_ENDPOINTS)
            .where(mine, endpoints.id.in_(gone), endpoints.enabled.is_(True))
            .values(enabled=False, disabled_reason=DISABLED_GONE, updated_at=func.now())
        )
    if succeeded:
        session.execute(
            update(_ENDPOINTS)
            .where(mine, endpoints.id.in_(succeeded), endpoints.failing_since.is_not(None))
            .values(failing_since=None, updated_at=func.now())
        )
    disabled = set(gone)
    for endpoint_id in failing:
        since = first_failure.get(endpoint_id, last[endpoint_id].at)
        session.execute(
            update(_ENDPOINTS)
            .where(mine, endpoints.id == endpoint_id, endpoints.failing_since.is_(None))
            .values(failing_since=since, updated_at=func.now())
        )
        stopped = session.execute(
            update(_ENDPOINTS)
            .where(
                mine,
                endpoints.id == endpoint_id,
                endpoints.enabled.is_(True),
                endpoints.failing_since <= last[endpoint_id].at - DISABLE_AFTER_FAILING_FOR,
            )
            .values(enabled=False, disabled_reason=DISABLED_FAILING, updated_at=func.now())
            .returning(endpoints.id)
        ).first()
        if stopped is not None:
            disabled.add(endpoint_id)
    return disabled


def release_delivery(session: Session, claimed: ClaimedDelivery) -> bool:
    """Give an unsent claim back (worker stopping, or too little lease left to send it safely): it
    is due again at once, for any worker. Returns False when the claim no longer held the row."""
    deliveries = _DELIVERIES.c
    updated = session.execute(
        update(_DELIVERIES)
        .where(
            tenant_filter(_DELIVERIES, claimed.tenant_id),
            deliveries.id == claimed.id,
            deliveries.status == "delivering",
            deliveries.lease_expires_at == claimed.lease_expires_at,
        )
        .values(
            status="failed" if claimed.attempt_number > 1 else "pending",
            lease_expires_at=None,
            updated_at=func.now(),
        )
        .returning(deliveries.id)
    ).first()
    return updated is not None


def _error_text(result: DeliveryResult) -> str | None:
    if result.error:
        return storable_text(result.error)[:_MAX_ERROR_CHARS]
    if not result.ok and result.status_code is not None:
        return f"HTTP {result.status_code}"
    return None
