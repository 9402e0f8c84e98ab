"""Log configuration: what reaches stdout."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.logging import HTTP_CLIENT_LOGGERS, configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in HTTP_CLIENT_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _request(http: Any) -> None:
    with http.Client(transport=http.MockTransport(lambda _: http.Response(200))) as client:
        client.post("http://llm.invalid/v1/chat/completions")


@pytest.mark.parametrize("module", HTTP_CLIENT_LOGGERS)
def test_http_client_request_lines_only_when_debugging(
    restored_logging: None, capsys: pytest.CaptureFixture[str], module: str
) -> None:
    """httpx writes a line per request (each LLM call of a relay turn) with no call or tenant id:
    kept out of the log at INFO, shown at DEBUG."""
    http = importlib.import_module(module)
    configure_logging("INFO", "json")
    _request(http)
    logging.getLogger("vca.relay").info("turn done")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["msg"] for line in lines] == ["turn done"]

    configure_logging("DEBUG", "json")
    _request(http)
    assert "HTTP Request: POST http://llm.invalid" in capsys.readouterr().out
