"""Request ids, the log lines that carry them, and GET /metrics (SPEC 4 and 13)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.logging import configure_logging
from app.services.plans import PlanService
from tests.helpers import TenantFixture


def test_every_response_carries_a_request_id(client: TestClient, tenant: TenantFixture) -> None:
    sane = "req-7f3a:retry/2"
    assert client.get("/healthz", headers={"X-Request-ID": sane}).headers["x-request-id"] == sane
    for insane in ("has space", "x" * 129, "é"):
        response = client.get("/", headers={"X-Request-ID": insane.encode()})
        assert response.headers["x-request-id"] not in (insane, "")
    generated = {
        client.get(tenant.url("/calls")).headers["x-request-id"],  # 401
        client.post(tenant.url("/ai-profiles"), content=b"x", headers=tenant.headers).headers[
            "x-request-id"
        ],  # 415, refused at the edge
        client.get("/nowhere").headers["x-request-id"],  # 404
    }
    assert len(generated) == 3


def test_an_unhandled_error_is_a_500_with_a_code_and_a_request_id(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: PlanService) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(PlanService, "list", explode)
    response = client.get("/api/v1/plans", headers={**tenant.headers, "X-Request-ID": "r-500"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal error.", "code": "internal_error"}
    assert response.headers["x-request-id"] == "r-500"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_of_a_request_carry_its_request_id_and_tenant(
    client: TestClient,
    tenant: TenantFixture,
    restored_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")  # here: the handler writes to the captured stdout
    client.get(tenant.url("/calls"), headers={**tenant.headers, "X-Request-ID": "trace-1"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [line] = [line for line in lines if line["msg"] == "request"]
    assert line["request_id"] == "trace-1"
    assert line["tenant_id"] == str(tenant.id)
    assert line["route"] == "/api/v1/tenants/{tenant_id}/calls"
    assert line["status"] == 200


def test_metrics_need_the_admin_key_and_count_requests_by_route_template(
    client: TestClient, tenant: TenantFixture, admin_headers: dict[str, str]
) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=tenant.headers).status_code == 403
    client.get(tenant.url("/calls"), headers=tenant.headers)
    response = client.get("/metrics", headers=admin_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'vca_http_requests_total{method="GET",route="/api/v1/tenants/{tenant_id}/calls",'
        'status="200"}' in text
    )
    for name in (
        "vca_http_request_duration_seconds_bucket",
        "vca_relay_sessions",
        "vca_agent_turn_latency_seconds",
        "vca_db_pool_connections_in_use",
    ):
        assert name in text
    assert str(tenant.id) not in text  # label values are templates, never ids


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    """prometheus-client's multiprocess mode: each uvicorn worker writes its own files and a
    scrape served by any one of them sums them all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = "from app import metrics; metrics.observe_request('GET', '/x', 200, 0.01)"
    for _ in range(2):  # two workers
        subprocess.run([sys.executable, "-c", record], env=env, check=True)
    scrape = "from app import metrics; print(metrics.render()[0].decode())"
    out = subprocess.run(
        [sys.executable, "-c", scrape], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert 'vca_http_requests_total{method="GET",route="/x",status="200"} 2.0' in out
