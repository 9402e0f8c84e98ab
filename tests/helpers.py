"""Small factories: every test makes its own tenants, so tests never see each other's rows."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.testclient import TestClient


@dataclass
class TenantFixture:
    id: uuid.UUID
    slug: str
    admin_key: str
    read_key: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read_key}"}

    def url(self, path: str = "") -> str:
        return f"/api/v1/tenants/{self.id}{path}"


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def make_tenant(
    client: TestClient, admin_headers: dict[str, str], *, plan: str = "pro", name: str = "Test"
) -> TenantFixture:
    slug = unique_slug()
    response = client.post(
        "/api/v1/tenants", json={"name": name, "slug": slug, "plan": plan}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    keys = {}
    for role in ("admin", "read_only"):
        created = client.post(
            f"/api/v1/tenants/{tenant_id}/api-keys",
            json={"name": f"{role} key", "role": role},
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        keys[role] = created.json()["key"]
    return TenantFixture(
        id=uuid.UUID(tenant_id),
        slug=slug,
        admin_key=keys["admin"],
        read_key=keys["read_only"],
        data=response.json(),
    )


def create_tenant(*, plan: str = "pro", name: str = "Test") -> TenantFixture:
    """A tenant with an admin and a read-only key, made by the services (where HTTP is not the
    point: `make_tenant` goes through the API)."""
    from app.config.database import bind_tenant, transaction
    from app.schemas.tenants import ApiKeyCreate, TenantCreate
    from app.services.api_keys import ApiKeyService
    from app.services.scope import Principal, Role, TenantScope
    from app.services.tenants import TenantService

    slug = unique_slug()
    with transaction() as session:
        row = TenantService(session).create(TenantCreate(name=name, slug=slug, plan=plan))
        scope = TenantScope(
            tenant_id=row.id,
            principal=Principal(role=Role.platform_admin),
            tenant_status=row.status,
            plan=row.plan,
        )
        bind_tenant(session, row.id)
        keys = {
            role: ApiKeyService(session, scope).create(
                ApiKeyCreate(name=f"{role} key", role=role)  # type: ignore[arg-type]
            )[1]
            for role in ("admin", "read_only")
        }
        data = {
            "id": str(row.id),
            "name": row.name,
            "slug": row.slug,
            "plan": row.plan,
            "status": row.status,
            "timezone": row.timezone,
        }
    return TenantFixture(
        id=row.id, slug=slug, admin_key=keys["admin"], read_key=keys["read_only"], data=data
    )


def random_e164(country: str = "+1") -> str:
    """A valid, unused-looking North American number (555-01xx range is reserved for fiction)."""
    area = secrets.choice(["212", "415", "617", "312", "206", "303", "512", "646"])
    return f"{country}{area}{secrets.choice('23456789')}{secrets.randbelow(10**6):06d}"


def iter_routes(app: Any) -> list[tuple[str, Any]]:
    """(full path, route) for every route of the app, including those of included routers.

    FastAPI 0.16x keeps included routers nested (`_IncludedRouter`) instead of copying their routes
    into `app.routes`; this flattens both shapes.
    """
    found: list[tuple[str, Any]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "effective_candidates"):
                walk(route.effective_candidates())
            elif hasattr(route, "original_route"):
                found.append((route.path, route.original_route))
            else:
                found.append((getattr(route, "path", ""), route))

    walk(list(app.routes))
    return found


# -- telephony helpers (Twilio-signed requests; numbers and profiles inserted directly) -----------


def twilio_signature(url: str, params: dict[str, str], *, auth_token: str | None = None) -> str:
    """X-Twilio-Signature for a POST of `params` to `url`, computed by the twilio library itself."""
    import os

    from twilio.request_validator import RequestValidator

    token = auth_token if auth_token is not None else os.environ["TWILIO_AUTH_TOKEN"]
    return str(RequestValidator(token).compute_signature(url, params))


def twilio_post(
    client: TestClient,
    path: str,
    params: dict[str, str],
    *,
    signed_url: str | None = None,
    signed_params: dict[str, str] | None = None,
    auth_token: str | None = None,
    signature: str | None = None,
    omit_signature: bool = False,
) -> Any:
    """POST `params` as a form to `path` the way Twilio does: signed over PUBLIC_BASE_URL + path.

    `path` may carry a query string (it is signed too). The keyword arguments forge a bad
    request: sign another URL, other params or with another token, send a given signature, or
    none at all.
    """
    import os

    url = signed_url or os.environ["PUBLIC_BASE_URL"].rstrip("/") + path
    headers = {}
    if not omit_signature:
        headers["X-Twilio-Signature"] = (
            signature
            if signature is not None
            else twilio_signature(
                url, signed_params if signed_params is not None else params, auth_token=auth_token
            )
        )
    return client.post(path, data=params, headers=headers)


def twilio_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def insert_ai_profile(tenant_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    """Insert an AI profile through the app role (RLS applies) and return its id."""
    from app.config.database import transaction
    from app.models import AIProfile

    values: dict[str, Any] = {
        "name": "Receptionist",
        "system_prompt": "You are a helpful receptionist.",
        "greeting": "Hello, how can I help?",
        "language": "en-US",
        "voice": "en-US-Neural2-F",
    }
    values.update(fields)
    with transaction(tenant_id) as session:
        profile = AIProfile(tenant_id=tenant_id, **values)
        session.add(profile)
        session.flush()
        return profile.id


def insert_phone_number(
    tenant_id: uuid.UUID,
    *,
    number: str | None = None,
    ai_profile_id: uuid.UUID | None = None,
    status: str = "active",
) -> tuple[uuid.UUID, str]:
    """Insert a phone number through the app role (RLS applies); returns (id, E.164 number)."""
    from app.config.database import transaction
    from app.models import PhoneNumber

    number = number or random_e164()
    with transaction(tenant_id) as session:
        row = PhoneNumber(
            tenant_id=tenant_id, number=number, ai_profile_id=ai_profile_id, status=status
        )
        session.add(row)
        session.flush()
        return row.id, number


@dataclass(frozen=True)
class NumberAndProfile:
    number_id: uuid.UUID
    number: str
    profile_id: uuid.UUID | None


def create_number_and_profile(
    tenant_id: uuid.UUID,
    *,
    attach_profile: bool = True,
    default_profile: bool = False,
    with_profile: bool = True,
    number_status: str = "active",
    **profile_fields: Any,
) -> NumberAndProfile:
    """A phone number of `tenant_id` and (unless with_profile=False) an AI profile for it.

    attach_profile puts the profile on the number; default_profile makes it the tenant's default.
    """
    profile_id = (
        insert_ai_profile(tenant_id, is_default=default_profile, **profile_fields)
        if with_profile
        else None
    )
    number_id, number = insert_phone_number(
        tenant_id,
        ai_profile_id=profile_id if attach_profile else None,
        status=number_status,
    )
    return NumberAndProfile(number_id=number_id, number=number, profile_id=profile_id)


def insert_call(tenant_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    """Insert a call through the app role (RLS applies) and return its id; fields override."""
    from app.config.database import transaction
    from app.models import Call
    from app.models.base import utcnow

    values: dict[str, Any] = {
        "direction": "inbound",
        "status": "completed",
        "from_number": random_e164(),
        "to_number": random_e164(),
        "provider_call_sid": twilio_call_sid(),
        "started_at": utcnow(),
        "billable_minutes": 0,
    }
    values.update(fields)
    if values["status"] == "in_progress" and "answered_at" not in fields:
        values["answered_at"] = values["started_at"] or utcnow()  # a talking call was answered
    with transaction(tenant_id) as session:
        call = Call(tenant_id=tenant_id, **values)
        session.add(call)
        session.flush()
        return call.id


def insert_call_turn(tenant_id: uuid.UUID, call_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    """Insert a transcript turn of `call_id` through the app role and return its id."""
    from app.config.database import transaction
    from app.models import CallTurn

    with transaction(tenant_id) as session:
        turn = CallTurn(tenant_id=tenant_id, call_id=call_id, **fields)
        session.add(turn)
        session.flush()
        return turn.id


def count_tenant_rows(engine: Any, table: str, tenant_id: uuid.UUID, where: str = "") -> int:
    """Rows of `table` owned by `tenant_id` (optionally AND `where`), seen in system scope.

    `table` and `where` are test-written SQL, never input.
    """
    from sqlalchemy import text

    sql = f"SELECT count(*) FROM {table} WHERE tenant_id = :tid"  # noqa: S608
    if where:
        sql += f" AND ({where})"
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        return int(conn.execute(text(sql), {"tid": str(tenant_id)}).scalar_one())


@dataclass(frozen=True)
class RingingCall:
    """A call as the voice webhook leaves it: `ringing`, with its number, profile and CallSid."""

    tenant_id: uuid.UUID
    call_id: uuid.UUID
    call_sid: str
    profile_id: uuid.UUID
    number_id: uuid.UUID
    number: str


def create_ringing_call(tenant_id: uuid.UUID, **profile_fields: Any) -> RingingCall:
    """An AI profile (with `profile_fields`), a number using it and a ringing inbound call."""
    setup = create_number_and_profile(tenant_id, **profile_fields)
    assert setup.profile_id is not None
    call_sid = twilio_call_sid()
    call_id = insert_call(
        tenant_id,
        status="ringing",
        phone_number_id=setup.number_id,
        ai_profile_id=setup.profile_id,
        to_number=setup.number,
        provider_call_sid=call_sid,
    )
    return RingingCall(
        tenant_id=tenant_id,
        call_id=call_id,
        call_sid=call_sid,
        profile_id=setup.profile_id,
        number_id=setup.number_id,
        number=setup.number,
    )


def parse_twiml(document: str) -> Any:
    """The root <Response> element of a TwiML answer (our own server's XML, parsed in tests)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(document)  # noqa: S314 - the app under test produced it
    assert root.tag == "Response", document
    return root


def twilio_urls() -> Any:
    """The public URLs of the app's Twilio endpoints, as the request dependency builds them."""
    from app.api.deps import _twilio_urls
    from main import app

    return _twilio_urls(app)


def plan(name: str) -> Any:
    """A plan of the catalogue (the `plans` table)."""
    from app.config.database import transaction
    from app.services.plans import PlanService

    with transaction() as session:
        return PlanService(session).get(name)


def create_billing_tenant(
    *, plan: str = "starter", timezone: str = "UTC", since: Any = None, name: str = "Billed"
) -> uuid.UUID:
    """A tenant made by the services in `timezone`, holding `plan` since `since` (its plan
    history is backdated: billing prorates from the tenant's creation)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from app.config.database import system_scope, transaction
    from app.schemas.tenants import TenantCreate
    from app.services.tenants import TenantService

    with transaction() as session:
        tenant = TenantService(session).create(
            TenantCreate(name=name, slug=unique_slug("bill"), plan=plan, timezone=timezone)
        )
        with system_scope(session):
            session.execute(
                text("UPDATE plan_changes SET changed_at = :since WHERE tenant_id = :tid"),
                {"since": since or datetime(2025, 1, 1, tzinfo=UTC), "tid": tenant.id},
            )
    return tenant.id


def end_call_at(
    tenant_id: uuid.UUID,
    ended_at: Any,
    *,
    seconds: int,
    started_at: Any = None,
    send: bool = True,
) -> tuple[uuid.UUID, dict[str, str]]:
    """A talking call of `tenant_id` ended by Twilio's `completed` status callback, whose
    Timestamp says `ended_at` (UTC); returns the call's id and the callback's form (to replay).
    `send=False`: the call is left talking, the callback not yet applied."""
    from datetime import timedelta
    from email.utils import format_datetime

    call_sid = twilio_call_sid()
    started = started_at or ended_at - timedelta(seconds=seconds)
    call_id = insert_call(
        tenant_id,
        status="in_progress",
        provider_call_sid=call_sid,
        started_at=started,
        answered_at=started,
    )
    form = {
        "CallSid": call_sid,
        "CallStatus": "completed",
        "CallDuration": str(seconds),
        "Timestamp": format_datetime(ended_at, usegmt=True),
    }
    if send:
        apply_status_callback(form)
    return call_id, form


def apply_status_callback(form: dict[str, str]) -> None:
    """A (signed) status callback as the endpoint applies it, in a transaction of its own."""
    from app.config.database import transaction
    from app.services.telephony import TelephonyService

    with transaction() as session:
        TelephonyService(session, twilio_urls()).apply_status_callback(form)
