from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKeyConstraint, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class WebhookDeliveryAttempt(TenantOwned, Base):
    """The log of one HTTP attempt of a delivery."""

    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "delivery_id"],
            ["webhook_deliveries.tenant_id", "webhook_deliveries.id"],
            ondelete="CASCADE",
        ),
        Index(
            "ix_webhook_delivery_attempts_tenant_id_delivery_id_attempted_at",
            "tenant_id",
            "delivery_id",
            "attempted_at",
        ),
    )

    delivery_id: Mapped[uuid.UUID]
    attempt_number: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    # None for a send lost with its worker: its outcome, and so its duration, is unknown.
    duration_ms: Mapped[int | None]
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime]
