"""Prometheus metrics (SPEC 13), served at GET /metrics.

With several uvicorn workers each process writes its figures to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen by that variable being set before start) and the
scrape sums them; without it, the process's own registry is served.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "vca_http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "vca_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
RELAY_SESSIONS = Gauge(
    "vca_relay_sessions", "Live ConversationRelay sessions.", multiprocess_mode="livesum"
)
AGENT_TURN_LATENCY = Histogram(
    "vca_agent_turn_latency_seconds",
    "Agent turn latency: caller's prompt received to the first token sent.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0),
)
CALLS = Counter(
    "vca_calls_total",
    "Calls admitted or refused, by direction and outcome (admitted or the refusal's reason).",
    ["direction", "outcome"],
)
DB_POOL_IN_USE = Gauge(
    "vca_db_pool_connections_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text of every process's figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
