"""`close-period`: invoice a billing period by hand (the worker does it once a period is due)."""

from __future__ import annotations

import argparse

from app.cli import CliError
from app.cli.tenants import _find_tenant, all_tenant_ids
from app.services import billing


def close_period(args: argparse.Namespace) -> int:
    """Close YYYY-MM into invoices: one tenant's (--tenant) or every tenant's whose period it is
    due. Safe to run beside the worker, and again: a closed period keeps its one invoice. With
    --reissue (one tenant), a period whose invoice was voided is invoiced again, new number."""
    try:
        period = billing.parse_period(args.period)
    except billing.InvalidPeriod as exc:
        raise CliError(exc.detail) from exc
    if args.reissue and not args.tenant:
        raise CliError("--reissue corrects one tenant's invoice: name it with --tenant.")
    if args.tenant:
        tenant = _find_tenant(args.tenant)
        if tenant is None:
            raise CliError(f"No tenant with slug {args.tenant!r}.")
        tenant_ids = [tenant.id]
    else:
        tenant_ids = all_tenant_ids()
    not_ended = 0
    for tenant_id in tenant_ids:
        try:
            invoice = billing.close_period(tenant_id, period, reissue=args.reissue)
        except billing.PeriodNotEnded as exc:
            print(f"{tenant_id}: {exc.detail}")
            not_ended += 1
            continue
        if invoice is None:
            print(f"{tenant_id}: {period} closed, nothing to bill")
        else:
            print(f"{tenant_id}: {invoice.number} {invoice.status} {invoice.total_cents} cents")
    if not_ended:
        raise CliError(
            f"{not_ended} tenant(s) not closed: their {period} has not ended plus an hour."
        )
    return 0
