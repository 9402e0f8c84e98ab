"""How many live calls this process holds, the cap on them, the SIGTERM drain, the loop's lag.

A ConversationRelay call is a WebSocket held open on one process for minutes, so capacity is per
process: `MAX_LIVE_CALLS_PER_PROCESS` sessions. The voice webhook asks `has_room()` before it
answers, and a full (or draining) process refuses the call with HTTP 503 so that Twilio's fallback
URL (another box) answers it, instead of every call on this process slowing down.

The count covers sessions bound on this process and calls this process admitted in the last few
seconds that have not connected yet (a burst of webhooks must not all fit in the same free slot).
With several uvicorn workers each process keeps its own count: the kernel spreads sockets about
evenly, so a box holds about workers × cap, and a webhook can land on a full worker while another
has room (it is refused; the fallback answers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.config.settings import settings

__all__ = ["LiveCalls", "LoopLag", "install_drain", "live_calls", "loop_lag"]

logger = logging.getLogger("vca.relay")

# Twilio opens the relay socket within a second or two of our TwiML; a reservation that has not
# turned into a session by then is a call that never connected (or connected to another worker).
RESERVATION_SECONDS = 10.0


class LiveCalls:
    """The relay sessions of this process, against the cap; thread-safe (webhooks run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: set[object] = set()
        self._reserved: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._empty: asyncio.Event | None = None
        self.draining = False
        self.refused = 0

    @property
    def cap(self) -> int:
        return settings.MAX_LIVE_CALLS_PER_PROCESS

    def count(self) -> int:
        return len(self._sessions)

    def reserved(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._reserved)

    def has_room(self) -> bool:
        """Whether the voice webhook may admit one more call here (False while draining)."""
        if self.draining:
            return False
        with self._lock:
            self._expire(time.monotonic())
            room = len(self._sessions) + len(self._reserved) < self.cap
            if not room:
                self.refused += 1
            return room

    def reserve(self, call_id: uuid.UUID) -> None:
        """Hold a slot for an admitted call until its socket binds (or the reservation ends)."""
        with self._lock:
            self._reserved[call_id] = time.monotonic() + RESERVATION_SECONDS
            self._reserved.move_to_end(call_id)  # a retried webhook's slot: deadlines stay in order

    def add(self, session: object, call_id: uuid.UUID) -> None:
        with self._lock:
            self._reserved.pop(call_id, None)
            self._sessions.add(session)

    def discard(self, session: object) -> None:
        with self._lock:
            self._sessions.discard(session)
            empty = not self._sessions
        if empty and self._empty is not None:
            self._empty.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until no session is live (True), or `timeout` seconds (False)."""
        self._empty = asyncio.Event()
        if not self._sessions:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        return not self._sessions

    def _expire(self, now: float) -> None:
        # Deadlines are in order, so the expired ones are at the front: a webhook pays for those,
        # not for a scan of every call admitted in the last RESERVATION_SECONDS.
        while self._reserved:
            call_id, until = next(iter(self._reserved.items()))
            if until > now:
                return
            del self._reserved[call_id]

    def report(self) -> dict[str, Any]:
        return {
            "live_sessions": self.count(),
            "reserved": self.reserved(),
            "max_live_calls": self.cap,
            "draining": self.draining,
            "refused_capacity": self.refused,
        }


live_calls = LiveCalls()


def install_drain(loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """On SIGTERM: refuse new calls, let the live ones finish (up to `timeout`), then let the
    server stop as it would have. A second SIGTERM stops it at once.

    uvicorn closes every WebSocket (1012) as soon as it starts shutting down, so the signal is
    taken before it sees it. Only in the main thread, where uvicorn installed its handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    stop: Callable[[int, FrameType | None], Any] = server_handler

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if live_calls.draining:
            stop(signum, frame)
            return
        live_calls.draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(_drain(stop, signum, timeout)))

    signal.signal(signal.SIGTERM, on_sigterm)


async def _drain(stop: Callable[[int, FrameType | None], Any], signum: int, timeout: float) -> None:
    logger.info("draining: new calls refused", extra={"live_sessions": live_calls.count()})
    finished = await live_calls.wait_empty(timeout)
    logger.info(
        "drained" if finished else "drain timed out",
        extra={"live_sessions": live_calls.count()},
    )
    stop(signum, None)


class LoopLag:
    """How late the event loop wakes a task that asked to sleep `interval`: what every frame on
    this process waits behind. Samples of the last `window` seconds."""

    def __init__(self, interval: float = 0.05, window: float = 30.0) -> None:
        self.interval = interval
        self.window = window
        self._samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self._samples.append((now, (now - before - self.interval) * 1000))
            if len(self._samples) > 2 * self.window / self.interval:
                cutoff = now - self.window
                self._samples = [s for s in self._samples if s[0] >= cutoff]

    def report(self) -> dict[str, float]:
        cutoff = time.perf_counter() - self.window
        lags = sorted(lag for at, lag in self._samples if at >= cutoff)
        if not lags:
            return {}
        return {
            "p50_ms": round(lags[len(lags) // 2], 2),
            "p99_ms": round(lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))], 2),
            "max_ms": round(lags[-1], 2),
            "window_seconds": self.window,
        }


loop_lag = LoopLag()
