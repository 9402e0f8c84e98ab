"""The driver prepares the statements a connection runs repeatedly (psycopg's automatic
server-side preparation), and DATABASE_PREPARED_STATEMENTS=false turns that off."""

from __future__ import annotations

from sqlalchemy import Engine, text

from app.config.database import PREPARE_THRESHOLD, build_engine
from tests.conftest import DB_URLS

_PREPARED = text("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%vca_probe%'")
_PROBE = text("SELECT 1 AS vca_probe WHERE :x = :x")


def _prepared_after(engine: Engine, runs: int) -> int:
    with engine.connect() as connection:
        for _ in range(runs):
            assert connection.execute(_PROBE, {"x": 1}).scalar() == 1
        count: int = connection.execute(_PREPARED).scalar_one()
    engine.dispose()
    return count


def test_a_statement_run_often_is_prepared_on_the_server() -> None:
    engine = build_engine(DB_URLS.app, pool_size=1, prepared_statements=True)
    assert _prepared_after(engine, 1) == 0  # run once: sent as plain SQL
    assert _prepared_after(engine, PREPARE_THRESHOLD + 1) == 1


def test_the_setting_turns_it_off() -> None:
    engine = build_engine(DB_URLS.app, pool_size=1, prepared_statements=False)
    assert _prepared_after(engine, PREPARE_THRESHOLD * 3) == 0
