from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class AIProfile(TenantOwned, Base):
    __tablename__ = "ai_profiles"
    __table_args__ = (
        CheckConstraint("temperature >= 0 AND temperature <= 2", name="temperature"),
        CheckConstraint(
            "max_call_duration_seconds BETWEEN 30 AND 14400", name="max_call_duration_seconds"
        ),
        Index("ix_ai_profiles_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        # At most one default profile per tenant, enforced by the database.
        Index(
            "uq_ai_profiles_one_default_per_tenant",
            "tenant_id",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    name: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text)
    greeting: Mapped[str | None] = mapped_column(String(1000))
    llm_model: Mapped[str | None] = mapped_column(String(200))
    temperature: Mapped[float] = mapped_column(Numeric(3, 2, asdecimal=False), default=0.7)
    max_tokens: Mapped[int] = mapped_column(Integer, default=300)
    voice: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(35), default="en-US")
    max_call_duration_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    transfer_number: Mapped[str | None] = mapped_column(String(20))
    is_default: Mapped[bool] = mapped_column(default=False)
