"""Analytics responses: a range's summary and its timeseries, in the tenant's timezone."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Interval(StrEnum):
    hour = "hour"
    day = "day"
    week = "week"  # local weeks, starting on Monday
    month = "month"


class _Out(BaseModel):
    # `from` is a Python keyword: the field is `from_`, sent as "from".
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)


class Totals(BaseModel):
    calls: int = Field(description="Calls started in the range.")
    answered: int = Field(description="Calls of those that were answered (answered_at set).")
    answer_rate: float | None = Field(description="answered / calls; null without calls.")
    talk_minutes: float = Field(
        description="Sum of duration_seconds / 60 of the answered calls that have ended "
        "(2 decimals)."
    )
    billable_minutes: int = Field(description="Sum of the calls' billable minutes.")
    transfers: int = Field(description="Calls whose end_reason is `transferred`.")


class DurationStats(BaseModel):
    average: float | None
    p50: float | None
    p90: float | None


class LatencyStats(BaseModel):
    turns: int = Field(description="Agent turns counted (not interrupted, latency measured).")
    p50: float | None
    p90: float | None
    p99: float | None


class PreviousRange(_Out):
    from_: datetime = Field(alias="from")
    to: datetime
    totals: Totals
    duration_seconds: DurationStats


class PhoneNumberTotals(BaseModel):
    phone_number_id: uuid.UUID | None = Field(description="Null for calls without a number.")
    number: str | None
    label: str | None
    calls: int
    answered: int
    talk_minutes: float
    billable_minutes: int


class AIProfileTotals(BaseModel):
    ai_profile_id: uuid.UUID | None = Field(description="Null for calls without a profile.")
    name: str | None
    calls: int
    answered: int
    talk_minutes: float
    billable_minutes: int


class AnalyticsSummary(_Out):
    as_of: datetime = Field(
        description="When these figures were counted (at most MAX_STALENESS_SECONDS, 2 s, ago)."
    )
    from_: datetime = Field(alias="from", description="Range start (inclusive), local time.")
    to: datetime = Field(description="Range end (exclusive), local time.")
    timezone: str = Field(description="The tenant's IANA timezone the range is read in.")
    totals: Totals
    duration_seconds: DurationStats = Field(
        description="Call duration of the answered calls that have ended."
    )
    agent_latency_ms: LatencyStats = Field(
        description="Agent turn latency (prompt received -> first token sent) of the agent turns "
        "stored in the range that were not interrupted."
    )
    by_status: dict[str, int] = Field(description="Every call status, zeros included.")
    by_direction: dict[str, int]
    by_end_reason: dict[str, int] = Field(description="Calls that have ended, by end_reason.")
    by_phone_number: list[PhoneNumberTotals] = Field(description="Most calls first.")
    by_ai_profile: list[AIProfileTotals] = Field(description="Most calls first.")
    previous: PreviousRange = Field(
        description="The range of equal length (in local time) just before this one."
    )


class Bucket(BaseModel):
    start: datetime = Field(
        description="Local start of the bucket, with its offset.",
        examples=["2026-03-08T00:00:00-05:00"],
    )
    calls: int
    answered: int
    completed: int
    talk_minutes: float
    billable_minutes: int


class AnalyticsTimeseries(_Out):
    as_of: datetime = Field(description="When these figures were counted (at most 2 s ago).")
    from_: datetime = Field(alias="from")
    to: datetime
    timezone: str
    interval: Interval
    buckets: list[Bucket] = Field(
        description="Every bucket of the range, zeros included; the first and last may be "
        "partial (only the range's calls count)."
    )
