from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="degraded (503) when the database is down."
    )
    checks: dict[str, str] = Field(
        examples=[
            {
                "config": "ok",
                "telephony": "development",
                "llm": "not_configured",
                "database": "ok",
                "migrations": "ok",
                "rls": "enforced",
            }
        ],
        description="config; telephony (configured / development / not_configured); llm "
        "(configured / not_configured); database (ok / unavailable); migrations (ok / pending); "
        "rls (enforced / not_enforced).",
    )
