"""Billing (SPEC 9): periods in the tenant's month, metering, usage, invoices and their numbers.

The period rule (boundaries in the tenant's timezone, fixed when a period opens) lives in the SQL
functions `billing_period_bounds`, `billing_period_at` and `open_billing_period` (app/models/sql/),
which admission uses too; this module asks them and never cuts a month itself. Money is integer
cents; each line is rounded once, and totals are the sum of the lines.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Row, Table, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.config.database import system_scope, transaction
from app.errors import Conflict, InvalidInput, NotFound
from app.models import (
    BillingPeriod,
    Call,
    Invoice,
    Plan,
    PlanChange,
    Tenant,
    UsageRecord,
)
from app.models.base import new_id, utcnow
from app.models.invoice import InvoiceStatus
from app.services import events
from app.services.invoice_pdf import render_invoice_pdf
from app.services.pagination import PageResult, paginate
from app.services.scope import TenantScope, get_scoped, get_scoped_for_update, scoped

logger = logging.getLogger("vca.billing")

# A period is invoiced once it has ended plus this grace, for the late status callbacks.
CLOSE_GRACE = timedelta(hours=1)
# usage.threshold_reached fires once per period at each of these percents of the included minutes.
USAGE_THRESHOLDS = (80, 100)
PERIOD_PATTERN = re.compile(r"^(2\d{3})-(0[1-9]|1[0-2])$")
INVOICE_PREFIX = "VCA"


class PeriodNotEnded(Conflict):
    code = "period_not_ended"
    default_detail = "The billing period has not ended (plus one hour of grace) yet."


class InvoiceAlreadyVoid(Conflict):
    code = "invoice_void"
    default_detail = "The invoice is already void."


class InvalidPeriod(InvalidInput):
    code = "invalid_period"
    default_detail = "A period is a month, YYYY-MM."


def parse_period(value: str) -> str:
    """`value` if it is a month (YYYY-MM, years 2000-2999), else 422 `invalid_period`."""
    if not PERIOD_PATTERN.match(value):
        raise InvalidPeriod(f"{value[:20]!r} is not a month (YYYY-MM).")
    return value


def previous_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:])
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


# --- periods: asked of the SQL functions, the rule's one home ---------------------------------


@dataclass(frozen=True)
class PeriodBounds:
    period: str
    starts_at: datetime
    ends_at: datetime
    timezone: str

    @property
    def microseconds(self) -> int:
        return _microseconds(self.ends_at - self.starts_at)

    def local(self, moment: datetime) -> datetime:
        """`moment` in the timezone the period was cut in (what an invoice shows)."""
        return moment.astimezone(ZoneInfo(self.timezone))


def period_at(session: Session, tenant_id: uuid.UUID, at: datetime) -> str:
    """The tenant's period (YYYY-MM) that `at` falls in."""
    return cast(str, session.scalar(select(func.billing_period_at(tenant_id, at))))


def period_bounds(session: Session, tenant_id: uuid.UUID, period: str) -> PeriodBounds:
    """The boundaries of the tenant's `period`: fixed if it is opened, else as it would open now."""
    row = session.execute(
        select(text("*")).select_from(func.billing_period_bounds(tenant_id, period))
    ).one()
    return PeriodBounds(period, row.period_start, row.period_end, row.period_timezone)


def open_period(session: Session, tenant_id: uuid.UUID, period: str) -> uuid.UUID:
    """Open the tenant's `period` (and any before it not yet opened): its boundaries are fixed."""
    return cast(uuid.UUID, session.scalar(select(func.open_billing_period(tenant_id, period))))


def open_current_period(session: Session, tenant_id: uuid.UUID, now: datetime) -> None:
    """Fix the current period's boundaries (before a timezone change, which applies from the next
    period on)."""
    session.execute(
        select(func.open_billing_period(tenant_id, func.billing_period_at(tenant_id, now)))
    )


# --- metering ---------------------------------------------------------------------------------

# The opened period containing a moment, locked FOR KEY SHARE: a close (FOR UPDATE) waits for the
# metering in flight, and metering after it sees it closed. Other call ends of the tenant take
# the same lock, or the worker's FOR NO KEY UPDATE (thresholds): neither conflicts with it.
_PERIOD_FOR_METERING = text("""
SELECT b.id, b.period, b.closed_at
FROM billing_periods b
WHERE b.tenant_id = :tenant_id AND b.starts_at <= :at AND b.ends_at > :at
FOR KEY SHARE OF b
""")
_OPEN_PERIOD_AT = select(
    func.open_billing_period(
        text(":tenant_id"), func.billing_period_at(text(":tenant_id"), text(":at"))
    )
)
_USAGE = cast(Table, UsageRecord.__table__)
_INSERT_USAGE = (
    pg_insert(_USAGE)
    .on_conflict_do_nothing(index_elements=[_USAGE.c.tenant_id, _USAGE.c.call_id])
    .returning(_USAGE.c.id)
)


def _metering_period(session: Session, tenant_id: uuid.UUID, at: datetime) -> Row[Any]:
    params = {"tenant_id": tenant_id, "at": at}
    row = session.execute(_PERIOD_FOR_METERING, params).one_or_none()
    if row is None:
        session.execute(_OPEN_PERIOD_AT, params)
        row = session.execute(_PERIOD_FOR_METERING, params).one()
    return row


def meter_call(session: Session, call: Call, now: datetime) -> None:
    """Record the billable minutes of `call`, which has just ended, in the period it ended in.

    Guarantees: once per call (unique per call; the caller holds the call's row lock); a call
    ending in a period already invoiced is billed on the current period's invoice as late usage.
    Append-only: it waits for no other call end of the tenant (a close of the period only). The
    usage thresholds are the worker's (`announce_usage_thresholds`), from the records.
    """
    if call.ended_at is None:
        raise ValueError("only an ended call is metered")
    period = _metering_period(session, call.tenant_id, call.ended_at)
    billed_period = period.period
    if period.closed_at is not None:
        billed_period = _metering_period(session, call.tenant_id, now).period
    session.execute(
        _INSERT_USAGE,
        {
            "id": new_id(),
            "tenant_id": call.tenant_id,
            "call_id": call.id,
            "period": period.period,
            "billed_period": billed_period,
            "minutes": call.billable_minutes,
            "created_at": now,
            "updated_at": now,
        },
    )


def _minutes(session: Session, *conditions: ColumnElement[bool]) -> int:
    """The sum of the minutes of the usage records matching `conditions` (tenant included)."""
    return int(session.scalar(select(func.sum(UsageRecord.minutes)).where(*conditions)) or 0)


# --- usage thresholds: announced by the worker, from the usage records --------------------------

# The usage records not yet looked at: a partial index holds just them.
_TENANTS_WITH_UNCHECKED_USAGE = text(
    "SELECT DISTINCT tenant_id FROM usage_records WHERE NOT thresholds_checked"
)
# Mark the tenant's unchecked records checked; the periods they count in.
_CHECK_USAGE = text("""
WITH checked AS (
    UPDATE usage_records SET thresholds_checked = true
    WHERE tenant_id = :tenant_id AND NOT thresholds_checked
    RETURNING period
)
SELECT DISTINCT period FROM checked ORDER BY period
""")


def tenants_with_unchecked_usage() -> list[uuid.UUID]:
    """The tenants with usage recorded since the worker last looked at their thresholds.

    The worker's cross-tenant call site for the usage thresholds (SPEC 2): a list of ids; each
    tenant's thresholds are then looked at in its own transaction.
    """
    with transaction() as session, system_scope(session):
        return list(session.scalars(_TENANTS_WITH_UNCHECKED_USAGE))


def announce_usage_thresholds() -> int:
    """Announce the usage thresholds reached by the usage recorded since the last run, tenant
    by tenant in short transactions; returns how many events it emitted. A tenant's failure is
    logged; its records stay unchecked and are looked at again on the next run."""
    emitted = 0
    for tenant_id in tenants_with_unchecked_usage():
        try:
            with transaction(tenant_id) as session:
                emitted += BillingService(session, tenant_id).announce_thresholds()
        except Exception:
            logger.exception(
                "announcing usage thresholds failed", extra={"tenant_id": str(tenant_id)}
            )
    return emitted


# --- charges: what a period's invoice shows ----------------------------------------------------


@dataclass(frozen=True)
class PlanHeld:
    catalogue: Plan
    microseconds: int  # how long in the period, summed over its spans
    included_minutes: int  # its included minutes, prorated (rounded down)

    @property
    def plan(self) -> str:
        return self.catalogue.name

    @property
    def seconds(self) -> int:
        return self.microseconds // 1_000_000

    @property
    def base_fee_cents(self) -> int:
        return self.catalogue.base_fee_cents


@dataclass(frozen=True)
class Allowance:
    """The plans a period holds (so far: the current plan runs to its end) and the minutes they
    include, each plan's prorated and rounded down, pooled: what its invoice and its usage
    thresholds count against."""

    plans: list[PlanHeld]
    final_plan: Plan | None  # the plan held at the period's end: its overage price applies

    @property
    def included_minutes(self) -> int:
        return sum(held.included_minutes for held in self.plans)

    @property
    def plan(self) -> str | None:
        return self.final_plan.name if self.final_plan else None


@dataclass
class Charges:
    bounds: PeriodBounds
    plans: list[PlanHeld]
    final_plan: Plan | None  # the plan held at the period's end: its overage price applies
    included_minutes: int
    used_minutes: int
    calls: int
    overage_minutes: int
    overage_cents_per_minute: int | None
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_cents(self) -> int:
        return sum(line["amount_cents"] for line in self.lines)

    @property
    def period(self) -> str:
        return self.bounds.period

    @property
    def period_start(self) -> datetime:
        return self.bounds.local(self.bounds.starts_at)

    @property
    def period_end(self) -> datetime:
        return self.bounds.local(self.bounds.ends_at)

    @property
    def timezone(self) -> str:
        return self.bounds.timezone


def _microseconds(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _prorate_cents(amount: int, part: int, whole: int) -> int:
    """amount × part / whole in cents, rounded half up, once."""
    return (2 * amount * part + whole) // (2 * whole)


class BillingService:
    """A tenant's usage, invoices and their close. The session is bound to the tenant."""

    def __init__(self, session: Session, tenant: TenantScope | uuid.UUID) -> None:
        self.session = session
        self.scope = tenant
        self.tenant_id = tenant if isinstance(tenant, uuid.UUID) else tenant.tenant_id

    # -- usage ---------------------------------------------------------------------------------

    def usage(self, period: str | None, now: datetime) -> Charges:
        """The period's usage and its charges as the invoice would show them now (default: the
        current period). Reads only: a period is opened by metering, a close or a timezone
        change, not by looking at it."""
        label = parse_period(period) if period else period_at(self.session, self.tenant_id, now)
        return self.charges(period_bounds(self.session, self.tenant_id, label))

    def plans_held(self, bounds: PeriodBounds) -> tuple[list[tuple[Plan, int]], Plan | None]:
        """The plans held in the period with how long (µs), in order of first holding, and the
        plan held at its end (None if none: the tenant did not exist), from the plan history.

        Before the tenant's first history row it held no plan (it did not exist); a tenant without
        history (made by bulk SQL) held its current plan all along.
        """
        history = list(
            self.session.scalars(
                scoped(PlanChange, self.tenant_id).order_by(
                    PlanChange.changed_at, PlanChange.created_at
                )
            )
        )
        changes = [change for change in history if change.changed_at < bounds.ends_at]
        spans: list[tuple[str, datetime, datetime]] = []
        if not history:
            tenant = self.session.get(Tenant, self.tenant_id)
            if tenant is None:
                raise NotFound("Tenant not found.")
            spans.append((tenant.plan, bounds.starts_at, bounds.ends_at))
        else:
            holding: str | None = None
            since = bounds.starts_at
            for change in changes:
                if change.changed_at > bounds.starts_at and holding is not None:
                    spans.append((holding, since, change.changed_at))
                holding = change.to_plan
                since = max(change.changed_at, bounds.starts_at)
            if holding is not None:
                spans.append((holding, since, bounds.ends_at))
        held: dict[str, int] = {}
        for name, start, end in spans:
            held[name] = held.get(name, 0) + _microseconds(end - start)
        catalogue = {p.name: p for p in self.session.scalars(select(Plan))}
        final = catalogue[spans[-1][0]] if spans else None
        return [(catalogue[name], us) for name, us in held.items() if us > 0], final

    def allowance(self, bounds: PeriodBounds) -> Allowance:
        """The period's plans and included minutes: the one computation of both, for the
        invoice and for the usage thresholds."""
        whole = bounds.microseconds
        held_plans, final_plan = self.plans_held(bounds)
        return Allowance(
            [PlanHeld(plan, us, plan.included_minutes * us // whole) for plan, us in held_plans],
            final_plan,
        )

    def charges(self, bounds: PeriodBounds) -> Charges:
        """The lines of the period's invoice: one prorated base fee per plan held, the overage of
        the period's own usage at the price of the plan held at its end, and the late usage of
        earlier periods billed to this one."""
        whole = bounds.microseconds
        allowance = self.allowance(bounds)
        plans, final_plan = allowance.plans, allowance.final_plan
        # What this invoice bills, in one pass: the period's own usage and the late usage of
        # earlier periods metered after their close (billed_period >= period, always).
        billed = {
            row.period: row
            for row in self.session.execute(
                select(
                    UsageRecord.period,
                    func.sum(UsageRecord.minutes).label("minutes"),
                    func.count().label("calls"),
                )
                .where(
                    UsageRecord.tenant_id == self.tenant_id,
                    UsageRecord.billed_period == bounds.period,
                )
                .group_by(UsageRecord.period)
                .order_by(UsageRecord.period)
            )
        }
        own = billed.pop(bounds.period, None)
        used, calls = (int(own.minutes), int(own.calls)) if own else (0, 0)
        included = allowance.included_minutes
        overage = max(0, used - included)
        price = final_plan.overage_cents_per_minute if final_plan else None
        charges = Charges(bounds, plans, final_plan, included, used, calls, overage, price)
        for held in plans:
            fee = _prorate_cents(held.base_fee_cents, held.microseconds, whole)
            share = f"{held.seconds:,} of {whole // 1_000_000:,} s"
            charges.lines.append(
                {
                    "kind": "base_fee",
                    "description": (
                        f"{held.plan.capitalize()} plan, {bounds.period}"
                        + ("" if held.microseconds == whole else f", prorated ({share})")
                    ),
                    "plan": held.plan,
                    "quantity": 1,
                    "unit_amount_cents": fee,
                    "amount_cents": fee,
                }
            )
        if overage > 0 and price is not None and final_plan is not None:
            charges.lines.append(
                {
                    "kind": "overage",
                    "description": (
                        f"Overage, {bounds.period}: {used:,} min used, {included:,} included"
                    ),
                    "plan": final_plan.name,
                    "quantity": overage,
                    "unit_amount_cents": price,
                    "amount_cents": overage * price,
                }
            )
        late = [(row.period, int(row.minutes)) for row in billed.values()]
        charges.lines.extend(self._late_usage_lines(bounds.period, late))
        return charges

    def _late_usage_lines(self, period: str, late: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """The lines of `late`, the minutes of earlier periods metered after their close and
        billed to `period`: priced at the margin, so the minutes cost what they would have cost
        on time (no more, no less)."""
        lines = []
        for late_period, minutes in late:
            earlier = self._invoice_of(late_period)
            billed_since = _minutes(
                self.session,
                UsageRecord.tenant_id == self.tenant_id,
                UsageRecord.period == late_period,
                UsageRecord.billed_period > late_period,
                UsageRecord.billed_period < period,
            )
            included = earlier.included_minutes if earlier else 0
            before = (earlier.used_minutes if earlier else 0) + billed_since
            billable = max(0, before + minutes - included) - max(0, before - included)
            price = (earlier.overage_cents_per_minute if earlier else None) or 0
            lines.append(
                {
                    "kind": "late_usage",
                    "description": (
                        f"Late usage from {late_period}: {minutes:,} min,"
                        f" {billable:,} beyond that period's included minutes"
                    ),
                    "plan": earlier.plan if earlier else None,
                    "quantity": billable,
                    "unit_amount_cents": price,
                    "amount_cents": billable * price,
                }
            )
        return lines

    # -- usage thresholds ----------------------------------------------------------------------

    def announce_thresholds(self) -> int:
        """Look at the tenant's usage recorded since the last look, and announce
        `usage.threshold_reached` for each period it brought to 80% or 100% of the period's
        included minutes (its allowance, counted as its invoice counts it); returns how many
        events were emitted.

        Guarantees: each threshold once per period, however many runs at once (the period's row
        is locked FOR NO KEY UPDATE while its usage is summed and the highest threshold announced
        is read and raised; metering's KEY SHARE does not conflict with that lock, so no call end
        waits for it); every record is looked at by a run that sums it, after its commit.
        """
        emitted = 0
        for label in self.session.scalars(_CHECK_USAGE, {"tenant_id": self.tenant_id}).all():
            period = self.session.scalars(
                scoped(BillingPeriod, self.tenant_id)
                .where(BillingPeriod.period == label)
                .with_for_update(key_share=True)
            ).one_or_none()
            if (
                period is None
                or period.closed_at is not None
                or period.notified_percent >= USAGE_THRESHOLDS[-1]
            ):
                continue
            bounds = PeriodBounds(period.period, period.starts_at, period.ends_at, period.timezone)
            allowance = self.allowance(bounds)
            if allowance.included_minutes <= 0:
                continue
            used = _minutes(
                self.session,
                UsageRecord.tenant_id == self.tenant_id,
                UsageRecord.period == label,
            )
            reached = [
                percent
                for percent in USAGE_THRESHOLDS
                if percent > period.notified_percent
                and used * 100 >= percent * allowance.included_minutes
            ]
            if not reached:
                continue
            period.notified_percent = reached[-1]
            self.session.flush()
            for percent in reached:
                events.emit_event(
                    self.session,
                    self.tenant_id,
                    "usage.threshold_reached",
                    {
                        "period": label,
                        "period_start": bounds.starts_at,
                        "period_end": bounds.ends_at,
                        "plan": allowance.plan,
                        "threshold_percent": percent,
                        "included_minutes": allowance.included_minutes,
                        "used_minutes": used,
                    },
                )
                emitted += 1
        return emitted

    # -- close ---------------------------------------------------------------------------------

    def close(self, period: str, now: datetime, *, reissue: bool = False) -> Invoice | None:
        """Close the tenant's `period` into its invoice, in the caller's transaction.

        Guarantees: one issued invoice per tenant and period, whoever closes it how often at
        once (the period row is locked FOR UPDATE and marked closed; a second close waits and
        finds it closed, and returns the same invoice); all-or-nothing with the caller's
        transaction, the invoice number included (the counter row is updated in it, so a
        rolled-back close consumes no number); a period with nothing to bill is closed without
        an invoice. `reissue`: a closed period whose invoice was voided is invoiced again, from
        its usage as it is now, under a new number (the operator's correction); otherwise a void
        invoice stays the period's last word.
        """
        parse_period(period)
        row = self._lock_period(period)
        if row.ends_at + CLOSE_GRACE > now:
            raise PeriodNotEnded(
                f"Period {period} ends at {row.ends_at.isoformat()}; it can be closed one hour"
                " after that."
            )
        if row.closed_at is not None:
            invoice = self._invoice_of(period)
            if not (reissue and invoice is not None and invoice.status == InvoiceStatus.void):
                return invoice
        bounds = PeriodBounds(row.period, row.starts_at, row.ends_at, row.timezone)
        charges = self.charges(bounds)
        row.closed_at = row.closed_at or now
        self.session.flush()
        if not charges.lines:
            return None
        invoice = Invoice(
            tenant_id=self.tenant_id,
            number=self._next_number(now.year),
            period=period,
            period_start=bounds.starts_at,
            period_end=bounds.ends_at,
            timezone=bounds.timezone,
            currency="USD",
            status=InvoiceStatus.issued,
            lines=charges.lines,
            subtotal_cents=charges.total_cents,
            total_cents=charges.total_cents,
            plan=charges.final_plan.name if charges.final_plan else None,
            included_minutes=charges.included_minutes,
            used_minutes=charges.used_minutes,
            overage_cents_per_minute=charges.overage_cents_per_minute,
            issued_at=now,
        )
        self.session.add(invoice)
        self.session.flush()
        events.emit_event(self.session, self.tenant_id, "invoice.issued", invoice_payload(invoice))
        return invoice

    def _next_number(self, year: int) -> str:
        """The next number of `year`: the counter row stays locked until this transaction ends,
        so numbers are handed out in commit order, without gaps."""
        number = self.session.scalar(_NEXT_INVOICE_NUMBER, {"year": year})
        return f"{INVOICE_PREFIX}-{year}-{number:06d}"

    def _lock_period(self, period: str) -> BillingPeriod:
        """The period's row locked FOR UPDATE, opened first if it is not (the worker opens the
        periods ahead: then this is one round trip)."""
        statement = (
            scoped(BillingPeriod, self.tenant_id)
            .where(BillingPeriod.period == period)
            .with_for_update()
        )
        row = self.session.scalars(statement).one_or_none()
        if row is None:
            open_period(self.session, self.tenant_id, period)
            row = self.session.scalars(statement).one()
        return row

    def _invoice_of(self, period: str) -> Invoice | None:
        """The period's issued invoice, else its last voided one (None: never invoiced)."""
        return self.session.scalars(
            scoped(Invoice, self.tenant_id)
            .where(Invoice.period == period)
            .order_by((Invoice.status == InvoiceStatus.issued).desc(), Invoice.issued_at.desc())
            .limit(1)
        ).one_or_none()

    # -- invoices ------------------------------------------------------------------------------

    def list_invoices(
        self,
        *,
        limit: int,
        cursor: str | None,
        period: str | None = None,
        status: InvoiceStatus | None = None,
    ) -> PageResult[Invoice]:
        """The tenant's invoices, newest first (keyset), optionally of one period or status."""
        statement = scoped(Invoice, self.tenant_id)
        if period is not None:
            statement = statement.where(Invoice.period == parse_period(period))
        if status is not None:
            statement = statement.where(Invoice.status == status)
        return paginate(self.session, statement, Invoice, limit=limit, cursor=cursor)

    def get_invoice(self, invoice_id: uuid.UUID) -> Invoice:
        return get_scoped(self.session, Invoice, self._scope(), invoice_id, what="Invoice")

    def void(self, invoice_id: uuid.UUID, reason: str, now: datetime) -> Invoice:
        """Void an issued invoice (platform admin), with a reason. It keeps its number and its
        lines; the period stays closed: its charges are cancelled, and billed again only if the
        operator reissues it (`close(..., reissue=True)`, the CLI's `close-period --reissue`)."""
        invoice = get_scoped_for_update(
            self.session, Invoice, self._scope(), invoice_id, what="Invoice"
        )
        if invoice.status == InvoiceStatus.void:
            raise InvoiceAlreadyVoid()
        invoice.status = InvoiceStatus.void
        invoice.voided_at = now
        invoice.void_reason = reason
        self.session.flush()
        return invoice

    def invoice_pdf(self, invoice_id: uuid.UUID) -> tuple[Invoice, bytes]:
        """The invoice and its PDF (app/services/invoice_pdf.py), with the tenant's name."""
        invoice = self.get_invoice(invoice_id)
        tenant = self.session.get(Tenant, self.tenant_id)
        return invoice, render_invoice_pdf(invoice, tenant.name if tenant else "")

    def _scope(self) -> TenantScope:
        if isinstance(self.scope, TenantScope):
            return self.scope
        raise TypeError("a request's scope is needed here")


_NEXT_INVOICE_NUMBER = text("""
INSERT INTO invoice_counters (year, last_number) VALUES (:year, 1)
ON CONFLICT (year) DO UPDATE SET last_number = invoice_counters.last_number + 1
RETURNING last_number
""")


def invoice_payload(invoice: Invoice) -> dict[str, Any]:
    """An invoice as `invoice.issued` carries it, in JSON's own types."""
    return {
        "id": str(invoice.id),
        "tenant_id": str(invoice.tenant_id),
        "number": invoice.number,
        "period": invoice.period,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "currency": invoice.currency,
        "status": str(invoice.status),
        "lines": invoice.lines,
        "subtotal_cents": invoice.subtotal_cents,
        "total_cents": invoice.total_cents,
        "issued_at": invoice.issued_at.isoformat(),
    }


# --- closing outside requests: the CLI and the worker ---------------------------------------


def close_period(
    tenant_id: uuid.UUID, period: str, now: datetime | None = None, *, reissue: bool = False
) -> Invoice | None:
    """Close one tenant's period in a transaction of its own (see `BillingService.close`)."""
    with transaction(tenant_id) as session:
        return BillingService(session, tenant_id).close(period, now or utcnow(), reissue=reissue)


# The tenants whose chain of opened periods does not yet run from their creation (their first
# plan, or the row's creation for a tenant made without a plan history) to the period of :now.
_CHAINS_TO_OPEN = text("""
SELECT t.id AS tenant_id, least(created.at, :now) AS since
FROM tenants t
CROSS JOIN LATERAL (
    SELECT least(t.created_at, min(c.changed_at)) AS at FROM plan_changes c WHERE c.tenant_id = t.id
) created
WHERE NOT EXISTS (
    SELECT 1 FROM billing_periods b
     WHERE b.tenant_id = t.id AND b.starts_at <= :now AND b.ends_at > :now
) OR NOT EXISTS (
    SELECT 1 FROM billing_periods b
     WHERE b.tenant_id = t.id AND b.starts_at <= least(created.at, :now)
)
ORDER BY t.id
""")
# Every tenant's periods due for closing: the opened ones that ended before the cut-off and are
# not closed (a partial index holds just the unclosed ones).
_DUE_PERIODS = text("""
SELECT b.tenant_id, b.period FROM billing_periods b
WHERE b.closed_at IS NULL AND b.ends_at <= :cutoff
ORDER BY b.tenant_id, b.period
""")


def chains_to_open(now: datetime) -> list[Row[Any]]:
    """(tenant_id, since) of every tenant whose periods are not all opened from its creation
    (`since`) to the period of `now`, across tenants.

    The worker's cross-tenant call site for opening billing periods (SPEC 2): a list of ids and
    moments; each tenant's periods are then opened in its own transaction.
    """
    with transaction() as session, system_scope(session):
        return list(session.execute(_CHAINS_TO_OPEN, {"now": now}).all())


def open_chains(now: datetime) -> int:
    """Open every tenant's periods from its creation to the period of `now` (the openers fill
    the chain between), so that every month a tenant owes is a row the close finds, used or not,
    and call ends find their period opened; returns how many tenants it opened periods for."""
    opened = 0
    for chain in chains_to_open(now):
        try:
            with transaction(chain.tenant_id) as session:
                for moment in (chain.since, now):
                    open_period(
                        session, chain.tenant_id, period_at(session, chain.tenant_id, moment)
                    )
            opened += 1
        except Exception:
            logger.exception(
                "opening billing periods failed", extra={"tenant_id": str(chain.tenant_id)}
            )
    return opened


def due_periods(now: datetime) -> list[Row[Any]]:
    """(tenant_id, period) of every opened period due for closing at `now`, across tenants.

    The worker's cross-tenant call site for billing (SPEC 2): a list of ids and months; each
    close then runs in its tenant's own transaction.
    """
    with transaction() as session, system_scope(session):
        return list(session.execute(_DUE_PERIODS, {"cutoff": now - CLOSE_GRACE}).all())


def close_periods(
    due: Iterable[tuple[uuid.UUID, str]],
    now: datetime | None = None,
    *,
    pause: Callable[[float], bool] | None = None,
) -> int:
    """Close each (tenant_id, period) of `due` in a transaction of its own; returns how many
    closed. One tenant's failure is logged (and left for the next run); it stops no other.

    `pause`, e.g. a stop event's `wait`, is called after each close with how long it took, and
    ends the run when it returns True: the worker rests as long as it worked, so that a month's
    closes take at most half a core from the API beside it on a small host.
    """
    at = now or utcnow()
    closed = 0
    for tenant_id, period in due:
        started = time.monotonic()
        try:
            close_period(tenant_id, period, at)
            closed += 1
        except Exception:
            logger.exception(
                "closing a billing period failed",
                extra={"tenant_id": str(tenant_id), "period": period},
            )
        if pause is not None and pause(time.monotonic() - started):
            break
    return closed


def close_due_periods(
    now: datetime | None = None, *, pause: Callable[[float], bool] | None = None
) -> int:
    """Close every month every tenant owes that ended more than an hour ago, from the tenant's
    creation on, used or not (a month missed while the worker was down included); returns how
    many closed (see `close_periods` for `pause`)."""
    at = now or utcnow()
    open_chains(at)
    return close_periods(((due.tenant_id, due.period) for due in due_periods(at)), at, pause=pause)
