"""The machine's ceiling, served exactly like the API: a no-op endpoint and a one-SELECT endpoint
through the same engine settings (pool, prepared statements, tenant context in a transaction) and
the same route class (one worker-thread trip per request, as every API route makes)."""

from __future__ import annotations

import os
import uuid

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from app.api.deps import TransactionalRoute
from app.config.database import prepared, tenant_session

TENANT_ID = uuid.UUID(os.environ["BENCH_CEILING_TENANT_ID"])
_SELECT = prepared(text("SELECT id, name FROM tenants WHERE id = :id"))

router = APIRouter(route_class=TransactionalRoute)


@router.get("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}


@router.get("/select")
def select_one() -> dict[str, str]:
    with tenant_session(TENANT_ID) as session:
        row = session.execute(_SELECT, {"id": TENANT_ID}).one()
    return {"id": str(row.id), "name": row.name}


app = FastAPI()
app.include_router(router)
