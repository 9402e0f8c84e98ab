"""The API's CallStatus literal (static, for OpenAPI and typing) and the table's CHECK list agree."""

from __future__ import annotations

from typing import get_args

from app.models.call import CALL_STATUSES
from app.schemas.calls import CallStatus


def test_api_and_database_know_the_same_call_statuses() -> None:
    assert set(get_args(CallStatus)) == set(CALL_STATUSES)
