"""Test bootstrap: a fresh PostgreSQL database, migrated, used through the non-owner app role.

The database is the embedded one (pgserver, under .data/) unless TEST_DATABASE_URL names a server
(a role that may create roles and databases, e.g. postgresql://postgres@127.0.0.1:5432/postgres).
Settings are read at import, so the environment is set here before any `app` module is imported.
"""

from __future__ import annotations

import base64
import os
import secrets
import warnings

warnings.filterwarnings("ignore", module="platformdirs")

from scripts.devdb import provision, server_url_from_env  # noqa: E402

SERVER_URL = server_url_from_env("TEST_DATABASE_URL")
TEST_DB = os.environ.get("TEST_DATABASE_NAME", "vca_test")
DB_URLS = provision(SERVER_URL, TEST_DB, reset=True)
ADMIN_KEY = "test-admin-" + secrets.token_urlsafe(32)
TWILIO_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TWILIO_AUTH_TOKEN = "test-twilio-auth-token-" + secrets.token_hex(8)
PUBLIC_BASE_URL = "https://vca.example.test"
# A Fernet key (32 url-safe base64 bytes): webhook secrets are encrypted with it.
ENCRYPTION_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()

os.environ.update(
    {
        "VCA_ENV_FILE": "",
        "APP_ENV": "test",
        "DATABASE_URL": DB_URLS.app,
        "MIGRATION_DATABASE_URL": DB_URLS.owner,
        "ADMIN_API_KEY": ADMIN_KEY,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "console",
        # The suite sends thousands of requests a minute with a few keys; tests/api/test_rate_limits.py
        # uses limiters of its own.
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_TENANT_PER_MINUTE": "1000000",
    }
)
for optional in (
    "RATE_LIMIT_STORAGE_URL",
    "TWILIO_API_BASE_URL",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
):
    os.environ.pop(optional, None)

import pytest  # noqa: E402
from sqlalchemy import Engine, create_engine  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tests.helpers import TenantFixture, create_tenant  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def migrated_database() -> None:
    """The test database at the head revision, migrated once per session (every run tests the
    migrations)."""
    from alembic.config import Config

    from alembic import command

    command.upgrade(Config("alembic.ini"), "head")


@pytest.fixture(scope="session")
def app():  # type: ignore[no-untyped-def]
    from main import app as application

    return application


@pytest.fixture(scope="session")
def client(app) -> TestClient:  # type: ignore[no-untyped-def]
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def owner_engine() -> Engine:
    """The migration owner: for catalog inspection and for setting up states the API cannot."""
    engine = create_engine(DB_URLS.owner)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def app_engine() -> Engine:
    """The app role, exactly as the API connects: RLS applies."""
    engine = create_engine(DB_URLS.app)
    yield engine
    engine.dispose()


@pytest.fixture
def tenant(client: TestClient) -> TenantFixture:
    return create_tenant(plan="pro")


@pytest.fixture
def other_tenant(client: TestClient) -> TenantFixture:
    return create_tenant(plan="pro")
