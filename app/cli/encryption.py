"""`rotate-encryption-key`: re-encrypt every stored webhook secret with the first ENCRYPTION_KEYS key."""

from __future__ import annotations

import argparse

from app.cli import CliError
from app.cli.tenants import all_tenant_ids
from app.config.database import transaction
from app.crypto import SecretUnreadable
from app.services.webhooks import reencrypt_endpoint_secrets


def rotate_encryption_key(args: argparse.Namespace) -> int:
    """Per tenant, in its own transactions of `--batch-size` endpoints: safe beside the API and
    the worker, and to run again. Remove an old key from ENCRYPTION_KEYS only after it succeeded."""
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1.")
    total = 0
    tenants = all_tenant_ids()
    for tenant_id in tenants:
        after = None
        while True:
            try:
                with transaction(tenant_id) as session:
                    done, after = reencrypt_endpoint_secrets(
                        session, tenant_id, after=after, limit=args.batch_size
                    )
            except SecretUnreadable as exc:
                raise CliError(
                    f"tenant {tenant_id}: a secret is encrypted with a key no longer in "
                    "ENCRYPTION_KEYS; put the old key back (after the new one) and run again"
                ) from exc
            total += done
            if after is None:
                break
    print(f"re-encrypted {total} webhook secret(s) of {len(tenants)} tenant(s) with the first key")
    return 0
