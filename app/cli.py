"""Operator CLI: `python -m app.cli --help`."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from app.config.database import transaction
from app.models import Tenant
from app.schemas.tenants import ApiKeyCreate, TenantCreate
from app.services import billing
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
        print(f"No tenant with slug {args.tenant!r}.", file=sys.stderr)
        return 1
    print(_issue_key(tenant, args.name, args.role))
    return 0


def seed_demo(args: argparse.Namespace) -> int:
    """Create the demo tenant and an admin key once; later runs reuse them."""
    key_file = Path(args.key_file)
    tenant = _find_tenant("demo")
    if tenant is not None and key_file.exists():
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
    print(f"Demo tenant id {tenant.id}; API key (shown once, saved in {key_file}): {key}")
    return 0


def close_period(args: argparse.Namespace) -> int:
    """Close YYYY-MM into invoices: one tenant's (--tenant) or every tenant's whose period it is
    due. Safe to run beside the worker, and again: a closed period keeps its one invoice."""
    try:
        period = billing.parse_period(args.period)
    except billing.InvalidPeriod as exc:
        print(exc.detail, file=sys.stderr)
        return 2
    if args.tenant:
        tenant = _find_tenant(args.tenant)
        if tenant is None:
            print(f"No tenant with slug {args.tenant!r}.", file=sys.stderr)
            return 1
        tenant_ids = [tenant.id]
    else:
        tenant_ids = _all_tenant_ids()
    failed = 0
    for tenant_id in tenant_ids:
        try:
            invoice = billing.close_period(tenant_id, period)
        except billing.PeriodNotEnded as exc:
            print(f"{tenant_id}: {exc.detail}", file=sys.stderr)
            failed += 1
            continue
        if invoice is None:
            print(f"{tenant_id}: {period} closed, nothing to bill")
        else:
            print(f"{tenant_id}: {invoice.number} {invoice.status} {invoice.total_cents} cents")
    return 1 if failed else 0


def _all_tenant_ids() -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    cursor = None
    while True:
        with transaction() as session:
            page = TenantService(session).list(limit=100, cursor=cursor)
        ids.extend(tenant.id for tenant in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tenant = commands.add_parser("create-tenant", help="create a tenant")
    tenant.add_argument("--name", required=True)
    tenant.add_argument("--slug", required=True)
    tenant.add_argument("--plan", default="free", help="a plan of GET /api/v1/plans")
    tenant.set_defaults(func=create_tenant)

    key = commands.add_parser("create-api-key", help="issue an API key for a tenant (by slug)")
    key.add_argument("--tenant", required=True, help="tenant slug")
    key.add_argument("--name", default="operator")
    key.add_argument("--role", default="admin", choices=["admin", "read_only"])
    key.set_defaults(func=create_api_key)

    demo = commands.add_parser("seed-demo", help="create the demo tenant and its key (idempotent)")
    demo.add_argument("--key-file", default=".data/demo-api-key")
    demo.set_defaults(func=seed_demo)

    close = commands.add_parser(
        "close-period", help="invoice a billing period (YYYY-MM) that has ended plus one hour"
    )
    close.add_argument("period", help="the month, YYYY-MM, in each tenant's timezone")
    close.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
    close.set_defaults(func=close_period)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
