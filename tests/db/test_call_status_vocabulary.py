"""The call statuses the database accepts are exactly `CallStatus` (the migrations spell them
as of their revision; this keeps the enum and the schema in step)."""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

from app.models.call import RINGING_STATUSES, CallStatus


def _definition(owner_engine: Engine, sql: str) -> str:
    with owner_engine.connect() as connection:
        return str(connection.execute(text(sql)).scalar_one())


def test_the_status_check_accepts_exactly_the_enum(owner_engine: Engine) -> None:
    check = _definition(
        owner_engine,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_calls_status'",
    )
    assert set(re.findall(r"'(\w+)'", check)) == {status.value for status in CallStatus}


def test_the_line_counting_indexes_cover_the_live_statuses(owner_engine: Engine) -> None:
    ringing = _definition(
        owner_engine,
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_calls_tenant_id_ringing_since'",
    )
    talking = _definition(
        owner_engine,
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_calls_tenant_id_talking_since'",
    )
    assert set(re.findall(r"'(\w+)'", ringing)) == {s.value for s in RINGING_STATUSES}
    assert set(re.findall(r"'(\w+)'", talking)) == {CallStatus.in_progress.value}
