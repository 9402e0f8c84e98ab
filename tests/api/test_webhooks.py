"""Webhook endpoints: CRUD, the secret shown only at create/rotate, SSRF at registration, the log."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from app.config.settings import Settings, settings
from tests.helpers import TenantFixture

# Nothing listens on the discard port: a stray delivery fails fast wherever a worker runs.
URL = "http://127.0.0.1:9/hooks"


def _create(client: TestClient, tenant: TenantFixture, **body: Any) -> dict[str, Any]:
    response = client.post(
        tenant.url("/webhooks"), json={"url": URL, **body}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def _secret_bytes(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def test_create_shows_the_secret_once(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    created = _create(
        client, tenant, description="CRM", event_types=["call.ended", "call.ended", "call.started"]
    )
    assert created["url"] == URL
    assert created["description"] == "CRM"
    assert created["event_types"] == ["call.ended", "call.started"]
    assert created["enabled"] is True and created["disabled_reason"] is None
    assert created["tenant_id"] == str(tenant.id)
    assert len(_secret_bytes(created["secret"])) >= 24
    Webhook(created["secret"])  # the format standardwebhooks accepts

    one = client.get(tenant.url(f"/webhooks/{created['id']}"), headers=tenant.read_headers)
    assert one.status_code == 200
    listed = client.get(tenant.url("/webhooks"), headers=tenant.read_headers).json()
    assert [e["id"] for e in listed["items"]] == [created["id"]]
    for shown in (one.json(), listed["items"][0]):
        assert "secret" not in shown and created["secret"] not in str(shown)
        assert shown["event_types"] == ["call.ended", "call.started"]


def test_every_endpoint_gets_its_own_secret(client: TestClient, tenant: TenantFixture) -> None:
    secrets = {_create(client, tenant)["secret"] for _ in range(3)}
    assert len(secrets) == 3


def test_rotate_secret_returns_a_new_one(client: TestClient, tenant: TenantFixture) -> None:
    created = _create(client, tenant)
    rotated = client.post(
        tenant.url(f"/webhooks/{created['id']}/rotate-secret"), headers=tenant.headers
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != created["secret"]
    assert len(_secret_bytes(rotated.json()["secret"])) >= 24
    shown = client.get(tenant.url(f"/webhooks/{created['id']}"), headers=tenant.headers).json()
    assert "secret" not in shown


@pytest.mark.parametrize(
    "event_types",
    [["call.exploded"], ["call.ended", "nope"], "call.ended", [""]],
)
def test_unknown_event_type_is_422_and_creates_nothing(
    client: TestClient, tenant: TenantFixture, event_types: Any
) -> None:
    response = client.post(
        tenant.url("/webhooks"),
        json={"url": URL, "event_types": event_types},
        headers=tenant.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert client.get(tenant.url("/webhooks"), headers=tenant.headers).json()["items"] == []


def test_unknown_fields_and_bad_bodies_are_422(client: TestClient, tenant: TenantFixture) -> None:
    for body in ({"url": URL, "secret": "whsec_mine"}, {}, {"url": ""}, {"url": "x" * 3000}):
        response = client.post(tenant.url("/webhooks"), json=body, headers=tenant.headers)
        assert response.status_code == 422, (body, response.text)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hooks",
        "http://localhost:8000/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://100.64.0.1/",
        "https://user:pass@example.com/",
        "ftp://example.com/",
        "javascript:alert(1)",
    ],
)
def test_hostile_url_is_refused_at_registration(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE_URLS", False)
    response = client.post(tenant.url("/webhooks"), json={"url": url}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "unsafe_url"
    assert body["detail"].startswith("The webhook URL is not allowed: ")
    assert client.get(tenant.url("/webhooks"), headers=tenant.headers).json()["items"] == []


def test_private_urls_pass_only_when_allowed(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same URL the test above refuses is accepted when WEBHOOK_ALLOW_PRIVATE_URLS=true.
    assert settings.WEBHOOK_ALLOW_PRIVATE_URLS is True
    assert _create(client, tenant, url="http://127.0.0.1/hooks")["url"] == "http://127.0.0.1/hooks"
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE_URLS", False)
    response = client.post(
        tenant.url("/webhooks"), json={"url": "http://127.0.0.1/hooks"}, headers=tenant.headers
    )
    assert response.status_code == 422


def test_https_is_required_in_production(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Settings, "webhook_require_https", property(lambda _: True))
    response = client.post(tenant.url("/webhooks"), json={"url": URL}, headers=tenant.headers)
    assert response.status_code == 422
    assert "https" in response.json()["detail"]


def test_url_is_normalised(client: TestClient, tenant: TenantFixture) -> None:
    created = _create(client, tenant, url="HTTP://127.0.0.1:80/Hooks?x=1#frag")
    assert created["url"] == "http://127.0.0.1/Hooks?x=1"


def test_patch_is_partial_and_checks_the_url(
    client: TestClient, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _create(client, tenant, description="before", event_types=["call.ended"])
    url = tenant.url(f"/webhooks/{created['id']}")
    response = client.patch(url, json={"description": "after"}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["description"] == "after"
    assert response.json()["event_types"] == ["call.ended"] and response.json()["url"] == URL

    response = client.patch(url, json={"event_types": [], "enabled": False}, headers=tenant.headers)
    assert response.json()["event_types"] == [] and response.json()["enabled"] is False
    response = client.patch(url, json={"description": None}, headers=tenant.headers)
    assert response.json()["description"] is None

    for bad in ({"event_types": ["call.nope"]}, {"url": None}, {"enabled": None}, {"x": 1}):
        assert client.patch(url, json=bad, headers=tenant.headers).status_code == 422, bad

    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE_URLS", False)
    response = client.patch(url, json={"url": "http://169.254.169.254/"}, headers=tenant.headers)
    assert response.status_code == 422 and response.json()["code"] == "unsafe_url"
    assert client.get(url, headers=tenant.headers).json()["url"] == URL


def test_delete_removes_the_endpoint_and_its_log(
    client: TestClient, tenant: TenantFixture, owner_engine: Engine
) -> None:
    created = _create(client, tenant)
    url = tenant.url(f"/webhooks/{created['id']}")
    assert client.post(f"{url}/test", headers=tenant.headers).status_code == 202
    assert client.delete(url, headers=tenant.headers).status_code == 204
    assert client.get(url, headers=tenant.headers).status_code == 404
    assert client.delete(url, headers=tenant.headers).status_code == 404
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        left = conn.scalar(
            text("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = :e"),
            {"e": created["id"]},
        )
    assert left == 0


def test_test_event_queues_a_delivery_for_that_endpoint_only(
    client: TestClient, tenant: TenantFixture
) -> None:
    target = _create(client, tenant, event_types=["call.ended"])
    bystander = _create(client, tenant)
    response = client.post(tenant.url(f"/webhooks/{target['id']}/test"), headers=tenant.headers)
    assert response.status_code == 202, response.text
    delivery = response.json()
    assert delivery["event_type"] == "webhook.test"
    assert delivery["status"] == "pending" and delivery["attempt_count"] == 0
    assert delivery["endpoint_id"] == target["id"]

    log = client.get(
        tenant.url(f"/webhooks/{target['id']}/deliveries"), headers=tenant.read_headers
    ).json()
    assert [d["id"] for d in log["items"]] == [delivery["id"]]
    other_log = client.get(
        tenant.url(f"/webhooks/{bystander['id']}/deliveries"), headers=tenant.headers
    ).json()
    assert other_log["items"] == []

    detail = client.get(
        tenant.url(f"/webhooks/{target['id']}/deliveries/{delivery['id']}"),
        headers=tenant.read_headers,
    ).json()
    assert detail["payload"]["type"] == "webhook.test"
    assert detail["payload"]["data"]["webhook_id"] == target["id"]
    assert detail["attempts"] == []


def test_test_event_on_a_disabled_endpoint_is_409(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant, enabled=False)
    response = client.post(tenant.url(f"/webhooks/{created['id']}/test"), headers=tenant.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "endpoint_disabled"


def test_delivery_log_pages_newest_first_and_filters_by_status(
    client: TestClient, tenant: TenantFixture
) -> None:
    created = _create(client, tenant)
    base = tenant.url(f"/webhooks/{created['id']}")
    queued = [client.post(f"{base}/test", headers=tenant.headers).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"{base}/deliveries", params=params, headers=tenant.headers).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(queued))
    pending = client.get(
        f"{base}/deliveries", params={"status": "pending"}, headers=tenant.headers
    ).json()
    assert len(pending["items"]) == 5
    dead = client.get(f"{base}/deliveries", params={"status": "dead"}, headers=tenant.headers)
    assert dead.json()["items"] == []
    bad = client.get(f"{base}/deliveries", params={"status": "lost"}, headers=tenant.headers)
    assert bad.status_code == 422
    bad_cursor = client.get(
        f"{base}/deliveries", params={"cursor": "garbage"}, headers=tenant.headers
    )
    assert bad_cursor.status_code == 422 and bad_cursor.json()["code"] == "invalid_cursor"


def test_redeliver_and_its_refusals(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    created = _create(client, tenant)
    base = tenant.url(f"/webhooks/{created['id']}")
    delivery = client.post(f"{base}/test", headers=tenant.headers).json()
    response = client.post(f"{base}/deliveries/{delivery['id']}/redeliver", headers=tenant.headers)
    assert response.status_code == 202, response.text
    assert response.json()["id"] == delivery["id"] and response.json()["status"] == "pending"

    # A delivery id under another endpoint, or of another tenant, is simply not found.
    second = _create(client, tenant)
    response = client.post(
        tenant.url(f"/webhooks/{second['id']}/deliveries/{delivery['id']}/redeliver"),
        headers=tenant.headers,
    )
    assert response.status_code == 404
    foreign = _create(client, other_tenant)
    for method, path in (
        ("POST", f"/webhooks/{foreign['id']}/deliveries/{delivery['id']}/redeliver"),
        ("GET", f"/webhooks/{foreign['id']}/deliveries/{delivery['id']}"),
        ("GET", f"/webhooks/{created['id']}/deliveries"),
    ):
        response = client.request(method, other_tenant.url(path), headers=other_tenant.headers)
        assert response.status_code == 404, (method, path, response.text)
    missing = client.post(f"{base}/deliveries/{uuid.uuid4()}/redeliver", headers=tenant.headers)
    assert missing.status_code == 404

    client.patch(base, json={"enabled": False}, headers=tenant.headers)
    response = client.post(f"{base}/deliveries/{delivery['id']}/redeliver", headers=tenant.headers)
    assert response.status_code == 409 and response.json()["code"] == "endpoint_disabled"


def test_read_only_key_reads_but_cannot_write(client: TestClient, tenant: TenantFixture) -> None:
    created = _create(client, tenant)
    base = tenant.url(f"/webhooks/{created['id']}")
    assert client.get(base, headers=tenant.read_headers).status_code == 200
    for method, path in (
        ("POST", tenant.url("/webhooks")),
        ("PATCH", base),
        ("DELETE", base),
        ("POST", f"{base}/test"),
        ("POST", f"{base}/rotate-secret"),
    ):
        response = client.request(method, path, json={"url": URL}, headers=tenant.read_headers)
        assert response.status_code == 403, (method, path)
