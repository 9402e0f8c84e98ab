from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentPrincipal, DbSession, TransactionalRoute
from app.errors import Unauthorized, error_responses
from app.schemas.plans import PlanOut
from app.services.plans import PlanService

router = APIRouter(route_class=TransactionalRoute, prefix="/plans", tags=["billing"])


@router.get("", responses=error_responses(Unauthorized), summary="The plan catalogue")
def list_plans(session: DbSession, _: CurrentPrincipal) -> list[PlanOut]:
    return [PlanOut.model_validate(plan) for plan in PlanService(session).list()]
