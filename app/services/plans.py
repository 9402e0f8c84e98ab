"""The plan catalogue (SPEC 6): rows of the `plans` table, which migrations keep."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.models import Plan


class UnknownPlan(InvalidInput):
    code = "unknown_plan"
    default_detail = "No such plan; GET /api/v1/plans lists them."


class PlanService:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> list[Plan]:
        """Every plan, smallest first."""
        return list(self.session.scalars(select(Plan).order_by(Plan.max_concurrent_calls)))

    def get(self, name: str) -> Plan:
        """The plan called `name`, or 422 `unknown_plan`."""
        plan = self.session.get(Plan, name)
        if plan is None:
            raise UnknownPlan(f"No plan named {name!r}; GET /api/v1/plans lists them.")
        return plan
