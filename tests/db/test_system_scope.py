"""The cross-tenant system scope is entered only from the call sites SPEC §2 allows."""

from __future__ import annotations

import ast
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"

ALLOWED = {
    ("app/services/auth.py", "authenticate"),  # resolving an API key
    ("app/services/tenants.py", "create"),  # platform admin: create a tenant
    ("app/services/tenants.py", "list"),  # platform admin: list tenants
    ("app/services/tenants.py", "find_by_slug"),  # operator CLI: find a tenant by slug
    ("app/services/telephony.py", "route_voice"),  # routing an inbound number (and its CallSid)
    ("app/services/telephony.py", "resolve_call_sid"),  # resolving a Twilio CallSid
    ("app/worker.py", "claim"),  # the worker's claim loop (webhook deliveries)
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
