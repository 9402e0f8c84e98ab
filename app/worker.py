"""The background worker process: delivers webhooks from the outbox (`python -m app.worker`).

The process around app/webhooks/delivery.py, which holds the rules: claim a batch (committed before
anything is sent), send each claim from a pool of threads, and store the outcomes from one recorder
thread, several per tenant transaction. New events wake the workers through LISTEN/NOTIFY (a poll
every second is the fallback). SIGTERM/SIGINT stop the worker cleanly: it stops claiming, finishes
the sends in progress and gives back the claims it has not started. Several workers may run at
once, on one host or many. Beside it, periodic jobs on threads of their own (`periodic_jobs`): the
usage thresholds, the billing close and the reconciliation of calls whose last callback was lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import FrameType
from typing import Any

import psycopg

from app.config.database import get_engine, transaction
from app.config.settings import settings
from app.logging import configure_logging
from app.models.base import utcnow
from app.services.billing import announce_usage_thresholds, close_due_periods
from app.services.events import NOTIFY_CHANNEL
from app.services.idempotency import prune_expired
from app.services.reconciliation import reconcile_stale_calls
from app.webhooks import retention
from app.webhooks.delivery import (
    ClaimedDelivery,
    DeliveryOutcome,
    can_send,
    claim_due_deliveries,
    record_delivery_outcomes,
    release_delivery,
    send,
    send_budget,
)
from app.webhooks.sender import close_shared_transports

logger = logging.getLogger("vca.worker")

DEFAULT_BATCH_SIZE = 100
DEFAULT_CONCURRENCY = 16
DEFAULT_POLL_INTERVAL = 1.0
# While claims fail (the database is gone), each wait doubles up to this: a long outage costs a
# log line every few seconds, and deliveries resume at most this long after it ends.
MAX_CLAIM_BACKOFF_SECONDS = 5.0
# Outcomes stored per transaction at most (a tenant's share of them, in a few round trips).
_MAX_RECORD_BATCH = 500
_RECORD_LINGER_SECONDS = 0.01
# Idempotency-Keys live 24 hours; the worker deletes the expired ones this often.
PRUNE_INTERVAL_SECONDS = 600.0
# Delivered webhooks older than WEBHOOK_RETENTION_DAYS: a few short batches this often.
RETENTION_INTERVAL_SECONDS = 60.0


class WebhookWorker:
    """Claims and delivers webhook deliveries; `run_once` for one batch, `run_forever` as a process.

    Sending happens on a pool of `concurrency` threads; one recorder thread stores the outcomes,
    several at a time per tenant transaction, so the database work per delivery stays small.
    """

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease: timedelta | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout_seconds: float | None = None,
    ) -> None:
        # Unless given: WEBHOOK_LEASE_SECONDS and WEBHOOK_TIMEOUT_SECONDS.
        if lease is None:
            lease = timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)
        if timeout_seconds is None:
            timeout_seconds = settings.WEBHOOK_TIMEOUT_SECONDS
        if lease <= send_budget(timeout_seconds):
            raise ValueError(f"the lease must outlast one send ({send_budget(timeout_seconds)})")
        self.batch_size = batch_size
        self._room_threshold = max(1, batch_size // 2)
        # Sending threads use a pooled connection only to give a claim back; the claim loop and the
        # recorder need one each: stay within the engine's pool (pool_size + max_overflow).
        self.concurrency = max(1, min(concurrency, 2 * settings.DATABASE_POOL_SIZE - 2))
        self.lease = lease
        self.poll_interval = poll_interval
        self.timeout_seconds = timeout_seconds
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

    def claim(self, limit: int | None = None) -> list[ClaimedDelivery]:
        """Claim up to `limit` (default: the batch size) due deliveries and commit the claim; or a
        delivery taken back from an expired lease, alone (`taken_over`)."""
        with transaction() as session:
            return claim_due_deliveries(
                session,
                now=utcnow(),
                limit=limit if limit is not None else self.batch_size,
                lease=self.lease,
            )

    def run_once(self) -> int:
        """Claim one batch, deliver it concurrently, record every outcome, and return how many
        deliveries were claimed."""
        claimed = self.claim()
        wait([self._submit(item) for item in claimed])
        return len(claimed)

    def deliver(self, claimed: ClaimedDelivery) -> str | None:
        """Send one claimed delivery and record the outcome; returns the new status, or None when
        it was not sent (given back) or its outcome could not be stored (claim lost)."""
        return self._submit(claimed).result()

    def run_forever(self) -> None:
        """Deliver until stop(): claim while there is room, sleep until a NOTIFY, a stop or the
        poll interval. On stop, finish the sends in progress and give back the rest."""
        listener: psycopg.Connection[Any] | None = None
        next_listen_attempt = 0.0
        next_prune = 0.0
        next_retention = 0.0
        failed_claims = 0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                    _prune_idempotency_keys()
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_INTERVAL_SECONDS
                    _purge_expired_webhooks()
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
                except Exception as exc:
                    failed_claims += 1
                    self._wait_for_work(None, timeout=self._claim_failed(exc, failed_claims))
                    continue
                if failed_claims:
                    logger.info(
                        "claiming webhook deliveries again", extra={"failed": failed_claims}
                    )
                    failed_claims = 0
                sent = [self._submit(item) for item in claimed]
                if any(item.taken_over for item in claimed):
                    # Taken back from a lost worker, maybe because sending it kills the worker:
                    # nothing more is claimed until its outcome is stored, so that if this worker
                    # dies sending it, no other claim loses an attempt with it.
                    wait(sent)
                    continue
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

    def _submit(self, claimed: ClaimedDelivery) -> Future[str | None]:
        done: Future[str | None] = Future()
        with self._in_flight_changed:
            self._in_flight += 1
        done.add_done_callback(self._done)
        self._executor.submit(self._process, claimed, done)
        return done

    def _process(self, claimed: ClaimedDelivery, done: Future[str | None]) -> None:
        try:
            if not claimed.endpoint_enabled:
                outcome = DeliveryOutcome(claimed, None, utcnow())
            elif self._stop.is_set() or not can_send(
                claimed, now=utcnow(), timeout_seconds=self.timeout_seconds
            ):
                # Stopping, or too little lease left: another worker could send it meanwhile.
                with transaction(claimed.tenant_id) as session:
                    release_delivery(session, claimed)
                done.set_result(None)
                return
            else:
                result = send(claimed, timeout_seconds=self.timeout_seconds)
                outcome = DeliveryOutcome(claimed, result, utcnow())
            self._outcomes.put(_Recorded(outcome, done))
        except Exception:
            # The claim stays until its lease expires; then the delivery is tried again, this
            # attempt counted with its outcome unknown.
            logger.exception("webhook delivery failed", extra={"delivery_id": str(claimed.id)})
            done.set_result(None)

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

    def _claim_failed(self, error: Exception, failures: int) -> float:
        """Log a failed claim (the traceback once per outage) and return how long to wait."""
        wait_seconds = max(
            self.poll_interval,
            min(MAX_CLAIM_BACKOFF_SECONDS, self.poll_interval * 2 ** min(failures - 1, 10)),
        )
        if failures == 1:
            logger.exception(
                "claiming webhook deliveries failed", extra={"retry_in_seconds": wait_seconds}
            )
        else:
            first_line = str(error).partition("\n")[0]
            logger.warning(
                "claiming webhook deliveries still failing",
                extra={
                    "failed": failures,
                    "retry_in_seconds": wait_seconds,
                    "error": f"{type(error).__name__}: {first_line[:300]}",
                },
            )
        return wait_seconds

    def _wait_for_work(
        self, listener: psycopg.Connection[Any] | None, *, timeout: float | None = None
    ) -> psycopg.Connection[Any] | None:
        """Block until a NOTIFY, a stop or `timeout` (the poll interval); returns the listener
        (None if broken)."""
        readable: list[Any] = [self._wake_read]
        if listener is not None:
            readable.append(listener)
        wait_seconds = self.poll_interval if timeout is None else timeout
        ready, _, _ = select.select(readable, [], [], wait_seconds)
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


def _purge_expired_webhooks() -> None:
    try:
        deliveries, events = retention.purge_expired()
    except Exception:
        logger.exception("deleting expired webhook deliveries failed")
        return
    if deliveries or events:
        logger.info("expired webhooks deleted", extra={"deliveries": deliveries, "events": events})


class Periodic(threading.Thread):
    """One of the worker's periodic jobs, on a thread of its own: `job()` every `interval` seconds
    until `stopping` is set. A pass that fails is logged and the next one runs."""

    def __init__(
        self, name: str, interval: float, job: Callable[[], object], stopping: threading.Event
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.job = job
        self.stopping = stopping

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.job()
            except Exception:
                logger.exception("periodic job failed", extra={"job": self.name})
            self.stopping.wait(self.interval)


def periodic_jobs(stopping: threading.Event) -> list[Periodic]:
    """The worker's periodic jobs, each on its own thread, so a month-end close that takes
    minutes delays neither the usage thresholds nor the reconciliation of lost callbacks."""
    return [
        Periodic("usage-thresholds", 10.0, announce_usage_thresholds, stopping),
        # Every tenant's ended periods, resting after each close as long as it took.
        Periodic("close-periods", 60.0, partial(close_due_periods, pause=stopping.wait), stopping),
        # Calls whose final status callback was lost.
        Periodic("reconcile-calls", 30.0, reconcile_stale_calls, stopping),
    ]


def main() -> int:
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT.value)
    worker = WebhookWorker()

    def on_signal(signum: int, _: FrameType | None) -> None:
        logger.info("worker stopping", extra={"signal": signal.Signals(signum).name})
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("worker started", extra={"concurrency": worker.concurrency})
    stopping = threading.Event()
    jobs = periodic_jobs(stopping)
    for job in jobs:
        job.start()
    try:
        worker.run_forever()
    finally:
        stopping.set()
        worker.close()
        close_shared_transports()
        get_engine().dispose()
    logger.info("worker stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
