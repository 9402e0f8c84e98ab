from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")

# Timestamps a client sends: with an offset (a naive one could be compared with an aware one), and
# within years every layer represents (Python's datetime ends at 9999, UTC conversion may cross).
MIN_YEAR, MAX_YEAR = 2000, 2999


def reject_unstorable_text(value: str) -> str:
    """PostgreSQL's text cannot hold NUL, and UTF-8 cannot encode an unpaired surrogate (JSON's
    "\\ud800" decodes to one): refused here instead of failing in the driver."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must not contain unpaired surrogates") from None
    return value


def _check_strings(value: Any) -> Any:
    if isinstance(value, str):
        reject_unstorable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_strings(item)
    return value


def _supported_year(value: datetime) -> datetime:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"must lie in the years {MIN_YEAR}-{MAX_YEAR}")
    return value


Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_supported_year),
    Field(
        description="RFC 3339 with an offset, years 2000-2999.", examples=["2026-03-01T09:00:00Z"]
    ),
]


class RequestModel(BaseModel):
    """Request bodies reject unknown fields (a typo is an error, not silently ignored), numbers
    that are not finite, and text the database cannot store (every string field, nested too)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        return _check_strings(value)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )
