"""Server-side prepared statements (app/config/database.py): same answers, one PREPARE per
connection, robust to rollbacks and lost connections, and off when the setting says so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, bindparam, select, text

from app.config import database
from app.config.database import build_engine, prepared
from tests.conftest import DB_URLS

_PREPARED_HERE = text(
    "SELECT statement, generic_plans + custom_plans AS runs FROM pg_prepared_statements"
    " WHERE name LIKE 'vca\\_%' ORDER BY prepare_time"
)


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = build_engine(DB_URLS.app, pool_size=1, prepared_statements=True)
    yield engine
    engine.dispose()


def _prepared_on(conn: Connection) -> list[Any]:
    return list(conn.execute(_PREPARED_HERE).all())


def test_a_marked_statement_is_prepared_once_and_answers_like_plain_sql(engine: Engine) -> None:
    # A literal percent sign, a parameter used twice, NULL, and a second distinct parameter.
    sql = "SELECT 'a%b' AS pct, CAST(:x AS int) * 2 AS twice, CAST(:label AS text) AS label"
    statement = prepared(text(sql))
    with engine.connect() as conn:
        for x, label in ((1, "one"), (20, None), (300, "it's 100%")):
            row = conn.execute(statement, {"x": x, "label": label}).one()
            assert tuple(row) == ("a%b", 2 * x, label)
            assert tuple(conn.execute(text(sql), {"x": x, "label": label}).one()) == tuple(row)
        [(definition, runs)] = _prepared_on(conn)
    assert definition.startswith("PREPARE vca_") and "CAST($1 AS int) * 2" in definition
    assert runs == 3


def test_only_marked_statements_are_prepared(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(select(bindparam("x", 1)))
        assert _prepared_on(conn) == []
        conn.execute(prepared(select(bindparam("x", 1))))
        assert len(_prepared_on(conn)) == 1


def test_a_statement_prepared_in_a_rolled_back_transaction_stays_usable(engine: Engine) -> None:
    statement = prepared(text("SELECT CAST(:x AS int) AS x"))
    with engine.connect() as conn:
        with conn.begin() as transaction:
            assert conn.execute(statement, {"x": 1}).scalar() == 1
            transaction.rollback()
        with conn.begin():
            assert conn.execute(statement, {"x": 2}).scalar() == 2
        assert [runs for _, runs in _prepared_on(conn)] == [2]


def test_a_new_connection_prepares_again(engine: Engine) -> None:
    statement = prepared(text("SELECT CAST(:x AS int) AS x"))
    with engine.connect() as conn:
        assert conn.execute(statement, {"x": 1}).scalar() == 1
        conn.invalidate()  # the server connection is gone, and with it the prepared statement
        conn.rollback()
        assert conn.execute(statement, {"x": 2}).scalar() == 2
        assert [runs for _, runs in _prepared_on(conn)] == [1]


def test_past_the_cap_statements_run_unprepared(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "MAX_PREPARED_PER_CONNECTION", 1)
    with engine.connect() as conn:
        assert conn.execute(prepared(text("SELECT 1"))).scalar() == 1
        assert conn.execute(prepared(text("SELECT 2"))).scalar() == 2
        assert len(_prepared_on(conn)) == 1


def test_the_setting_turns_it_off() -> None:
    engine = build_engine(DB_URLS.app, pool_size=1, prepared_statements=False)
    try:
        with engine.connect() as conn:
            assert conn.execute(prepared(text("SELECT 1"))).scalar() == 1
            assert _prepared_on(conn) == []
    finally:
        engine.dispose()


def test_the_app_engine_prepares_the_hot_statements(client: Any, tenant: Any) -> None:
    """The API's own engine is built with it on (the default), and authentication uses it."""
    from app.config.database import get_engine

    response = client.get(tenant.url("/calls"), headers=tenant.read_headers)
    assert response.status_code == 200
    statements = []
    pool_size = get_engine().pool.checkedin()
    for _ in range(pool_size):  # whichever pooled connection served the request
        with get_engine().connect() as conn:
            statements += [definition for definition, _ in _prepared_on(conn)]
    assert any("authenticate_api_key" in s for s in statements), statements


def test_a_server_side_cursor_runs_the_statement_as_it_is(engine: Engine) -> None:
    statement = prepared(text("SELECT g FROM generate_series(1, CAST(:n AS int)) AS g"))
    with engine.connect() as conn:
        streamed = conn.execution_options(stream_results=True).execute(statement, {"n": 3})
        assert [row.g for row in streamed] == [1, 2, 3]
        assert _prepared_on(conn) == []
