from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class PhoneNumber(TenantOwned, Base):
    __tablename__ = "phone_numbers"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'inactive')", name="status"),
        # Composite: a number can only point at a profile of its own tenant.
        ForeignKeyConstraint(
            ["tenant_id", "ai_profile_id"], ["ai_profiles.tenant_id", "ai_profiles.id"]
        ),
        Index("ix_phone_numbers_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_phone_numbers_tenant_id_ai_profile_id", "tenant_id", "ai_profile_id"),
    )

    # E.164; a number belongs to one tenant by definition, so it is unique platform-wide.
    number: Mapped[str] = mapped_column(String(20), unique=True)
    label: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="active")
    ai_profile_id: Mapped[uuid.UUID | None]
