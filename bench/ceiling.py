"""The machine's ceiling, served exactly like the API: a no-op endpoint, a one-SELECT endpoint and
a one-INSERT endpoint through the same engine settings (pool, prepared statements, tenant context
in a transaction) and the same route class (one worker-thread trip per request, as every API route
makes). The INSERT (one row, committed) is the reference for webhooks that write: a read cannot
show what a commit and its WAL flush cost."""

from __future__ import annotations

import os
import uuid

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from app.api.deps import TransactionalRoute
from app.config.database import transaction
from app.models.base import new_id

TENANT_ID = uuid.UUID(os.environ["BENCH_CEILING_TENANT_ID"])
_SELECT = text("SELECT id, name FROM tenants WHERE id = :id")
# A test event (no deliveries): the bench's reset removes them with the rest of webhook_events.
_INSERT = text(
    "INSERT INTO webhook_events (id, tenant_id, event_type, body)"
    " VALUES (:id, :tenant_id, 'webhook.test', '{}')"
)

router = APIRouter(route_class=TransactionalRoute)


@router.get("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}


@router.get("/select")
def select_one() -> dict[str, str]:
    with transaction(TENANT_ID) as session:
        row = session.execute(_SELECT, {"id": TENANT_ID}).one()
    return {"id": str(row.id), "name": row.name}


@router.post("/insert")
def insert_one() -> dict[str, str]:
    event_id = new_id()
    with transaction(TENANT_ID) as session:
        session.execute(_INSERT, {"id": event_id, "tenant_id": TENANT_ID})
    return {"id": str(event_id)}


app = FastAPI()
app.include_router(router)
