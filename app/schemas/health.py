from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "draining"] = Field(
        description="degraded (503) when the database is down; draining (503) after SIGTERM."
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
    relay: dict[str, Any] = Field(
        default_factory=dict,
        examples=[
            {
                "live_sessions": 12,
                "reserved": 1,
                "max_live_calls": 1000,
                "draining": False,
                "refused_capacity": 0,
                "event_loop_lag": {"p50_ms": 0.3, "p99_ms": 2.1, "max_ms": 4.0},
            }
        ],
        description="This process's live ConversationRelay sessions against "
        "MAX_LIVE_CALLS_PER_PROCESS (reserved: admitted, not yet connected), and how late its "
        "event loop ran over the last 30 s.",
    )
