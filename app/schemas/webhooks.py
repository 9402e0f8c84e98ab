from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from app.schemas.common import RequestModel, ResponseModel

EventType = Literal[
    "call.started", "call.ended", "usage.threshold_reached", "invoice.issued", "webhook.test"
]
DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed", "dead"]

URL_FIELD = Field(
    min_length=1,
    max_length=2048,
    examples=["https://crm.example.com/hooks/vca"],
    description="Where events are POSTed. https in production; must resolve to public addresses.",
)
EVENT_TYPES_DESCRIPTION = "The event types to receive; empty means all of them."


def _unique(values: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(values))


EventTypes = Annotated[list[EventType], AfterValidator(_unique)]


class WebhookCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://crm.example.com/hooks/vca",
                    "event_types": ["call.started", "call.ended"],
                }
            ]
        }
    )

    url: str = URL_FIELD
    description: str | None = Field(default=None, max_length=500)
    event_types: EventTypes = Field(
        default_factory=list,
        max_length=20,
        description=EVENT_TYPES_DESCRIPTION,
        examples=[["call.ended"]],
    )
    enabled: bool = True


class WebhookUpdate(RequestModel):
    """Partial update. Enabling a disabled endpoint clears its disabled_reason and failure streak."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"enabled": True}]})

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str | None = Field(default=None, max_length=500)
    event_types: EventTypes | None = Field(
        default=None, max_length=20, description=EVENT_TYPES_DESCRIPTION
    )
    enabled: bool | None = None


class WebhookOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(
        description="Why the platform disabled the endpoint (410 Gone, failing for 5 days)."
    )
    failing_since: datetime | None = Field(
        description="Start of the current run of failed attempts (null when the last succeeded)."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    secret: str = Field(
        description="The signing secret (whsec_…, Standard Webhooks). Shown only in this "
        "response; store it now."
    )


class DeliveryOut(ResponseModel):
    id: uuid.UUID = Field(description="The webhook-id header, the same on every attempt.")
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: DeliveryStatus
    attempt_count: int = Field(description="Attempts in the current cycle (redelivery resets it).")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryAttemptOut(ResponseModel):
    id: uuid.UUID
    attempt_number: int
    status_code: int | None
    error: str | None
    duration_ms: int | None = Field(
        description="None when the send was lost with its worker (outcome unknown)."
    )
    response_excerpt: str | None
    attempted_at: datetime


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any] = Field(description="The body that is sent: {type, timestamp, data}.")
    attempts: list[DeliveryAttemptOut] = Field(description="Every attempt, oldest first.")
