"""One real server for the CLI's tests: the app under uvicorn on an ephemeral port, in a thread,
with PUBLIC_BASE_URL pointing at it (as `make dev` gives it) and the fake LLM configurable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from app.api import deps
from app.config.settings import settings
from app.llm.agent import reset_llm_client
from app.telephony import relay as relay_protocol
from tests.fakes.fake_llm import FakeLLM, Script


@dataclass(frozen=True)
class LiveServer:
    url: str
    llm: FakeLLM


# Package scope: PUBLIC_BASE_URL points at this server only while the CLI's tests run.
@pytest.fixture(scope="package")
def live_server(app: Any) -> Iterator[LiveServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    with pytest.MonkeyPatch.context() as patch, FakeLLM() as llm:
        patch.setattr(settings, "PUBLIC_BASE_URL", url)
        patch.setattr(relay_protocol, "DTMF_SETTLE_SECONDS", 0.05)
        deps._twilio_urls.cache_clear()  # our URLs given to Twilio are built from PUBLIC_BASE_URL
        thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        try:
            yield LiveServer(url, llm)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            deps._twilio_urls.cache_clear()


@pytest.fixture
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    """The live server with no LLM configured (the apology path)."""
    yield live_server
    deadline = time.monotonic() + 10
    while relay_protocol.live_sessions() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def llm(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """The fake LLM as the server's LLM for this test."""
    server.llm.reset()
    server.llm.default = Script()
    server.llm.responder = None
    monkeypatch.setattr(settings, "LLM_BASE_URL", server.llm.base_url)
    monkeypatch.setattr(settings, "LLM_MODEL", "fake-model")
    reset_llm_client()
    yield server.llm
    reset_llm_client()
