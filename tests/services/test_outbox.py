"""The transactional outbox: emit_event writes in the caller's transaction and wakes workers on commit."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import psycopg
import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.config.database import transaction
from app.schemas.webhooks import EventType
from app.services.events import EVENT_TYPES, NOTIFY_CHANNEL, emit_event
from tests.conftest import DB_URLS
from tests.helpers import TenantFixture


def _endpoint(client: TestClient, tenant: TenantFixture, **body: Any) -> dict[str, Any]:
    response = client.post(
        tenant.url("/webhooks"),
        json={"url": "http://127.0.0.1:9/hooks", **body},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


def _rows(owner_engine: Engine, sql: str, **params: Any) -> list[Any]:
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return list(conn.execute(text(sql), params).all())


def _deliveries(owner_engine: Engine, tenant_id: uuid.UUID) -> list[Any]:
    return _rows(
        owner_engine,
        "SELECT d.endpoint_id, d.event_id, d.event_type, d.status, d.next_attempt_at, e.body"
        " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
        " WHERE d.tenant_id = :t",
        t=tenant_id,
    )


def test_schema_event_types_match_the_service() -> None:
    assert get_args(EventType) == EVENT_TYPES


def test_one_delivery_per_enabled_subscribed_endpoint(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture, owner_engine: Engine
) -> None:
    everything = _endpoint(client, tenant)
    ended = _endpoint(client, tenant, event_types=["call.ended"])
    started_only = _endpoint(client, tenant, event_types=["call.started"])
    disabled = _endpoint(client, tenant, enabled=False)
    foreign = _endpoint(client, other_tenant)
    call_id = uuid.uuid4()
    ended_at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    with transaction(tenant.id) as session:
        emit_event(
            session, tenant.id, "call.ended", {"call_id": call_id, "ended_at": ended_at, "n": 3}
        )

    rows = _deliveries(owner_engine, tenant.id)
    assert {r.endpoint_id for r in rows} == {
        uuid.UUID(everything["id"]),
        uuid.UUID(ended["id"]),
    }
    assert {uuid.UUID(started_only["id"]), uuid.UUID(disabled["id"])}.isdisjoint(
        r.endpoint_id for r in rows
    )
    assert len({r.event_id for r in rows}) == 1
    assert all(r.status == "pending" and r.event_type == "call.ended" for r in rows)
    payload = json.loads(rows[0].body)
    assert payload["type"] == "call.ended"
    assert payload["data"] == {"call_id": str(call_id), "ended_at": ended_at.isoformat(), "n": 3}
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert _deliveries(owner_engine, other_tenant.id) == []
    assert foreign["tenant_id"] == str(other_tenant.id)


def test_the_body_is_serialised_once_compact_and_as_utf8(
    tenant: TenantFixture, owner_engine: Engine
) -> None:
    # The stored text is what is signed and sent: no spaces, UTF-8 as is, keys in this order, and
    # a NUL (which jsonb refused) escaped as JSON allows.
    data = {"z": 1.0, "a": "Zoë \N{WAVING HAND SIGN}", "nul": "a\x00b"}
    with transaction(tenant.id) as session:
        emit_event(session, tenant.id, "call.ended", data)
    (row,) = _rows(
        owner_engine, "SELECT body FROM webhook_events WHERE tenant_id = :t", t=tenant.id
    )
    timestamp = json.loads(row.body)["timestamp"]
    expected = (
        f'{{"type":"call.ended","timestamp":"{timestamp}",'
        '"data":{"z":1.0,"a":"Zoë \N{WAVING HAND SIGN}","nul":"a\\u0000b"}}'
    )
    assert row.body == expected


def test_a_rolled_back_change_sends_nothing(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    _endpoint(client, tenant)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction(tenant.id) as session:
        emit_event(session, tenant.id, "call.ended", {"call_id": str(uuid.uuid4())})
        raise Boom()

    events = _rows(owner_engine, "SELECT id FROM webhook_events WHERE tenant_id = :t", t=tenant.id)
    assert events == []
    assert _deliveries(owner_engine, tenant.id) == []


def test_an_event_without_subscribers_is_kept_but_delivered_nowhere(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    _endpoint(client, tenant, event_types=["call.started"])
    with transaction(tenant.id) as session:
        emit_event(session, tenant.id, "usage.threshold_reached", {"percent": 80})
    events = _rows(
        owner_engine, "SELECT event_type FROM webhook_events WHERE tenant_id = :t", t=tenant.id
    )
    assert [e.event_type for e in events] == ["usage.threshold_reached"]
    assert _deliveries(owner_engine, tenant.id) == []


def test_unknown_event_type_is_a_programming_error(tenant: TenantFixture) -> None:
    with pytest.raises(ValueError, match="unknown event type"), transaction(tenant.id) as s:
        emit_event(s, tenant.id, "call.exploded", {})


def test_emit_needs_the_tenants_context(client: TestClient, tenant: TenantFixture) -> None:
    # Row-level security: a transaction bound to another tenant cannot write this tenant's events.
    other = uuid.uuid4()
    with pytest.raises(Exception, match="row-level security"), transaction(other) as session:
        emit_event(session, tenant.id, "call.ended", {})


def test_notify_is_delivered_only_at_commit(client: TestClient, tenant: TenantFixture) -> None:
    _endpoint(client, tenant)
    listener = psycopg.connect(
        DB_URLS.app.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    )
    try:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def notified(timeout: float) -> bool:
            return any(True for _ in listener.notifies(timeout=timeout, stop_after=1))

        with transaction(tenant.id) as session:
            emit_event(session, tenant.id, "call.started", {"call_id": str(uuid.uuid4())})
            session.flush()
            assert not notified(0.2)
        assert notified(2.0)
    finally:
        listener.close()
