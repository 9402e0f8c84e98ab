from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from app.schemas.common import RequestModel, ResponseModel

NumberStatus = Literal["active", "inactive"]


class PhoneNumberCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"number": "+14155550100", "label": "Front desk"}]}
    )

    number: str = Field(
        min_length=3,
        max_length=40,
        description="E.164 (+14155550100) or a national format with `region`.",
        examples=["+1 (415) 555-0100"],
    )
    region: str | None = Field(
        default=None,
        pattern="^[A-Za-z]{2}$",
        description="ISO 3166 country for national formats, e.g. US for (415) 555-0100.",
    )
    label: str | None = Field(default=None, max_length=200, examples=["Front desk"])
    status: NumberStatus = "active"
    ai_profile_id: uuid.UUID | None = Field(
        default=None, description="The agent answering this number (default: the tenant's default)."
    )


class PhoneNumberUpdate(RequestModel):
    """Partial update; `ai_profile_id: null` detaches the profile. The number itself is immutable."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"label": "After hours", "status": "inactive"}]}
    )

    label: str | None = Field(default=None, max_length=200)
    status: NumberStatus | None = None
    ai_profile_id: uuid.UUID | None = None


class PhoneNumberOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    number: str
    label: str | None
    status: str
    ai_profile_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
