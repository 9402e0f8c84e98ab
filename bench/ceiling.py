"""The machine's ceiling, served exactly like the API: a no-op endpoint and a one-SELECT endpoint
through the same engine settings (pool, tenant context in a transaction)."""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI
from sqlalchemy import text

from app.config.database import prepared, tenant_session

app = FastAPI()
TENANT_ID = uuid.UUID(os.environ["BENCH_CEILING_TENANT_ID"])
# Prepared like the API's hot statements: "the same engine settings".
_SELECT = prepared(text("SELECT id, name FROM tenants WHERE id = :id"))


@app.get("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}


@app.get("/select")
def select_one() -> dict[str, str]:
    with tenant_session(TENANT_ID) as session:
        row = session.execute(_SELECT, {"id": TENANT_ID}).one()
    return {"id": str(row.id), "name": row.name}
