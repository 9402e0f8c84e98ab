"""GET /calls (filters, keyset pages) and GET /calls/{id} (with the transcript)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from tests.helpers import (
    TenantFixture,
    create_number_and_profile,
    insert_call,
    insert_call_turn,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _list(client: TestClient, tenant: TenantFixture, **params: Any) -> list[str]:
    response = client.get(tenant.url("/calls"), params=params, headers=tenant.read_headers)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["items"]]


@pytest.fixture
def calls(tenant: TenantFixture) -> dict[str, Any]:
    """Six calls of `tenant` over two numbers and two profiles, started an hour apart."""
    a = create_number_and_profile(tenant.id)
    b = create_number_and_profile(tenant.id)
    specs = [
        ("completed", "inbound", a),
        ("completed", "outbound", a),
        ("no_answer", "outbound", b),
        ("rejected", "inbound", b),
        ("in_progress", "inbound", a),
        ("completed", "inbound", b),
    ]
    ids = []
    for hour, (status, direction, setup) in enumerate(specs):
        ids.append(
            str(
                insert_call(
                    tenant.id,
                    status=status,
                    direction=direction,
                    phone_number_id=setup.number_id,
                    ai_profile_id=setup.profile_id,
                    started_at=T0 + timedelta(hours=hour),
                )
            )
        )
    return {"ids": ids, "a": a, "b": b}


def test_filters(client: TestClient, tenant: TenantFixture, calls: dict[str, Any]) -> None:
    ids, a, b = calls["ids"], calls["a"], calls["b"]
    newest_first = list(reversed(ids))
    assert _list(client, tenant) == newest_first
    assert _list(client, tenant, status="completed") == [ids[5], ids[1], ids[0]]
    assert _list(client, tenant, direction="outbound") == [ids[2], ids[1]]
    assert _list(client, tenant, phone_number_id=str(a.number_id)) == [ids[4], ids[1], ids[0]]
    assert _list(client, tenant, ai_profile_id=str(b.profile_id)) == [ids[5], ids[3], ids[2]]
    after, before = T0 + timedelta(hours=1), T0 + timedelta(hours=4)
    window = {"started_after": after.isoformat(), "started_before": before.isoformat()}
    assert _list(client, tenant, **window) == [ids[3], ids[2], ids[1]]
    # SPEC 4: a timestamp carries an offset (one without is refused, not guessed to be UTC).
    naive = {"started_after": after.replace(tzinfo=None).isoformat()}
    response = client.get(tenant.url("/calls"), params=naive, headers=tenant.read_headers)
    assert response.status_code == 422
    assert _list(client, tenant, started_after=after.isoformat()) == newest_first[:5]
    assert _list(client, tenant, status="completed", direction="inbound", **window) == []
    assert _list(client, tenant, status="completed", direction="inbound") == [ids[5], ids[0]]
    assert _list(client, tenant, phone_number_id=str(uuid.uuid4())) == []


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"direction": "sideways"},
        {"phone_number_id": "not-a-uuid"},
        {"started_after": "yesterday"},
        {"limit": 0},
        {"limit": 101},
        {"cursor": "garbage"},
    ],
)
def test_bad_filters_are_422(
    client: TestClient, tenant: TenantFixture, params: dict[str, Any]
) -> None:
    response = client.get(tenant.url("/calls"), params=params, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"validation_error", "invalid_cursor"}


def _pages(client: TestClient, tenant: TenantFixture, **params: Any) -> Iterator[list[str]]:
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = client.get(tenant.url("/calls"), params=query, headers=tenant.headers).json()
        yield [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return


def test_keyset_pages_walk_every_call_once(
    client: TestClient, tenant: TenantFixture, calls: dict[str, Any]
) -> None:
    pages = list(_pages(client, tenant, limit=4))
    assert [len(p) for p in pages] == [4, 2]
    assert [i for p in pages for i in p] == list(reversed(calls["ids"]))
    # Filters hold across pages.
    filtered = list(_pages(client, tenant, limit=1, status="completed"))
    assert [i for p in filtered for i in p] == [calls["ids"][i] for i in (5, 1, 0)]


def test_detail_has_the_transcript_in_order(client: TestClient, tenant: TenantFixture) -> None:
    call_id = insert_call(tenant.id, status="completed", duration_seconds=75, billable_minutes=2)
    for seq, role, text in [(3, "agent", "Booked."), (1, "agent", "Hi!"), (2, "caller", "Book me")]:
        insert_call_turn(
            tenant.id,
            call_id,
            seq=seq,
            role=role,
            text=text,
            latency_ms=300 if role == "agent" else None,
        )
    body = client.get(tenant.url(f"/calls/{call_id}"), headers=tenant.read_headers).json()
    assert body["id"] == str(call_id)
    assert (body["duration_seconds"], body["billable_minutes"]) == (75, 2)
    assert [(t["seq"], t["role"], t["text"], t["latency_ms"]) for t in body["turns"]] == [
        (1, "agent", "Hi!", 300),
        (2, "caller", "Book me", None),
        (3, "agent", "Booked.", 300),
    ]
    empty = insert_call(tenant.id)
    assert client.get(tenant.url(f"/calls/{empty}"), headers=tenant.headers).json()["turns"] == []


def test_detail_costs_one_query_for_the_call_and_one_for_its_turns(
    client: TestClient, tenant: TenantFixture
) -> None:
    from app.config.database import get_engine

    call_id = insert_call(tenant.id)
    for seq in range(1, 6):
        insert_call_turn(tenant.id, call_id, seq=seq, role="caller", text=f"turn {seq}")
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # The SQL as compiled: a prepared statement is sent as EXECUTE by then.
        statements.append(context.statement if context is not None else statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(tenant.url(f"/calls/{call_id}"), headers=tenant.headers)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(response.json()["turns"]) == 5
    assert sum(bool(re.search(r"\bFROM calls\b", s)) for s in statements) == 1
    assert sum(bool(re.search(r"\bFROM call_turns\b", s)) for s in statements) == 1


def test_another_tenants_calls_are_invisible(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    mine = insert_call(tenant.id)
    theirs = insert_call(other_tenant.id)
    assert _list(client, tenant) == [str(mine)]
    assert _list(client, other_tenant) == [str(theirs)]
    response = client.get(tenant.url(f"/calls/{theirs}"), headers=tenant.headers)
    assert response.status_code == 404
    missing = client.get(tenant.url(f"/calls/{uuid.uuid4()}"), headers=tenant.headers)
    assert response.json() == missing.json()
    # Another tenant's key on this tenant's list: the same 404 as a tenant that does not exist.
    foreign = client.get(tenant.url("/calls"), headers=other_tenant.headers)
    assert foreign.status_code == 404
