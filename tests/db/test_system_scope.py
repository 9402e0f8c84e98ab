"""The cross-tenant system scope is entered only from the call sites SPEC §2 allows.

Two ways in: `system_scope()` in Python, and the SQL functions of migration 0004 that turn
`app.system` on for one lookup. Both are pinned here, with the Python functions that call them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sqlalchemy import Engine, text

APP_DIR = Path(__file__).resolve().parents[2] / "app"

ALLOWED = {
    ("app/services/tenants.py", "create"),  # platform admin: create a tenant
    ("app/services/tenants.py", "list"),  # platform admin: list tenants
    ("app/services/tenants.py", "find_by_slug"),  # operator CLI: find a tenant by slug
    # The worker's billing close: the (tenant, month) pairs due; each close is tenant-scoped.
    ("app/services/billing.py", "due_periods"),
    # The worker's billing close: the tenants whose periods are not all opened since their
    # creation; each tenant's periods are then opened tenant-scoped.
    ("app/services/billing.py", "chains_to_open"),
    # The worker's usage thresholds: the tenants with new usage; each is looked at tenant-scoped.
    ("app/services/billing.py", "tenants_with_unchecked_usage"),
    ("app/services/idempotency.py", "prune_expired"),  # the worker: keys past 24 hours
    ("app/webhooks/delivery.py", "claim_due_deliveries"),  # the worker's claim loop
    # the worker: every tenant's finished deliveries and events past WEBHOOK_RETENTION_DAYS
    ("app/webhooks/retention.py", "purge_expired"),
    # the worker: every tenant's calls whose final status callback was lost
    ("app/services/reconciliation.py", "claim_stale_calls"),
}


def _system_scope_call_sites() -> set[tuple[str, str]]:
    sites = set()
    for path in APP_DIR.rglob("*.py"):
        relative = str(path.relative_to(APP_DIR.parent))
        if relative == "app/config/database.py":
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == "system_scope"
                ):
                    sites.add((relative, function.name))
    return sites


def test_system_scope_is_used_only_where_allowed() -> None:
    # Adding a call site is a security decision: it must be added here, with its reason.
    assert _system_scope_call_sites() == ALLOWED


# SQL functions allowed to turn the system scope on, and the only Python functions calling them.
ALLOWED_SQL_FUNCTIONS = {
    "authenticate_api_key": {("app/services/auth.py", "authenticate")},  # resolving an API key
    "route_inbound_call": set(),  # an inbound number: only through answer_inbound_call
    "bind_call_sid": {("app/services/telephony.py", "bind_call_sid")},  # a Twilio CallSid
}
# SQL functions that call one of those, and the only Python functions calling them.
SQL_CALLERS = {
    "answer_inbound_call": {("app/services/telephony.py", "answer_voice")},  # a voice webhook
}


def test_only_pinned_sql_functions_enter_the_system_scope(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.proname, p.prosrc FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            )
        ).all()
    entering = {name for name, source in rows if "app.system" in source}
    assert entering == set(ALLOWED_SQL_FUNCTIONS)
    for name, source in rows:
        if name in ALLOWED_SQL_FUNCTIONS:
            # Every switch on is followed by a switch off before anything else is returned.
            on = source.count("set_config('app.system', 'on', true)")
            off = source.count("set_config('app.system', '', true)")
            assert on == off == 1, name
    calling = {
        name
        for name, source in rows
        if name not in ALLOWED_SQL_FUNCTIONS
        and any(re.search(rf"\b{pinned}\s*\(", source) for pinned in ALLOWED_SQL_FUNCTIONS)
    }
    assert calling == set(SQL_CALLERS)


def _module_statements_built_with(tree: ast.Module, pattern: re.Pattern[str]) -> set[str]:
    """Module-level names assigned from an expression naming the function, or naming another
    such name (a statement built from a statement), to a fixed point."""
    assignments = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            assignments.append((node.targets, ast.unparse(node.value)))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            assignments.append(([node.target], ast.unparse(node.value)))
    carriers: set[str] = set()
    changed = True
    while changed:
        changed = False
        for targets, source in assignments:
            names = {t.id for t in targets if isinstance(t, ast.Name)} - carriers
            if names and (
                pattern.search(source) or any(re.search(rf"\b{c}\b", source) for c in carriers)
            ):
                carriers |= names
                changed = True
    return carriers


def _sql_function_call_sites(name: str) -> set[tuple[str, str]]:
    """Python functions that run SQL function `name`: `func.<name>(…)` in their body, or a
    module-level statement built with it."""
    pattern = re.compile(rf"\b{name}\b")
    sites = set()
    for path in APP_DIR.rglob("*.py"):
        relative = str(path.relative_to(APP_DIR.parent))
        tree = ast.parse(path.read_text())
        carriers = _module_statements_built_with(tree, pattern)
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if (isinstance(node, ast.Name) and node.id in carriers) or (
                    isinstance(node, ast.Attribute) and node.attr == name
                ):
                    sites.add((relative, function.name))
    return sites


def test_pinned_sql_functions_are_called_only_from_their_call_sites() -> None:
    for name, allowed in {**ALLOWED_SQL_FUNCTIONS, **SQL_CALLERS}.items():
        assert _sql_function_call_sites(name) == allowed, name
