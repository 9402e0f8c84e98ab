"""Tenants: the platform admin creates and lists them; a tenant may read and rename itself."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config.database import system_scope
from app.errors import Conflict, Forbidden, NotFound
from app.models import PlanChange, Tenant
from app.models.base import utcnow
from app.schemas.tenants import TenantCreate, TenantUpdate
from app.services import billing
from app.services.pagination import PageResult, paginate
from app.services.plans import PlanService
from app.services.scope import TenantScope, lock_tenant

ADMIN_ONLY_FIELDS = ("plan", "status")


class SlugTaken(Conflict):
    code = "slug_taken"
    default_detail = "A tenant with this slug already exists."


class TenantService:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, data: TenantCreate) -> Tenant:
        """Create a tenant (platform admin, system scope); a duplicate slug is a 409."""
        PlanService(self.session).get(data.plan)
        with system_scope(self.session):
            tenant = Tenant(name=data.name, slug=data.slug, plan=data.plan, timezone=data.timezone)
            try:
                with self.session.begin_nested():
                    self.session.add(tenant)
                    self.session.flush()
            except IntegrityError as exc:
                raise SlugTaken() from exc
            # The plan history starts here: billing prorates from the tenant's first moment.
            self.session.add(
                PlanChange(tenant_id=tenant.id, changed_at=tenant.created_at, to_plan=tenant.plan)
            )
            self.session.flush()
        return tenant

    def list(self, *, limit: int, cursor: str | None) -> PageResult[Tenant]:
        """All tenants (platform admin, system scope), newest first."""
        with system_scope(self.session):
            return paginate(self.session, select(Tenant), Tenant, limit=limit, cursor=cursor)

    def find_by_slug(self, slug: str) -> Tenant | None:
        """The tenant with `slug` (platform admin/operator, system scope)."""
        with system_scope(self.session):
            return self.session.scalars(select(Tenant).where(Tenant.slug == slug)).one_or_none()

    def get(self, scope: TenantScope) -> Tenant:
        tenant = self.session.get(Tenant, scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant not found.")
        return tenant

    def update(self, scope: TenantScope, data: TenantUpdate) -> Tenant:
        """Partial update; plan and status only by the platform admin.

        A plan change takes effect at once and is recorded in the plan history (when, from, to)
        that invoices prorate from. A timezone change applies from the next billing period: the
        current one is opened first, which fixes its boundaries.
        """
        requested = data.model_dump(exclude_unset=True)
        if not scope.principal.is_platform_admin and any(f in requested for f in ADMIN_ONLY_FIELDS):
            raise Forbidden("Only the platform admin can change a tenant's plan or status.")
        changes = {field: value for field, value in requested.items() if value is not None}
        if "plan" in changes:
            PlanService(self.session).get(changes["plan"])
            # Locked, so concurrent changes write a history whose every `from` is the last `to`.
            tenant = lock_tenant(self.session, scope.tenant_id) or self.get(scope)
        else:
            tenant = self.get(scope)
        now = utcnow()
        if changes.get("plan", tenant.plan) != tenant.plan:
            self.session.add(
                PlanChange(
                    tenant_id=tenant.id,
                    changed_at=now,
                    from_plan=tenant.plan,
                    to_plan=changes["plan"],
                )
            )
        if changes.get("timezone", tenant.timezone) != tenant.timezone:
            billing.open_current_period(self.session, tenant.id, now)
        for field, value in changes.items():
            setattr(tenant, field, value)
        self.session.flush()
        return tenant

    def delete(self, scope: TenantScope) -> None:
        """Delete the tenant and, by cascade, every row it owns (platform admin only)."""
        self.get(scope)
        self.session.execute(delete(Tenant).where(Tenant.id == scope.tenant_id))
