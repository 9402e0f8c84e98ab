"""Structured logs: one JSON object per line in production, readable lines in development."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from app.context import current_context

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        return base + ("  " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


# httpx: the LLM client's (app/llm/client.py).
HTTP_CLIENT_LOGGERS = ("httpx",)


class ContextFilter(logging.Filter):
    """Every line written while serving a request or a relay session carries its request_id,
    tenant_id and call_id (where known): app/context.py."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_context()
        if context is not None:
            for key, value in context.log_fields().items():
                if key not in record.__dict__:
                    setattr(record, key, value)
        return True


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else ConsoleFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    )
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs one INFO line per request: every LLM call of a relay turn (written in the event
    # loop before the first token is read) and every Twilio request, with no call or tenant id.
    # Our own lines say what failed and for whom; LOG_LEVEL=DEBUG shows theirs again.
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )
