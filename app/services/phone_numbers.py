"""A tenant's phone numbers: E.164, unique platform-wide, counted against the plan."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, PlanLimitReached
from app.models import AIProfile, Call, PhoneNumber
from app.schemas.phone_numbers import PhoneNumberCreate, PhoneNumberUpdate
from app.services.pagination import PageResult, paginate
from app.services.plans import PlanService
from app.services.scope import TenantScope, get_scoped, lock_tenant, scoped, tenant_filter
from app.telephony.numbers import normalize_e164


class PhoneNumberTaken(Conflict):
    code = "phone_number_taken"
    default_detail = "This phone number is already registered on the platform."


class UnknownAIProfile(InvalidInput):
    code = "invalid_ai_profile"
    default_detail = "ai_profile_id does not name an AI profile of this tenant."


class PhoneNumberService:
    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    def _check_profile(self, profile_id: uuid.UUID | None) -> None:
        if profile_id is None:
            return
        exists = self.session.scalar(
            select(func.count())
            .select_from(AIProfile)
            .where(tenant_filter(AIProfile, self.scope), AIProfile.id == profile_id)
        )
        if not exists:
            raise UnknownAIProfile()

    def create(self, data: PhoneNumberCreate) -> PhoneNumber:
        """Register a number. Exact under concurrency: the plan's limit is checked under the tenant
        lock, and platform-wide uniqueness is the database's unique index (409, revealing no owner).
        """
        number = normalize_e164(data.number, region=data.region)
        self._check_profile(data.ai_profile_id)
        tenant = lock_tenant(self.session, self.scope.tenant_id)
        plan = PlanService(self.session).get(tenant.plan if tenant else self.scope.plan)
        count = self.session.scalar(
            select(func.count()).select_from(scoped(PhoneNumber, self.scope).subquery())
        )
        if (count or 0) >= plan.max_phone_numbers:
            raise PlanLimitReached(
                f"The {plan.name} plan allows {plan.max_phone_numbers} phone number(s)."
            )
        row = PhoneNumber(
            tenant_id=self.scope.tenant_id,
            number=number,
            label=data.label,
            status=data.status,
            ai_profile_id=data.ai_profile_id,
        )
        try:
            with self.session.begin_nested():
                self.session.add(row)
                self.session.flush()
        except IntegrityError as exc:
            raise PhoneNumberTaken() from exc
        return row

    def list(
        self,
        *,
        limit: int,
        cursor: str | None,
        status: str | None = None,
        ai_profile_id: uuid.UUID | None = None,
    ) -> PageResult[PhoneNumber]:
        statement = scoped(PhoneNumber, self.scope)
        if status is not None:
            statement = statement.where(PhoneNumber.status == status)
        if ai_profile_id is not None:
            statement = statement.where(PhoneNumber.ai_profile_id == ai_profile_id)
        return paginate(self.session, statement, PhoneNumber, limit=limit, cursor=cursor)

    def get(self, number_id: uuid.UUID) -> PhoneNumber:
        return get_scoped(self.session, PhoneNumber, self.scope, number_id, what="Phone number")

    def update(self, number_id: uuid.UUID, data: PhoneNumberUpdate) -> PhoneNumber:
        """Partial update; an explicit `ai_profile_id: null` detaches the profile."""
        row = self.get(number_id)
        changes = data.model_dump(exclude_unset=True)
        if changes.get("status", "") is None:
            raise InvalidInput("status cannot be null.", code="invalid_status")
        if "ai_profile_id" in changes:
            self._check_profile(changes["ai_profile_id"])
        for field, value in changes.items():
            setattr(row, field, value)
        self.session.flush()
        return row

    def delete(self, number_id: uuid.UUID) -> None:
        """Release the number; its past calls stay (they keep from/to numbers) but lose the link."""
        row = self.get(number_id)
        self.session.execute(
            update(Call)
            .where(tenant_filter(Call, self.scope), Call.phone_number_id == row.id)
            .values(phone_number_id=None)
        )
        self.session.delete(row)
        self.session.flush()
