"""Operator commands on tenants and their keys (through the services, as the API would)."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from app.cli import CliError
from app.config.database import transaction
from app.models import Tenant
from app.schemas.tenants import ApiKeyCreate, TenantCreate
from app.services.api_keys import ApiKeyService
from app.services.scope import Principal, Role, TenantScope
from app.services.tenants import TenantService

OPERATOR = Principal(role=Role.platform_admin)


def _find_tenant(slug: str) -> Tenant | None:
    with transaction() as session:
        return TenantService(session).find_by_slug(slug)


def _issue_key(tenant: Tenant, name: str, role: str) -> str:
    scope = TenantScope(
        tenant_id=tenant.id, principal=OPERATOR, tenant_status=tenant.status, plan=tenant.plan
    )
    with transaction(tenant.id) as session:
        _, plaintext = ApiKeyService(session, scope).create(
            ApiKeyCreate.model_validate({"name": name, "role": role})
        )
    return plaintext


def create_tenant(args: argparse.Namespace) -> int:
    with transaction() as session:
        tenant = TenantService(session).create(
            TenantCreate(name=args.name, slug=args.slug, plan=args.plan)
        )
    print(f"tenant_id={tenant.id}")
    return 0


def create_api_key(args: argparse.Namespace) -> int:
    tenant = _find_tenant(args.tenant)
    if tenant is None:
        raise CliError(f"no tenant with slug {args.tenant!r}")
    print(_issue_key(tenant, args.name, args.role))
    return 0


def seed_demo(args: argparse.Namespace) -> int:
    """Create the demo tenant and an admin key once; later runs reuse them. The key and the
    tenant's id are kept in files for the README's commands."""
    key_file = Path(args.key_file)
    id_file = key_file.with_name("demo-tenant-id")
    tenant = _find_tenant("demo")
    if tenant is not None and key_file.exists():
        id_file.write_text(f"{tenant.id}\n")
        print(f"Demo tenant exists (id {tenant.id}); API key: {key_file.read_text().strip()}")
        return 0
    if tenant is None:
        with transaction() as session:
            tenant = TenantService(session).create(
                TenantCreate(name="Demo", slug="demo", plan="starter")
            )
    key = _issue_key(tenant, "demo", "admin")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    id_file.write_text(f"{tenant.id}\n")
    print(f"Demo tenant id {tenant.id}; API key (shown once, saved in {key_file}): {key}")
    return 0


def all_tenant_ids() -> list[uuid.UUID]:
    """Every tenant's id, page by page through `TenantService.list` (its pinned system scope)."""
    ids: list[uuid.UUID] = []
    cursor = None
    while True:
        with transaction() as session:
            page = TenantService(session).list(limit=100, cursor=cursor)
        ids.extend(tenant.id for tenant in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
