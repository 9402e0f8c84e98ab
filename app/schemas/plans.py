from __future__ import annotations

from pydantic import BaseModel

from app.plans import Plan, PlanName


class PlanOut(BaseModel):
    name: PlanName
    base_fee_cents: int
    included_minutes: int
    overage_cents_per_minute: int | None
    max_phone_numbers: int
    max_concurrent_calls: int
    rejects_when_minutes_run_out: bool

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanOut:
        return cls(
            name=plan.name,
            base_fee_cents=plan.base_fee_cents,
            included_minutes=plan.included_minutes,
            overage_cents_per_minute=plan.overage_cents_per_minute,
            max_phone_numbers=plan.max_phone_numbers,
            max_concurrent_calls=plan.max_concurrent_calls,
            rejects_when_minutes_run_out=plan.rejects_when_minutes_run_out,
        )
