from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from app.services import health


def test_healthz_reports_ok_with_rls_enforced(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == "ok"
    assert body["checks"]["rls"] == "enforced"
    assert body["checks"]["llm"] == "not_configured"
    assert "ADMIN" not in response.text and "postgresql" not in response.text


def test_healthz_degrades_when_database_is_down_and_recovers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")
    monkeypatch.setattr(health, "get_engine", lambda: unreachable)
    down = client.get("/healthz")
    assert down.status_code == 503
    assert down.json()["status"] == "degraded"
    assert down.json()["checks"]["database"] == "unavailable"
    assert down.headers["retry-after"]
    monkeypatch.undo()
    assert client.get("/healthz").status_code == 200


def test_root_describes_the_api(client: TestClient) -> None:
    body = client.get("/").json()
    assert body["docs"] == "/docs" and body["api"] == "/api/v1"


def test_openapi_has_bearer_scheme_and_tags(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert "/api/v1/tenants" in spec["paths"]
