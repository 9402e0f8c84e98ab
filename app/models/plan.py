from __future__ import annotations

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TimestampMixin


class Plan(TimestampMixin, Base):
    """The plan catalogue (SPEC 6), platform-wide: the one place prices and limits come from.

    Rows are kept by migrations; admission (`call_limit_violation`), the phone-number limit and
    billing all read them here.
    """

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint(
            "base_fee_cents >= 0 AND included_minutes >= 0 AND max_phone_numbers >= 0"
            " AND max_concurrent_calls >= 0 AND overage_cents_per_minute >= 0",
            name="non_negative",
        ),
    )

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    base_fee_cents: Mapped[int]
    included_minutes: Mapped[int]
    # NULL: no overage; calls are refused once the included minutes are used up.
    overage_cents_per_minute: Mapped[int | None]
    max_phone_numbers: Mapped[int]
    max_concurrent_calls: Mapped[int]

    @property
    def rejects_when_minutes_run_out(self) -> bool:
        return self.overage_cents_per_minute is None
