"""`make dev` (scripts/dev.py) serves the API and the worker, and a signal stops both, exit 0.

Run from a directory laid out like a clone (this checkout's code, its own .data/), on the test
database, so the developer's .data/ is not touched; the embedded PostgreSQL's stop is pgserver's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.config.development import DEVELOPMENT_ACCOUNT_SID

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_make_dev_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    for name in ("app", "scripts", "alembic", "alembic.ini", "main.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "MIGRATION_DATABASE_URL": os.environ["MIGRATION_DATABASE_URL"],
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    dev = subprocess.Popen(
        [sys.executable, "-m", "scripts.dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert dev.poll() is None, dev.communicate()[0]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "make dev did not start"
                time.sleep(0.2)
        assert health["checks"]["telephony"] == "development"
        kept = (tmp_path / ".data" / "dev.env").read_text()
        assert f'TWILIO_ACCOUNT_SID="{DEVELOPMENT_ACCOUNT_SID}"' in kept
        assert f'PUBLIC_BASE_URL="http://localhost:{port}"' in kept
        assert "LLM_" not in kept
        assert (tmp_path / ".data" / "demo-tenant-id").exists()
        children = psutil.Process(dev.pid).children()
        assert len(children) == 2  # the API and the worker

        dev.send_signal(signal.SIGTERM)
        output, _ = dev.communicate(timeout=30)
    finally:
        if dev.poll() is None:
            # Its API and worker too: a worker left running on the test database claims the
            # deliveries and invoices of every later test.
            for child in psutil.Process(dev.pid).children(recursive=True):
                child.kill()
            dev.kill()
    assert dev.returncode == 0, output
    assert not any(child.is_running() for child in children)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
