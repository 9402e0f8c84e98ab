from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentPrincipal, TransactionalRoute
from app.errors import Unauthorized, error_responses
from app.plans import PLANS
from app.schemas.plans import PlanOut

router = APIRouter(route_class=TransactionalRoute, prefix="/plans", tags=["billing"])


@router.get("", responses=error_responses(Unauthorized), summary="The plan catalogue")
def list_plans(_: CurrentPrincipal) -> list[PlanOut]:
    return [PlanOut.from_plan(plan) for plan in PLANS.values()]
