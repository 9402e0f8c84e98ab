"""Analytics: a tenant's figures over a range of its local time, and the CSV export of its calls.

No rollups: every figure is an aggregate over `calls` and `call_turns` as they are when the request
runs, so a late status callback counts at once and nothing is ever stale. Ranges and buckets are cut
in the tenant's timezone here, in Python (zoneinfo), as UTC instants; PostgreSQL only counts the
calls between them, so a local day of 23 or 25 hours and an offset of +05:45 need no SQL of their own.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple, TypeVar, cast, get_args
from zoneinfo import ZoneInfo

from cachetools import TTLCache
from sqlalchemy import DateTime, String, case, func, literal, not_, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.orm import Session

from app.config.database import transaction
from app.errors import InvalidInput
from app.models import AIProfile, Call, CallTurn, PhoneNumber, Tenant
from app.models.base import utcnow
from app.models.call import CallStatus
from app.schemas.analytics import (
    AIProfileTotals,
    AnalyticsSummary,
    AnalyticsTimeseries,
    Bucket,
    DurationStats,
    Interval,
    LatencyStats,
    PhoneNumberTotals,
    PreviousRange,
    Totals,
)
from app.schemas.calls import CallDirection, CallFilters
from app.schemas.common import MAX_YEAR, MIN_YEAR
from app.services.calls import apply_call_filters
from app.services.scope import TenantScope, tenant_filter

T = TypeVar("T")

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 400
MAX_BUCKETS = 2000

COMPLETED = "completed"
TRANSFERRED = "transferred"
AGENT = "agent"


class InvalidDatetime(InvalidInput):
    code = "invalid_datetime"
    default_detail = (
        "`from` and `to` are dates (YYYY-MM-DD, a local day) or RFC 3339 datetimes with an "
        "offset, in years 2000-2999."
    )


class NaiveDatetime(InvalidInput):
    code = "naive_datetime"
    default_detail = (
        "A datetime without an offset is ambiguous: add one (e.g. Z or -05:00), or give a date."
    )


class InvalidRange(InvalidInput):
    code = "invalid_range"
    default_detail = "`from` must be before `to`."


class RangeTooLong(InvalidInput):
    code = "range_too_long"
    default_detail = f"A range spans at most {MAX_RANGE_DAYS} days."


class TooManyBuckets(InvalidInput):
    code = "too_many_buckets"
    default_detail = f"A timeseries has at most {MAX_BUCKETS} buckets: use a longer interval."


ANALYTICS_ERRORS = (InvalidDatetime, NaiveDatetime, InvalidRange, RangeTooLong, TooManyBuckets)

# -- ranges and buckets in local time -----------------------------------------------------------

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# An offset's '+' sent unencoded in a query string arrives as a space ("…T09:00:00 05:45").
_SPACE_FOR_PLUS = re.compile(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$")


def parse_bound(raw: str, name: str) -> date | datetime:
    """`from`/`to` as given: a date (a local day) or a datetime that carries an offset."""
    value = raw.strip()
    try:
        bound: date | datetime = (
            date.fromisoformat(value)
            if _DATE.fullmatch(value)
            else datetime.fromisoformat(_SPACE_FOR_PLUS.sub(r"\1+\2", value))
        )
    except ValueError as exc:
        raise InvalidDatetime(f"`{name}`: {InvalidDatetime.default_detail}") from exc
    if isinstance(bound, datetime) and bound.tzinfo is None:
        raise NaiveDatetime(f"`{name}`: {NaiveDatetime.default_detail}")
    if not MIN_YEAR <= bound.year <= MAX_YEAR:
        raise InvalidDatetime(f"`{name}`: {InvalidDatetime.default_detail}")
    return bound


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of local `day` (where midnight is skipped by DST, fold=0 maps it to the
    first moment that exists, e.g. 01:00)."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _instant(bound: date | datetime, tz: ZoneInfo) -> datetime:
    if isinstance(bound, datetime):
        return bound.astimezone(UTC)
    return _midnight(bound, tz)


def _shift(moment: datetime, tz: ZoneInfo, delta: timedelta) -> datetime:
    """`moment` moved by `delta` on the local wall clock: one local day is 23, 24 or 25 hours."""
    return (moment.astimezone(tz) + delta).astimezone(UTC)


@dataclass(frozen=True)
class Range:
    """[start, end) as UTC instants, read in `tz`."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.tz)

    def previous(self) -> Range:
        """The range of equal local length just before this one (30 local days before 30)."""
        # Both ends in one tzinfo: the difference is the wall-clock one.
        length = self.local(self.end) - self.local(self.start)
        return Range(_shift(self.start, self.tz, -length), self.start, self.tz)


def resolve_range(raw_from: str | None, raw_to: str | None, tz: ZoneInfo, now: datetime) -> Range:
    """The range the query names; by default the last 30 local days, today included."""
    start_bound = parse_bound(raw_from, "from") if raw_from is not None else None
    end_bound = parse_bound(raw_to, "to") if raw_to is not None else None
    end = (
        _instant(end_bound, tz)
        if end_bound is not None
        else _midnight(now.astimezone(tz).date() + timedelta(days=1), tz)
    )
    start = (
        _instant(start_bound, tz)
        if start_bound is not None
        else _shift(end, tz, -timedelta(days=DEFAULT_RANGE_DAYS))
    )
    if start >= end:
        raise InvalidRange()
    if end > _shift(start, tz, timedelta(days=MAX_RANGE_DAYS)):
        raise RangeTooLong()
    return Range(start, end, tz)


def _floor(moment: datetime, tz: ZoneInfo, interval: Interval) -> datetime:
    """The start of the local bucket holding `moment` (weeks start on Monday)."""
    local = moment.astimezone(tz)
    if interval is Interval.hour:
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.date()
    if interval is Interval.week:
        day -= timedelta(days=day.weekday())
    elif interval is Interval.month:
        day = day.replace(day=1)
    return _midnight(day, tz)


def _next_start(start: datetime, tz: ZoneInfo, interval: Interval) -> datetime:
    if interval is Interval.hour:
        # Snapped to the local hour, for offsets that change by half an hour (Lord Howe).
        following = _floor(start + timedelta(hours=1), tz, interval)
        return following if following > start else start + timedelta(hours=1)
    day = start.astimezone(tz).date()
    if interval is Interval.day:
        day += timedelta(days=1)
    elif interval is Interval.week:
        day += timedelta(days=7)
    else:
        day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return _midnight(day, tz)


def bucket_starts(period: Range, interval: Interval) -> list[datetime]:
    """Every local bucket start from the one holding `period.start` up to `period.end`."""
    starts: list[datetime] = []
    moment = _floor(period.start, period.tz, interval)
    while moment < period.end:
        starts.append(moment)
        if len(starts) > MAX_BUCKETS:
            raise TooManyBuckets()
        moment = _next_start(moment, period.tz, interval)
    return starts


# -- aggregates ---------------------------------------------------------------------------------

_ANSWERED = Call.answered_at.is_not(None)
# The figures every total and bucket carries, in this order (see `_totals`).
_TOTALS = (
    func.count(),
    func.count(Call.answered_at),
    func.coalesce(func.sum(Call.duration_seconds).filter(_ANSWERED), 0),
    func.coalesce(func.sum(Call.billable_minutes), 0),
    func.count().filter(Call.end_reason == TRANSFERRED),
)
_DURATION = (
    func.avg(Call.duration_seconds).filter(_ANSWERED),
    func.percentile_cont(array([0.5, 0.9])).within_group(Call.duration_seconds).filter(_ANSWERED),
)


def _minutes(seconds: int) -> float:
    return round(seconds / 60, 2)


def _totals(calls: int, answered: int, talk_seconds: int, billable: int, transfers: int) -> Totals:
    return Totals(
        calls=calls,
        answered=answered,
        answer_rate=round(answered / calls, 4) if calls else None,
        talk_minutes=_minutes(talk_seconds),
        billable_minutes=billable,
        transfers=transfers,
    )


def _duration(average: Any, percentiles: list[float] | None) -> DurationStats:
    p50, p90 = percentiles or (None, None)
    return DurationStats(average=None if average is None else float(average), p50=p50, p90=p90)


class _Sums(NamedTuple):
    calls: int
    answered: int
    talk_seconds: int
    billable_minutes: int


# A dashboard polls: the same range of a 100,000-call tenant asked again within this many seconds
# is answered from this process's memory instead of counting 100,000 rows again (130 ms). The
# response says when it was counted (`as_of`); a figure is never older than this.
MAX_STALENESS_SECONDS = 2
_RECENT: TTLCache[tuple[Any, ...], Any] = TTLCache(maxsize=1024, ttl=MAX_STALENESS_SECONDS)
_RECENT_LOCK = threading.Lock()


def _recently_counted(key: tuple[Any, ...], count: Callable[[], T]) -> T:
    """`count()`'s result, or the one counted for the same `key` within the last 2 s.

    `key` starts with the tenant's id: one tenant's figures never answer another's request.
    """
    with _RECENT_LOCK:
        found = _RECENT.get(key)
    if found is not None:
        return cast(T, found)
    result = count()
    with _RECENT_LOCK:
        _RECENT[key] = result
    return result


class AnalyticsService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def _timezone(self) -> str:
        timezone = self.session.scalar(
            select(Tenant.timezone).where(Tenant.id == self.scope.tenant_id)
        )
        return timezone or "UTC"

    def _in(self, period: Range) -> list[Any]:
        return [
            tenant_filter(Call, self.scope),
            Call.started_at >= period.start,
            Call.started_at < period.end,
        ]

    def summary(self, raw_from: str | None, raw_to: str | None) -> AnalyticsSummary:
        """Every figure of the range's calls (by started_at) and of the previous range's, counted
        from the rows themselves at `as_of`, at most 2 s ago."""
        timezone = self._timezone()
        return _recently_counted(
            (self.scope.tenant_id, timezone, "summary", raw_from, raw_to),
            lambda: self._summary(raw_from, raw_to, timezone),
        )

    def _summary(self, raw_from: str | None, raw_to: str | None, timezone: str) -> AnalyticsSummary:
        as_of = utcnow()
        period = resolve_range(raw_from, raw_to, ZoneInfo(timezone), as_of)
        before = period.previous()
        in_range = (Call.started_at >= period.start).label("in_range")
        figures = {
            row[0]: row[1:]
            for row in self.session.execute(
                select(in_range, *_TOTALS, *_DURATION)
                .where(*self._in(Range(before.start, period.end, period.tz)))
                .group_by(in_range)
            )
        }
        now_row = figures.get(True) or (0, 0, 0, 0, 0, None, None)
        before_row = figures.get(False) or (0, 0, 0, 0, 0, None, None)
        breakdown = self._breakdown(period)
        return AnalyticsSummary(
            as_of=as_of,
            from_=period.local(period.start),
            to=period.local(period.end),
            timezone=str(period.tz),
            totals=_totals(*now_row[:5]),
            duration_seconds=_duration(*now_row[5:]),
            agent_latency_ms=self._latency(period),
            previous=PreviousRange(
                from_=period.local(before.start),
                to=period.local(before.end),
                totals=_totals(*before_row[:5]),
                duration_seconds=_duration(*before_row[5:]),
            ),
            **breakdown,
        )

    def _breakdown(self, period: Range) -> dict[str, Any]:
        """Calls by status, direction, end_reason, number and profile: one scan (GROUPING SETS)."""
        keys = (
            Call.status,
            Call.direction,
            Call.end_reason,
            Call.phone_number_id,
            Call.ai_profile_id,
        )
        statement = (
            select(func.grouping(*keys), *keys, *_TOTALS[:4])
            .where(*self._in(period))
            .group_by(func.grouping_sets(*keys))
        )
        # GROUPING() has one bit per key, first key highest, set where a row is NOT grouped by it.
        grouped_by = {
            (1 << len(keys)) - 1 - (1 << (len(keys) - 1 - i)): i for i in range(len(keys))
        }
        by_status = {status.value: 0 for status in CallStatus}
        by_direction = dict.fromkeys(get_args(CallDirection), 0)
        by_end_reason: dict[str, int] = {}
        numbers: dict[uuid.UUID | None, _Sums] = {}
        profiles: dict[uuid.UUID | None, _Sums] = {}
        for (
            grouping,
            status,
            direction,
            reason,
            number_id,
            profile_id,
            *sums,
        ) in self.session.execute(statement):
            key = grouped_by[grouping]
            if key == 0:
                by_status[status] = sums[0]
            elif key == 1:
                by_direction[direction] = sums[0]
            elif key == 2 and reason is not None:  # NULL: calls not ended yet
                by_end_reason[reason] = sums[0]
            elif key == 3:
                numbers[number_id] = _Sums(*sums)
            elif key == 4:
                profiles[profile_id] = _Sums(*sums)
        return {
            "by_status": by_status,
            "by_direction": by_direction,
            "by_end_reason": dict(sorted(by_end_reason.items(), key=lambda item: -item[1])),
            "by_phone_number": self._per_number(numbers),
            "by_ai_profile": self._per_profile(profiles),
        }

    def _described(self, model: Any, sums: dict[Any, _Sums], *columns: Any) -> dict[Any, Any]:
        """The rows (id and `columns`) of `model` that the keys of `sums` name."""
        ids = [key for key in sums if key is not None]
        if not ids:
            return {}
        statement = select(model.id, *columns).where(
            tenant_filter(model, self.scope), model.id.in_(ids)
        )
        return {row.id: row for row in self.session.execute(statement)}

    def _per_number(self, sums: dict[uuid.UUID | None, _Sums]) -> list[PhoneNumberTotals]:
        found = self._described(PhoneNumber, sums, PhoneNumber.number, PhoneNumber.label)
        rows = [
            PhoneNumberTotals(
                phone_number_id=key,
                number=found[key].number if key in found else None,
                label=found[key].label if key in found else None,
                calls=figures.calls,
                answered=figures.answered,
                talk_minutes=_minutes(figures.talk_seconds),
                billable_minutes=figures.billable_minutes,
            )
            for key, figures in sums.items()
        ]
        return sorted(rows, key=lambda row: (-row.calls, str(row.phone_number_id)))

    def _per_profile(self, sums: dict[uuid.UUID | None, _Sums]) -> list[AIProfileTotals]:
        found = self._described(AIProfile, sums, AIProfile.name)
        rows = [
            AIProfileTotals(
                ai_profile_id=key,
                name=found[key].name if key in found else None,
                calls=figures.calls,
                answered=figures.answered,
                talk_minutes=_minutes(figures.talk_seconds),
                billable_minutes=figures.billable_minutes,
            )
            for key, figures in sums.items()
        ]
        return sorted(rows, key=lambda row: (-row.calls, str(row.ai_profile_id)))

    def _latency(self, period: Range) -> LatencyStats:
        """Agent turns stored in the range (their created_at), not interrupted, with a latency."""
        turns, percentiles = self.session.execute(
            select(
                func.count(),
                func.percentile_cont(array([0.5, 0.9, 0.99])).within_group(CallTurn.latency_ms),
            ).where(
                tenant_filter(CallTurn, self.scope),
                CallTurn.role == AGENT,
                not_(CallTurn.interrupted),  # as the index predicate spells it
                CallTurn.latency_ms.is_not(None),
                CallTurn.created_at >= period.start,
                CallTurn.created_at < period.end,
            )
        ).one()
        p50, p90, p99 = percentiles or (None, None, None)
        return LatencyStats(turns=turns, p50=p50, p90=p90, p99=p99)

    def timeseries(
        self, raw_from: str | None, raw_to: str | None, interval: Interval
    ) -> AnalyticsTimeseries:
        """Every local bucket of the range with its calls (by started_at), zeros included,
        counted at `as_of`, at most 2 s ago."""
        timezone = self._timezone()
        return _recently_counted(
            (self.scope.tenant_id, timezone, "timeseries", raw_from, raw_to, interval),
            lambda: self._timeseries(raw_from, raw_to, interval, timezone),
        )

    def _timeseries(
        self, raw_from: str | None, raw_to: str | None, interval: Interval, timezone: str
    ) -> AnalyticsTimeseries:
        as_of = utcnow()
        period = resolve_range(raw_from, raw_to, ZoneInfo(timezone), as_of)
        starts = bucket_starts(period, interval)
        # width_bucket: the index (1-based) of the last start <= started_at, one binary search.
        bucket = func.width_bucket(
            Call.started_at, literal(starts, ARRAY(DateTime(timezone=True)))
        ).label("bucket")
        counted = {
            row[0]: row[1:]
            for row in self.session.execute(
                select(bucket, *_TOTALS[:4], func.count().filter(Call.status == COMPLETED))
                .where(*self._in(period))
                .group_by(bucket)
            )
        }
        buckets = []
        for index, start in enumerate(starts, start=1):
            calls, answered, talk, billable, completed = counted.get(index, (0, 0, 0, 0, 0))
            buckets.append(
                Bucket(
                    start=period.local(start),
                    calls=calls,
                    answered=answered,
                    completed=completed,
                    talk_minutes=_minutes(talk),
                    billable_minutes=billable,
                )
            )
        return AnalyticsTimeseries(
            as_of=as_of,
            from_=period.local(period.start),
            to=period.local(period.end),
            timezone=str(period.tz),
            interval=interval,
            buckets=buckets,
        )


# -- CSV export ---------------------------------------------------------------------------------

EXPORT_BATCH_ROWS = 2000
_LOCAL_TIME = 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'


def _local_text(column: Any) -> Any:
    # Formatted by PostgreSQL in the transaction's TimeZone (set to the tenant's below).
    return func.to_char(column, _LOCAL_TIME).label(column.key)


def _as_text(column: Any) -> Any:
    return sql_cast(column, String).label(column.key)


def _cell_text(column: Any) -> Any:
    """Free text (an LLM's summary of what a caller said) is kept from starting a spreadsheet
    formula: a leading = + - @ tab or CR gets a ' in front (OWASP's CSV-injection advice)."""
    return case((column.regexp_match("^[=+@\t\r-]"), literal("'") + column), else_=column).label(
        column.key
    )


EXPORT_COLUMNS = (
    _as_text(Call.id),
    Call.direction,
    Call.status,
    Call.from_number,
    Call.to_number,
    _as_text(Call.phone_number_id),
    _as_text(Call.ai_profile_id),
    _local_text(Call.started_at),
    _local_text(Call.answered_at),
    _local_text(Call.ended_at),
    Call.duration_seconds,
    Call.billable_minutes,
    Call.end_reason,
    _cell_text(Call.summary),
    Call.provider_call_sid,
    _local_text(Call.created_at),
    _local_text(Call.updated_at),
)
EXPORT_HEADER = [column.key for column in EXPORT_COLUMNS]
EXPORT_EXAMPLE = (
    ",".join(EXPORT_HEADER)
    + "\r\n0193a3c2-5e1f-7c2a-9a51-3f0c2b7d9e10,inbound,completed,+14155550123,+14155550100,"
    "0193a3b0-1d2e-7f00-8a11-2c3d4e5f6a7b,0193a3b0-0c1d-7e00-9b22-1a2b3c4d5e6f,"
    "2026-03-08T09:15:02-05:00,2026-03-08T09:15:05-05:00,2026-03-08T09:19:47-05:00,282,5,"
    'caller_hangup,"Booked a cleaning for Tuesday, 10am; asked about ""whitening"".",'
    "CA5f0c2e4d7b8a9c1e2f3a4b5c6d7e8f90,2026-03-08T09:15:02-05:00,2026-03-08T09:19:48-05:00\r\n"
)


def export_calls_csv(scope: TenantScope, filters: CallFilters) -> Generator[bytes, None, None]:
    """The tenant's calls matching the call list's filters as CSV (RFC 4180, header first), newest
    first, in chunks of EXPORT_BATCH_ROWS rows.

    Runs in a transaction of its own, opened on the first chunk: the response streams after the
    request's transaction has ended. Rows come through a server-side cursor, so memory stays
    constant whatever the number of calls.
    """
    statement = apply_call_filters(
        select(*EXPORT_COLUMNS).where(tenant_filter(Call, scope)), filters
    )
    statement = statement.order_by(Call.created_at.desc(), Call.id.desc())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_HEADER)
    with transaction(scope.tenant_id) as session:
        # Times are formatted by PostgreSQL, in the tenant's timezone for this transaction only.
        timezone = session.scalar(select(Tenant.timezone).where(Tenant.id == scope.tenant_id))
        session.execute(select(func.set_config("TimeZone", timezone or "UTC", True)))
        # Core rows, not the ORM's: a quarter less CPU per row (measured on 100,000 calls).
        result = session.connection().execute(
            statement.execution_options(yield_per=EXPORT_BATCH_ROWS)
        )
        for rows in result.partitions():
            writer.writerows(rows)
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()  # the header alone, when no call matches
