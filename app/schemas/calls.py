from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from app.models.call import CallStatus
from app.schemas.common import RequestModel, ResponseModel

CallDirection = Literal["inbound", "outbound"]


class CallTurnOut(ResponseModel):
    seq: int
    role: Literal["agent", "caller"]
    text: str
    interrupted: bool
    latency_ms: int | None = Field(
        description="Agent turns: prompt received -> first token sent (ms); null for the caller."
    )
    created_at: datetime


class CallOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    phone_number_id: uuid.UUID | None
    ai_profile_id: uuid.UUID | None
    direction: CallDirection
    status: CallStatus
    from_number: str
    to_number: str
    provider_call_sid: str | None = Field(description="Twilio's CallSid.")
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    billable_minutes: int = Field(description="ceil(duration / 60) for calls that connected.")
    end_reason: str | None = Field(
        description="Why the call ended or was rejected, e.g. concurrency_limit, minutes_exhausted."
    )
    summary: str | None
    created_at: datetime
    updated_at: datetime


class CallDetailOut(CallOut):
    turns: list[CallTurnOut] = Field(description="The transcript, in order (by seq).")


class OutboundCallCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"to": "+14155550123", "phone_number_id": "0193a3b0-7c1e-7d2a-9f00-2b1c3d4e5f60"}
            ]
        }
    )

    to: str = Field(
        min_length=3,
        max_length=40,
        description="The number to call, E.164.",
        examples=["+14155550100"],
    )
    phone_number_id: uuid.UUID = Field(description="The tenant's number the call comes from.")
    ai_profile_id: uuid.UUID | None = Field(
        default=None,
        description="The agent on the call (default: the number's profile, else the tenant's default).",
    )


@dataclass(frozen=True)
class CallFilters:
    """List filters; all optional and combined with AND. started_* bound started_at: [after, before)."""

    status: CallStatus | None = None
    direction: CallDirection | None = None
    phone_number_id: uuid.UUID | None = None
    ai_profile_id: uuid.UUID | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
