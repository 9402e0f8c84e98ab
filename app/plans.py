"""The plan catalogue (SPEC §6): platform configuration, the one place a tenant's limits come from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PlanName(StrEnum):
    free = "free"
    starter = "starter"
    pro = "pro"
    enterprise = "enterprise"


@dataclass(frozen=True)
class Plan:
    name: PlanName
    base_fee_cents: int
    included_minutes: int
    overage_cents_per_minute: (
        int | None
    )  # None: no overage, calls are rejected when minutes run out
    max_phone_numbers: int
    max_concurrent_calls: int

    @property
    def rejects_when_minutes_run_out(self) -> bool:
        return self.overage_cents_per_minute is None


PLANS: dict[PlanName, Plan] = {
    PlanName.free: Plan(PlanName.free, 0, 60, None, 1, 1),
    PlanName.starter: Plan(PlanName.starter, 4900, 1000, 5, 5, 5),
    PlanName.pro: Plan(PlanName.pro, 29900, 10000, 3, 50, 25),
    PlanName.enterprise: Plan(PlanName.enterprise, 0, 0, 2, 1000, 200),
}


def get_plan(name: str) -> Plan:
    return PLANS[PlanName(name)]
