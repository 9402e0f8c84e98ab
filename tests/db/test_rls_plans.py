"""The tenant policy must not blind the planner: a tenant's first page of calls walks the ordered
index instead of sorting all of the tenant's calls.

A policy comparing `tenant_id` with a sub-SELECT (migration 0012) made PostgreSQL guess that a few
percent of a tenant's rows pass it; for custom plans (a connection's first executions of a
statement) it then read and sorted every call of a big tenant for a 21-row page (23 ms instead of
0.2 ms at 3,000 calls).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text

_OTHER_TENANTS = 300
_CALLS = 3000
_PAGE = (
    "SELECT * FROM calls WHERE tenant_id = '{tenant}' ORDER BY created_at DESC, id DESC LIMIT 21"
)


def _nodes(plan: dict[str, Any]) -> list[str]:
    return [plan["Node Type"], *(n for child in plan.get("Plans", []) for n in _nodes(child))]


def _platform(connection: Connection, big: uuid.UUID) -> None:
    """A platform's shape: many tenants with a few calls, one with thousands (statistics fresh)."""
    connection.execute(text("SELECT set_config('app.system', 'on', true)"))
    connection.execute(
        text(
            "INSERT INTO tenants (id, name, slug, plan, status, timezone)"
            " SELECT CASE WHEN n = 0 THEN CAST(:big AS uuid) ELSE gen_random_uuid() END,"
            " 'Plan test', 'plan-test-' || n || '-' || :suffix, 'pro', 'active', 'UTC'"
            " FROM generate_series(0, :others) AS n"
        ),
        {"big": str(big), "suffix": big.hex[:8], "others": _OTHER_TENANTS},
    )
    connection.execute(
        text(
            "INSERT INTO calls (tenant_id, id, direction, status, from_number, to_number,"
            " billable_minutes, created_at)"
            " SELECT t.id, gen_random_uuid(), 'inbound', 'completed', '+15550000000',"
            " '+15550000001', 1, now() - make_interval(secs => n)"
            " FROM tenants t, generate_series(1, :calls) AS n"
            " WHERE t.slug LIKE 'plan-test-%-' || :suffix AND (t.id = :big OR n <= 3)"
        ),
        {"big": str(big), "suffix": big.hex[:8], "calls": _CALLS},
    )
    connection.execute(text("ANALYZE calls"))
    connection.execute(text("SELECT set_config('app.system', '', true)"))


def test_the_first_page_of_a_big_tenant_walks_the_index(owner_engine: Engine) -> None:
    big = uuid.uuid4()
    # One transaction, rolled back: the tenants, calls and statistics stay out of other tests.
    with owner_engine.connect() as connection, connection.begin() as transaction:
        _platform(connection, big)
        # The owner is subject to the policy too (FORCE ROW LEVEL SECURITY).
        connection.execute(
            text("SELECT set_config('app.tenant_id', :big, true)"), {"big": str(big)}
        )
        page = _PAGE.format(tenant=big)  # a literal, as a custom plan sees its parameters
        plan = connection.execute(text(f"EXPLAIN (FORMAT JSON) {page}")).scalar_one()[0]["Plan"]
        assert len(connection.execute(text(page)).all()) == 21
        transaction.rollback()
    assert "Sort" not in _nodes(plan), plan
