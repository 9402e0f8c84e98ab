"""Fault drill: PostgreSQL goes away under a running API and worker, then comes back.

Real processes on a throwaway PostgreSQL of their own (pgserver's binaries, in a tmp dir, on a
TCP port of 127.0.0.1), never the suite's server: the drill stops and starts it. The API
(uvicorn) and the worker (`python -m app.worker`) run as `make dev` runs them; neither restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from scripts.devdb import DatabaseUrls, provision
from tests.fakes.receiver import WebhookReceiver
from tests.helpers import TenantFixture, make_tenant, random_e164, twilio_call_sid, twilio_post

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL server in a tmp dir that the drill stops and starts on the same port."""

    pgdata: Path
    port: int
    system_user: str | None  # pgserver runs postgres as its own user when we are root

    def _pg_ctl(self, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=self.system_user, timeout=30)

    def start(self) -> None:
        listen = f"-h 127.0.0.1 -p {self.port} -k ''"  # TCP only, as a remote server
        self._pg_ctl("-w", "-o", listen, "-l", str(self.pgdata / "log"), "start")

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")  # terminates every backend at once

    @property
    def superuser_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def throwaway_postgres(tmp_path: Path) -> Iterator[ThrowawayPostgres]:
    try:
        import pgserver

        warnings.filterwarnings("ignore", module="platformdirs")
        # pgserver initialises the cluster (as its own user when we are root) and starts it on
        # a socket; the drill restarts it on TCP, where a real deployment's server listens.
        handle = pgserver.get_server(str(tmp_path / "pg"), cleanup_mode=None)
    except Exception as exc:
        pytest.skip(f"no throwaway PostgreSQL (pgserver could not start one): {exc}")
    server = ThrowawayPostgres(handle.pgdata, free_port(), handle.system_user)
    server.stop()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop()


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)


def _log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (uvicorn's own lines are plain text: skipped)."""
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):  # a line still being written
                lines.append(json.loads(line))
    return lines


def _assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "detail": "The database is unavailable; retry shortly.",
        "code": "database_unavailable",
    }
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-request-id"]


def _wait_until_delivered(
    http: httpx.Client, tenant: TenantFixture, queued: dict[str, Any]
) -> None:
    """Until the worker has recorded the delivery (not only sent it): a database stopped in
    between would leave its outcome unrecorded, and the drill would see it sent again."""
    url = tenant.url(f"/webhooks/{queued['endpoint_id']}/deliveries/{queued['id']}")
    deadline = time.monotonic() + 10
    while http.get(url, headers=tenant.headers).json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the delivery was never recorded"
        time.sleep(0.05)


def test_drill_postgres_stopped_answers_503_and_recovers_without_restarts(
    throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    began = time.monotonic()
    pg = throwaway_postgres
    urls: DatabaseUrls = provision(pg.superuser_url, "vca_drill")
    env = {
        **os.environ,
        "DATABASE_URL": urls.app,
        "MIGRATION_DATABASE_URL": urls.owner,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    # Two connections at most, each awaited 1 s: the drill can exhaust the pool in a second. As
    # many threads as connections: the requests stuck on the database hold every thread too, and
    # the next one must still answer 503 within the timeout (it waited for a thread forever).
    api_env = {
        **env,
        "DATABASE_POOL_SIZE": "1",
        "DATABASE_POOL_TIMEOUT_SECONDS": "1",
        "API_THREADS": "2",
    }
    api_port = free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    uvicorn = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(api_port)]
    processes = [_spawn(uvicorn, api_env, api_log)]  # its import overlaps the migration
    migrated = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    processes.append(_spawn([sys.executable, "-m", "app.worker"], env, worker_log))
    api, worker = processes
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=15)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, api_log.read_text()
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        ready = time.monotonic()
        admin = {"Authorization": f"Bearer {os.environ['ADMIN_API_KEY']}"}
        tenant = make_tenant(http, admin)
        calls = tenant.url("/calls")

        with WebhookReceiver() as receiver:
            created = http.post(
                tenant.url("/webhooks"), json={"url": receiver.url()}, headers=tenant.headers
            ).json()
            receiver.secret = created["secret"]
            test_event = tenant.url(f"/webhooks/{created['id']}/test")

            def send_test_event(expected: int) -> None:
                queued = http.post(test_event, headers=tenant.headers)
                assert queued.status_code == 202, queued.text
                assert receiver.wait_for(expected, timeout=15, verified=True), worker_log
                _wait_until_delivered(http, tenant, queued.json())

            send_test_event(1)

            # A database that holds every connection (here a lock) is unavailable too: past
            # DATABASE_POOL_TIMEOUT_SECONDS a request answers 503 rather than queueing on.
            with psycopg.connect(urls.owner.replace("+psycopg", "")) as locker:
                locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
                held: list[httpx.Response] = []
                holders = [
                    threading.Thread(
                        target=lambda: held.append(http.get(calls, headers=tenant.headers))
                    )
                    for _ in range(2)
                ]
                for thread in holders:
                    thread.start()
                deadline = time.monotonic() + 10
                waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
                while locker.execute(waiting).fetchone() != (2,):
                    assert time.monotonic() < deadline, "the requests never reached the lock"
                    time.sleep(0.02)
                started = time.monotonic()
                _assert_database_unavailable(http.get(calls, headers=tenant.headers))
                pool_wait = time.monotonic() - started
                # Readiness says so in as long (it waited for a thread without end), and a
                # scrape, which reads no database, is not held up at all.
                started = time.monotonic()
                health = http.get("/healthz")
                assert health.status_code == 503, health.text
                assert health.json()["checks"]["database"] == "unavailable"
                health_wait = time.monotonic() - started
                scrape = http.get("/metrics", headers=admin)
                assert scrape.status_code == 200 and "vca_" in scrape.text, scrape.text[:300]
                locker.rollback()
            for thread in holders:
                thread.join(timeout=10)
            assert [r.status_code for r in held] == [200, 200]
            assert 0.9 <= pool_wait < 5, pool_wait
            assert 0.9 <= health_wait < 5, health_wait

            # PostgreSQL stops: every pooled connection dies, and new ones are refused.
            pg.stop()
            stopped = time.monotonic()
            for path, headers in (
                (calls, tenant.headers),
                (tenant.url("/webhooks"), tenant.headers),
                ("/api/v1/tenants", admin),
            ):
                started = time.monotonic()
                _assert_database_unavailable(http.get(path, headers=headers))
                assert time.monotonic() - started < 5  # refused at once, not hanging
            health = http.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            # Twilio's voice webhook too: Twilio then asks the number's fallback URL.
            ringing = {"CallSid": twilio_call_sid(), "From": random_e164(), "To": random_e164()}
            _assert_database_unavailable(twilio_post(http, "/telephony/twilio/voice", ringing))
            # Down until the worker has failed to claim twice (it waits longer after each).
            deadline = time.monotonic() + 15
            while not any(
                line["msg"] == "claiming webhook deliveries still failing"
                for line in _log_lines(worker_log)
            ):
                assert time.monotonic() < deadline, worker_log.read_text()
                time.sleep(0.1)
            assert api.poll() is None and worker.poll() is None

            # PostgreSQL is back on the same port and data: the same processes carry on.
            pg.start()
            restarted = time.monotonic()
            after_outage = _statuses_until_ok(http, calls, tenant)
            assert after_outage[-1] == 200, after_outage
            send_test_event(2)
            recovered_in = time.monotonic() - restarted

            # Restarted with no request in between: the pool holds connections that died while
            # idle. No pre-ping, so one request may meet one (503); the next one reconnects.
            pg.stop()
            pg.start()
            after_quiet_restart = _statuses_until_ok(http, calls, tenant)
            assert after_quiet_restart[-1] == 200, after_quiet_restart
            send_test_event(3)
            assert api.poll() is None and worker.poll() is None
    finally:
        http.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    assert worker.returncode == 0  # and it still stops cleanly
    assert len(receiver.received) == 3, [r.webhook_id for r in receiver.received]

    # The worker logged each outage it met (one traceback each), backed off, and said it was
    # back. (Another of its threads may be the one to meet the quiet restart's dead connections.)
    lines = [line for line in _log_lines(worker_log) if "claiming" in line["msg"]]
    messages = [line["msg"].removeprefix("claiming webhook deliveries ") for line in lines]
    assert messages.count("failed") == messages.count("again") >= 1, messages
    assert all(
        ("exc" in line) == (message == "failed")
        for line, message in zip(lines, messages, strict=True)
    )
    # The first outage, a few seconds long: a wait after each failure, longer each time.
    first_outage = lines[: messages.index("again")]
    waits = [line["retry_in_seconds"] for line in first_outage]
    assert len(waits) >= 2 and waits[0] < waits[1] and waits == sorted(waits), waits
    print(
        f"\nready in {ready - began:.1f} s; pool wait {pool_wait:.1f} s; down "
        f"{restarted - stopped:.1f} s; then {after_outage}, delivering again in "
        f"{recovered_in:.1f} s; claims failed {len(waits)} times, waits {waits}; quiet restart: "
        f"{after_quiet_restart}"
    )


def _statuses_until_ok(http: httpx.Client, path: str, tenant: TenantFixture) -> list[int]:
    """The statuses of the requests after a restart, up to the first 200: a request may still
    meet a connection that died (503, in the usual shape), and the next one must not."""
    first = http.get(path, headers=tenant.headers)
    if first.status_code != 503:
        return [first.status_code]
    _assert_database_unavailable(first)
    return [503, http.get(path, headers=tenant.headers).status_code]
