from __future__ import annotations

import uuid

from sqlalchemy import (
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, TenantOwned


class CallTurn(TenantOwned, Base):
    """One utterance of a call's transcript: the caller's or the agent's."""

    __tablename__ = "call_turns"
    __table_args__ = (
        UniqueConstraint("tenant_id", "call_id", "seq"),
        CheckConstraint("role IN ('agent', 'caller')", name="role"),
        ForeignKeyConstraint(
            ["tenant_id", "call_id"], ["calls.tenant_id", "calls.id"], ondelete="CASCADE"
        ),
        # Analytics' agent latency of a range: an index-only scan of that range's turns.
        Index(
            "ix_call_turns_tenant_id_agent_latency",
            "tenant_id",
            "created_at",
            postgresql_include=["latency_ms"],
            postgresql_where=text("role = 'agent' AND NOT interrupted AND latency_ms IS NOT NULL"),
        ),
    )

    call_id: Mapped[uuid.UUID]
    seq: Mapped[int]
    role: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    interrupted: Mapped[bool] = mapped_column(default=False)
    # Agent turns: prompt received -> first token sent to Twilio.
    latency_ms: Mapped[int | None]
