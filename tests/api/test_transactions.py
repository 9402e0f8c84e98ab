"""The request transaction: every route commits through it, and no request leaks a connection."""

from __future__ import annotations

import inspect

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

from app.api.deps import TransactionalRoute, _session_parameters
from app.config.database import get_engine
from tests.helpers import TenantFixture, iter_routes, random_e164


def test_every_http_route_commits_in_its_endpoint_thread(app: FastAPI) -> None:
    wrapped = 0
    for path, route in iter_routes(app):
        if not isinstance(route, APIRoute) or path.startswith(("/docs", "/openapi", "/redoc")):
            continue
        assert isinstance(route, TransactionalRoute), path
        original = inspect.unwrap(route.endpoint)
        if not inspect.iscoroutinefunction(original) and _session_parameters(original):
            # The route runs the committing wrapper, not the bare endpoint.
            assert route.endpoint is not original, path
            wrapped += 1
    assert wrapped > 20  # the API's sync endpoints with a DbSession


def test_requests_commit_and_give_their_connection_back(
    client: TestClient, tenant: TenantFixture
) -> None:
    pool = get_engine().pool
    created = client.post(
        tenant.url("/phone-numbers"), json={"number": random_e164()}, headers=tenant.headers
    )
    assert created.status_code == 201, created.text
    # Committed before the response: a new request (a new transaction) sees it.
    listed = client.get(tenant.url("/phone-numbers"), headers=tenant.headers)
    assert created.json()["id"] in {item["id"] for item in listed.json()["items"]}
    # A refused write (403) and a missing row (404) roll back.
    refused = client.post(
        tenant.url("/phone-numbers"), json={"number": random_e164()}, headers=tenant.read_headers
    )
    assert refused.status_code == 403
    missing = client.get(
        tenant.url("/calls/00000000-0000-7000-8000-000000000000"), headers=tenant.headers
    )
    assert missing.status_code == 404
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
