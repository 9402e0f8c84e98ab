"""The cursor codec: what it encodes it decodes, and every other string is InvalidCursor (422)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.pagination import InvalidCursor, decode_cursor, encode_cursor

AWARE = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(moment=AWARE, row_id=st.uuids())
def test_a_cursor_round_trips(moment: datetime, row_id: uuid.UUID) -> None:
    assert decode_cursor(encode_cursor(moment, row_id)) == (moment, row_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@settings(max_examples=300, deadline=None)
@given(
    cursor=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(_b64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        ).map(lambda v: _b64(repr(v).encode())),
        st.integers(1, 400).map(lambda n: _b64(b"[" * n + b"]" * n)),
    )
)
def test_any_other_string_is_an_invalid_cursor(cursor: str) -> None:
    try:
        moment, row_id = decode_cursor(cursor)
    except InvalidCursor:
        return
    assert moment.tzinfo is not None and isinstance(row_id, uuid.UUID)


def test_nesting_deeper_than_the_parser_allows_is_an_invalid_cursor() -> None:
    try:
        decode_cursor(_b64(b"[" * 100_000 + b"]" * 100_000))
    except InvalidCursor:
        pass
    else:
        raise AssertionError("expected InvalidCursor")
