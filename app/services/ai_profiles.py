"""AI agent profiles: at most one default per tenant; a profile in use cannot be deleted."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput
from app.models import AIProfile, Call, PhoneNumber
from app.schemas.ai_profiles import REQUIRED_ON_UPDATE, AIProfileCreate, AIProfileUpdate
from app.services.pagination import PageResult, paginate
from app.services.scope import TenantScope, get_scoped, lock_tenant, scoped, tenant_filter
from app.telephony.numbers import normalize_e164


class ProfileInUse(Conflict):
    code = "in_use"
    default_detail = "This AI profile is used by phone numbers; reassign them first."


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class AIProfileService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def _clear_default(self, keep: uuid.UUID | None) -> None:
        """Make no other profile default; under the tenant lock, so two switches cannot interleave."""
        lock_tenant(self.session, self.scope.tenant_id)
        statement = update(AIProfile).where(
            tenant_filter(AIProfile, self.scope), AIProfile.is_default.is_(True)
        )
        if keep is not None:
            statement = statement.where(AIProfile.id != keep)
        self.session.execute(statement.values(is_default=False))

    def create(self, data: AIProfileCreate) -> AIProfile:
        """Create a profile; `is_default: true` atomically takes the default from the previous one."""
        values = data.model_dump()
        if data.transfer_number is not None:
            values["transfer_number"] = normalize_e164(
                data.transfer_number, field="transfer_number"
            )
        if data.is_default:
            self._clear_default(keep=None)
        profile = AIProfile(tenant_id=self.scope.tenant_id, **values)
        self.session.add(profile)
        self.session.flush()
        return profile

    def list(
        self, *, limit: int, cursor: str | None, name: str | None = None
    ) -> PageResult[AIProfile]:
        statement = scoped(AIProfile, self.scope)
        if name:
            statement = statement.where(
                AIProfile.name.ilike(f"%{_like_escape(name)}%", escape="\\")
            )
        return paginate(self.session, statement, AIProfile, limit=limit, cursor=cursor)

    def get(self, profile_id: uuid.UUID) -> AIProfile:
        return get_scoped(self.session, AIProfile, self.scope, profile_id, what="AI profile")

    def update(self, profile_id: uuid.UUID, data: AIProfileUpdate) -> AIProfile:
        """Partial update; setting is_default moves the default here atomically."""
        profile = self.get(profile_id)
        changes = data.model_dump(exclude_unset=True)
        for field in REQUIRED_ON_UPDATE:
            if field in changes and changes[field] is None:
                raise InvalidInput(f"{field} cannot be null.", code="invalid_input")
        if changes.get("transfer_number") is not None:
            changes["transfer_number"] = normalize_e164(
                changes["transfer_number"], field="transfer_number"
            )
        if changes.get("is_default"):
            self._clear_default(keep=profile.id)
            self.session.flush()
        for field, value in changes.items():
            setattr(profile, field, value)
        self.session.flush()
        return profile

    def delete(self, profile_id: uuid.UUID) -> None:
        """Delete a profile no phone number uses (else 409 in_use); past calls lose the link."""
        profile = self.get(profile_id)
        in_use = self.session.scalar(
            select(func.count())
            .select_from(PhoneNumber)
            .where(
                tenant_filter(PhoneNumber, self.scope),
                PhoneNumber.ai_profile_id == profile.id,
            )
        )
        if in_use:
            raise ProfileInUse(
                f"This AI profile is used by {in_use} phone number(s); reassign them first."
            )
        self.session.execute(
            update(Call)
            .where(tenant_filter(Call, self.scope), Call.ai_profile_id == profile.id)
            .values(ai_profile_id=None)
        )
        self.session.delete(profile)
        self.session.flush()
