"""The background worker: delivers webhooks from the outbox (`python -m app.worker`).

Several workers may run at once. Each claims due deliveries across all tenants with
`SELECT … FOR UPDATE SKIP LOCKED`, marks them `delivering` with a lease and commits, then sends them
outside any transaction from a small thread pool, and records each outcome in that delivery's
tenant transaction. A worker killed mid-delivery loses nothing: once the lease expires another
worker takes the delivery, with the same `webhook-id`. New events wake the workers through
LISTEN/NOTIFY (a poll every second is the fallback). SIGTERM/SIGINT stop the worker cleanly: it
stops claiming, finishes the sends in progress and gives back the claims it has not started.

Time for scheduling (what is due, leases, retry times) comes from an injectable clock, so tests
drive days of retries without sleeping; the `webhook-timestamp` header is always the real time,
since receivers check it against their own clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import psycopg
from standardwebhooks import Webhook

from app.config.database import get_engine, system_scope, transaction
from app.config.settings import settings
from app.logging import configure_logging
from app.models.base import utcnow
from app.services.billing import PeriodCloser
from app.services.events import NOTIFY_CHANNEL
from app.services.idempotency import prune_expired
from app.services.reconciliation import Reconciler
from app.services.webhooks import (
    ClaimedDelivery,
    DeliveryOutcome,
    claim_due_deliveries,
    record_delivery_outcomes,
    release_delivery,
)
from app.webhooks.sender import (
    DEFAULT_TIMEOUT_SECONDS,
    DeliveryResult,
    close_shared_transports,
    post_webhook,
)

logger = logging.getLogger("vca.worker")

Clock = Callable[[], datetime]
Sender = Callable[..., DeliveryResult]

DEFAULT_BATCH_SIZE = 100
DEFAULT_CONCURRENCY = 16
# Long enough for a full batch queued behind slow endpoints; a claim whose lease would run out
# before its send could finish is given back instead of sent (see _deliver).
DEFAULT_LEASE = timedelta(minutes=2)
DEFAULT_POLL_INTERVAL = 1.0
_LEASE_MARGIN = timedelta(seconds=5)
# Outcomes stored per transaction at most (a tenant's share of them, in one statement).
_MAX_RECORD_BATCH = 500
_RECORD_LINGER_SECONDS = 0.01
# Idempotency-Keys live 24 hours; the worker deletes the expired ones this often.
PRUNE_INTERVAL_SECONDS = 600.0


class WebhookWorker:
    """Claims and delivers webhook deliveries; `run_once` for one batch, `run_forever` as a process.

    Sending happens on a pool of `concurrency` threads; one recorder thread stores the outcomes,
    several at a time per tenant transaction, so the database work per delivery stays small.
    `tenant_ids` restricts the claims to those tenants (for tests sharing one database).
    """

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease: timedelta = DEFAULT_LEASE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Clock = utcnow,
        tenant_ids: Sequence[uuid.UUID] | None = None,
        sender: Sender = post_webhook,
    ) -> None:
        if lease <= timedelta(seconds=timeout_seconds) + _LEASE_MARGIN:
            raise ValueError("the lease must outlast one send (timeout + 5 s)")
        self.batch_size = batch_size
        self._room_threshold = max(1, batch_size // 2)
        # Sending threads use a pooled connection only to give a claim back; the claim loop and the
        # recorder need one each: stay within the engine's pool (pool_size + max_overflow).
        self.concurrency = max(1, min(concurrency, 2 * settings.DATABASE_POOL_SIZE - 2))
        self.lease = lease
        self.poll_interval = poll_interval
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.tenant_ids = list(tenant_ids) if tenant_ids is not None else None
        self._send = sender
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="webhook-send"
        )
        self._outcomes: queue.SimpleQueue[_Recorded | None] = queue.SimpleQueue()
        self._recorder = threading.Thread(
            target=self._record_loop, name="webhook-recorder", daemon=True
        )
        self._recorder.start()
        self._stop = threading.Event()
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        # A self-pipe wakes the LISTEN select() at once on stop(), even from a signal handler.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._closed = False

    # --- the public surface --------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler or another thread)."""
        self._stop.set()
        # A full pipe already holds a pending wake-up; a closed one means the worker is closed.
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        # notify_all needs the lock; a signal handler must not wait for it, so a helper does it.
        threading.Thread(target=self._notify_in_flight, daemon=True).start()

    def claim(self, now: datetime | None = None, limit: int | None = None) -> list[ClaimedDelivery]:
        """Claim up to `limit` (default: the batch size) due deliveries and commit the claim.

        This is the worker's cross-tenant call site (SPEC §2: the worker's claim loop).
        """
        at = now if now is not None else self.clock()
        with transaction() as session, system_scope(session):
            return claim_due_deliveries(
                session,
                now=at,
                limit=limit if limit is not None else self.batch_size,
                lease=self.lease,
                tenant_ids=self.tenant_ids,
            )

    def run_once(self, now: datetime | None = None) -> int:
        """Claim one batch, deliver it concurrently, record every outcome, and return how many
        deliveries were claimed.

        With `now`, that instant is used for everything in the batch (due times, leases, retry
        times, the attempt log), so tests can jump across days of retries.
        """
        claimed = self.claim(now)
        wait([self._submit(item, now) for item in claimed])
        return len(claimed)

    def deliver(self, claimed: ClaimedDelivery, now: datetime | None = None) -> str | None:
        """Send one claimed delivery and record the outcome; returns the new status, or None when
        it was not sent (given back) or its outcome could not be stored (claim lost)."""
        return self._submit(claimed, now).result()

    def run_forever(self) -> None:
        """Deliver until stop(): claim while there is room, sleep until a NOTIFY, a stop or the
        poll interval. On stop, finish the sends in progress and give back the rest."""
        listener: psycopg.Connection[Any] | None = None
        next_listen_attempt = 0.0
        next_prune = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                    _prune_idempotency_keys()
                if listener is None and time.monotonic() >= next_listen_attempt:
                    listener = self._listen()
                    if listener is None:
                        next_listen_attempt = time.monotonic() + 5.0
                # Claim in batches: wait until at least half a batch has room.
                if not self._wait_for_room():
                    continue
                room = self.batch_size - self._in_flight
                try:
                    claimed = self.claim(limit=room)
                except Exception:
                    logger.exception("claiming webhook deliveries failed")
                    claimed = []
                    self._wait_for_work(None)
                for item in claimed:
                    self._submit(item, None)
                if claimed and len(claimed) == room:
                    continue  # a backlog: claim again as soon as there is room
                listener = self._wait_for_work(listener)
        finally:
            self._drain()
            if listener is not None:
                listener.close()

    def close(self) -> None:
        """Stop, let the sends and the recording finish, and free the threads."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._executor.shutdown(wait=True)
        self._outcomes.put(None)
        self._recorder.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    # --- sending (pool threads) ----------------------------------------------------------------

    def _submit(self, claimed: ClaimedDelivery, now: datetime | None) -> Future[str | None]:
        done: Future[str | None] = Future()
        with self._in_flight_changed:
            self._in_flight += 1
        done.add_done_callback(self._done)
        self._executor.submit(self._process, claimed, now, done)
        return done

    def _process(
        self, claimed: ClaimedDelivery, now: datetime | None, done: Future[str | None]
    ) -> None:
        try:
            if not claimed.endpoint_enabled:
                at = now if now is not None else self.clock()
                self._outcomes.put(_Recorded(DeliveryOutcome(claimed, None, at), done))
                return
            check_at = now if now is not None else self.clock()
            if self._stop.is_set() or check_at + self._send_budget() > claimed.lease_expires_at:
                # Stopping, or the lease could run out mid-send and another worker send it too.
                with transaction(claimed.tenant_id) as session:
                    release_delivery(session, claimed)
                done.set_result(None)
                return
            body, headers = sign_delivery(claimed)
            result = self._send(
                claimed.url,
                body,
                headers,
                timeout_seconds=self.timeout_seconds,
                allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS,
                require_https=settings.webhook_require_https,
            )
            at = now if now is not None else self.clock()
            self._outcomes.put(_Recorded(DeliveryOutcome(claimed, result, at), done))
        except Exception:
            # The claim stays until its lease expires; then the delivery is tried again.
            logger.exception("webhook delivery failed", extra={"delivery_id": str(claimed.id)})
            done.set_result(None)

    def _send_budget(self) -> timedelta:
        return timedelta(seconds=self.timeout_seconds) + _LEASE_MARGIN

    # --- recording (one thread) ----------------------------------------------------------------

    def _record_loop(self) -> None:
        """Store outcomes in batches: what arrives within a few milliseconds of the first one goes
        into the same transaction (a single delivery costs a transaction; a hundred cost barely
        more), so the delay buys most of the worker's throughput."""
        while True:
            first = self._outcomes.get()
            if first is None:
                return
            batch = [first]
            closing = False
            deadline = time.monotonic() + _RECORD_LINGER_SECONDS
            while len(batch) < _MAX_RECORD_BATCH:
                try:
                    item = self._outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                self._record(batch)
            except Exception:
                # Never let the recorder die: run_once and the drain wait for every outcome.
                logger.exception("recording webhook delivery outcomes failed")
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)
            if closing:
                return

    def _record(self, batch: list[_Recorded]) -> None:
        by_tenant: dict[uuid.UUID, list[_Recorded]] = {}
        for item in batch:
            by_tenant.setdefault(item.outcome.claimed.tenant_id, []).append(item)
        for tenant_id, items in by_tenant.items():
            statuses: dict[uuid.UUID, str] | None = None
            for attempt in (1, 2):  # once more after e.g. a deadlock or a dropped connection
                try:
                    with transaction(tenant_id) as session:
                        statuses = record_delivery_outcomes(
                            session, tenant_id, [item.outcome for item in items]
                        )
                    break
                except Exception:
                    logger.warning(
                        "storing webhook delivery outcomes failed",
                        exc_info=True,
                        extra={"tenant_id": str(tenant_id), "try": attempt},
                    )
            for item in items:
                self._report(item, statuses)

    def _report(self, item: _Recorded, statuses: dict[uuid.UUID, str] | None) -> None:
        claimed, result = item.outcome.claimed, item.outcome.result
        status = statuses.get(claimed.id) if statuses is not None else None
        if statuses is not None and status is None:
            logger.warning(
                "webhook delivery claim lost before its outcome was stored",
                extra={"delivery_id": str(claimed.id)},
            )
        elif status not in (None, "succeeded"):
            logger.info(
                "webhook delivery %s",
                status,
                extra={
                    "delivery_id": str(claimed.id),
                    "tenant_id": str(claimed.tenant_id),
                    "attempt": claimed.attempt_number,
                    "status_code": result.status_code if result else None,
                    "error": result.error if result else "endpoint disabled",
                },
            )
        item.done.set_result(status)

    # --- flow control and waking up ------------------------------------------------------------

    def _done(self, _: object) -> None:
        with self._in_flight_changed:
            self._in_flight -= 1
            # Wake the claim loop only when it can act: half a batch of room, or all done.
            if self._in_flight == 0 or self.batch_size - self._in_flight == self._room_threshold:
                self._in_flight_changed.notify_all()

    def _notify_in_flight(self) -> None:
        with self._in_flight_changed:
            self._in_flight_changed.notify_all()

    def _wait_for_room(self) -> bool:
        """True when at least half a batch can be claimed; False after the poll interval or a stop."""
        with self._in_flight_changed:
            has_room = self._in_flight_changed.wait_for(
                lambda: (
                    self._stop.is_set() or self.batch_size - self._in_flight >= self._room_threshold
                ),
                timeout=self.poll_interval,
            )
        return has_room and not self._stop.is_set()

    def _drain(self) -> None:
        """Wait for what was submitted: sends in progress finish, the others are given back."""
        self._stop.set()
        with self._in_flight_changed:
            self._in_flight_changed.wait_for(lambda: self._in_flight == 0)

    def _listen(self) -> psycopg.Connection[Any] | None:
        """A dedicated autocommit connection LISTENing for new deliveries (None if it fails: the
        worker then polls)."""
        engine = get_engine()
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        try:
            connection = psycopg.connect(*args, **kwargs, autocommit=True)
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error:
            logger.warning("LISTEN failed; polling for webhook deliveries instead", exc_info=True)
            return None
        return connection

    def _wait_for_work(
        self, listener: psycopg.Connection[Any] | None
    ) -> psycopg.Connection[Any] | None:
        """Block until a NOTIFY, a stop or the poll interval; returns the listener (None if broken)."""
        readable: list[Any] = [self._wake_read]
        if listener is not None:
            readable.append(listener)
        ready, _, _ = select.select(readable, [], [], self.poll_interval)
        if self._wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 512):
                    pass
        if listener is not None and listener in ready:
            try:
                for _ in listener.notifies(timeout=0):
                    pass  # drained: the rows are the message
            except psycopg.Error:
                logger.warning("the LISTEN connection broke; reconnecting", exc_info=True)
                listener.close()
                return None
        return listener


@dataclass(frozen=True)
class _Recorded:
    outcome: DeliveryOutcome
    done: Future[str | None]


def _prune_idempotency_keys() -> None:
    try:
        prune_expired()
    except Exception:
        logger.exception("pruning expired idempotency keys failed")


def sign_delivery(claimed: ClaimedDelivery) -> tuple[bytes, dict[str, str]]:
    """The body and Standard Webhooks headers of one attempt: `webhook-id` is the delivery id,
    `webhook-timestamp` the real current time, `webhook-signature` one `v1,` signature per active
    secret (two during a rotation's grace period)."""
    payload = claimed.payload
    body = json.dumps(
        {"type": payload["type"], "timestamp": payload["timestamp"], "data": payload["data"]},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    msg_id = str(claimed.id)
    timestamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
    signatures = " ".join(
        Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body)
        for secret in claimed.secrets
    )
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
    }
    return body.encode("utf-8"), headers


def main() -> int:
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT.value)
    worker = WebhookWorker()

    def on_signal(signum: int, _: FrameType | None) -> None:
        logger.info("worker stopping", extra={"signal": signal.Signals(signum).name})
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("worker started", extra={"concurrency": worker.concurrency})
    closer = PeriodCloser()  # billing: invoices every tenant's ended periods, once a minute
    closer.start()
    reconciler = Reconciler()  # calls whose final status callback was lost, every 30 s
    reconciler.start()
    try:
        worker.run_forever()
    finally:
        closer.stop()
        reconciler.stop()
        worker.close()
        close_shared_transports()
        get_engine().dispose()
    logger.info("worker stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
