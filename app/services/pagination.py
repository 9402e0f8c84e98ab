"""Keyset pagination on (created_at, id) descending: page 1,000 costs what page 1 costs."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from app.errors import InvalidInput

T = TypeVar("T")


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    default_detail = "The cursor is not valid; use the next_cursor of a previous page."


@dataclass(frozen=True)
class PageResult(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID | str) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed, uuid.UUID(row_id)
    # Every way a tampered cursor fails (base64, UTF-8 and JSON errors are ValueErrors; a nesting
    # too deep, a shape that does not unpack): tests/unit/test_cursor.py throws strings at it.
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidCursor() from exc


def paginate(
    session: Session,
    statement: Select[Any],
    model: Any,
    *,
    limit: int,
    cursor: str | None,
    as_dicts: bool = False,
) -> PageResult[Any]:
    """One page of `statement` (already tenant-filtered), newest first, plus the next cursor.

    `as_dicts`: the statement selects columns, and the page holds each row as a dict of them
    (for a response model to read: pydantic validates a dict twice as fast as attributes).
    """
    statement = statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if cursor:
        after_created_at, after_id = decode_cursor(cursor)
        statement = statement.where(
            tuple_(model.created_at, model.id) < tuple_(after_created_at, after_id)
        )
    result = session.execute(statement)
    items: list[Any]
    if as_dicts:
        keys = tuple(result.keys())
        items = [dict(zip(keys, row, strict=True)) for row in result]
    else:
        items = list(result.scalars())
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        last = items[-1]
        next_cursor = (
            encode_cursor(last["created_at"], last["id"])
            if as_dicts
            else encode_cursor(last.created_at, last.id)
        )
    return PageResult(items=items, next_cursor=next_cursor)
