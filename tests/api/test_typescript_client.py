"""A frontend can generate a TypeScript client from /openapi.json, and it reads as one would write it.

openapi-typescript (types) and openapi-fetch (the client) from the npm registry, at the versions
pinned in tests/typescript/package-lock.json, installed once into .data/typescript-client (a later
run reuses them); tsc then type-checks tests/typescript/usage.ts against the generated types.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "tests" / "typescript"
CACHE = ROOT / ".data" / "typescript-client"
NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "ECONNRESET",
    "ENETUNREACH",
)

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed: the TypeScript client is not generated",
)


def _toolchain() -> Path:
    """node_modules with the pinned generator, client and compiler (installed on first use)."""
    lock = (SOURCES / "package-lock.json").read_bytes()
    stamp = CACHE / f".installed-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not stamp.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(SOURCES / name, CACHE / name)
        npm = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if npm.returncode != 0:
            if any(code in npm.stderr for code in NETWORK_ERRORS):
                pytest.skip(f"the npm registry is unreachable: {npm.stderr.strip()[-200:]}")
            pytest.fail(f"npm ci failed:\n{npm.stderr[-2000:]}")
        stamp.touch()
    return CACHE / "node_modules"


def _node(*args: str, cwd: Path) -> None:
    result = subprocess.run(["node", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_a_generated_typescript_client_type_checks(client: TestClient, tmp_path: Path) -> None:
    modules = _toolchain()
    (tmp_path / "openapi.json").write_text(json.dumps(client.get("/openapi.json").json()))
    for name in ("usage.ts", "tsconfig.json"):
        shutil.copy(SOURCES / name, tmp_path / name)
    (tmp_path / "node_modules").symlink_to(modules, target_is_directory=True)

    _node(
        str(modules / "openapi-typescript" / "bin" / "cli.js"),
        "openapi.json",
        "--output",
        "api.d.ts",
        cwd=tmp_path,
    )
    generated = (tmp_path / "api.d.ts").read_text()
    assert "list_calls: {" in generated and "create_outbound_call: {" in generated
    _node(str(modules / "typescript" / "bin" / "tsc"), "--project", "tsconfig.json", cwd=tmp_path)
