from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field

from app.schemas.common import RequestModel, ResponseModel, Timestamp

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
# A plan's name; which plans exist is the `plans` table's to say (GET /api/v1/plans).
PlanName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,19}$", examples=["starter"])]


def _iana_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"'{value}' is not an IANA time zone (e.g. Europe/Paris)") from exc
    return value


Timezone = Annotated[str, Field(max_length=64), AfterValidator(_iana_timezone)]
TenantStatus = Annotated[str, Field(pattern="^(active|suspended)$")]


class TenantCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Acme Dental",
                    "slug": "acme-dental",
                    "plan": "starter",
                    "timezone": "America/New_York",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=200, examples=["Acme Dental"])
    slug: str = Field(pattern=SLUG_PATTERN, examples=["acme-dental"])
    plan: PlanName = "free"
    timezone: Timezone = "UTC"


class TenantUpdate(RequestModel):
    """Partial update. plan and status may be changed by the platform admin only."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"timezone": "Europe/Paris"}]})

    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: Timezone | None = None
    plan: PlanName | None = None
    status: TenantStatus | None = None


class TenantOut(ResponseModel):
    id: uuid.UUID
    name: str
    slug: str
    plan: str
    status: str
    timezone: str
    created_at: datetime
    updated_at: datetime


class ApiKeyCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "frontend", "role": "admin"}]}
    )

    name: str = Field(min_length=1, max_length=200, examples=["CRM integration"])
    role: Literal["admin", "read_only"] = Field(
        default="admin", description="admin: everything in the tenant; read_only: GET only"
    )
    # Bounded years: an expiry PostgreSQL stores but Python cannot read back would break every
    # later read of the tenant's keys.
    expires_at: Timestamp | None = None


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    role: str
    prefix: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown only in this response; store it now.")
