"""SPEC 4, "Request limits": each refusal at the shared mechanism, answered with a code, never 500."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.middleware import MAX_BODY_BYTES
from tests.helpers import (
    TenantFixture,
    create_number_and_profile,
    random_e164,
    twilio_call_sid,
    twilio_post,
)

JSON = {"Content-Type": "application/json"}


def _raw(client: TestClient, method: str, url: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.request(method, url, content=body, headers=headers)


def test_a_json_body_sent_as_text_plain_is_415(client: TestClient, tenant: TenantFixture) -> None:
    body = json.dumps({"name": "Receptionist", "system_prompt": "Hi"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**tenant.headers, **({"Content-Type": content_type} if content_type else {})}
        response = _raw(client, "POST", tenant.url("/ai-profiles"), body, headers)
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["code"] == "unsupported_media_type"
    # JSON with parameters, and +json media types, are JSON.
    headers = {**tenant.headers, "Content-Type": "application/json; charset=utf-8"}
    assert _raw(client, "POST", tenant.url("/ai-profiles"), body, headers).status_code == 201
    # A POST without a body needs no content type.
    assert (
        client.post(tenant.url("/webhooks/not-a-uuid/test"), headers=tenant.headers).status_code
        == 422
    )


def test_a_body_over_1_mib_is_413_before_it_is_read(
    client: TestClient, tenant: TenantFixture
) -> None:
    big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = _raw(client, "POST", tenant.url("/ai-profiles"), big, {**tenant.headers, **JSON})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = client.post(
        tenant.url("/ai-profiles"), content=chunks(), headers={**tenant.headers, **JSON}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "a\\u0000b", "system_prompt": "x"}',
        '{"name": "a\\ud800b", "system_prompt": "x"}',
        '{"name": "ok", "system_prompt": "x", "greeting": "\\udfff"}',
        '{"name": "ok", "system_prompt": "x", "temperature": NaN}',
        '{"name": "ok", "system_prompt": "x", "temperature": Infinity}',
        '{"name": "ok", "system_prompt": "x", "max_tokens": 1' + "0" * 4000 + "}",
        '{"name": "ok", "system_prompt": "x", "language": "' + "\\ud83d" * 50 + '"}',
        '{"\\ud800": 1, "name": "ok", "system_prompt": "x"}',
    ],
)
def test_text_the_database_cannot_store_and_non_finite_numbers_are_422(
    client: TestClient, tenant: TenantFixture, raw: str
) -> None:
    response = _raw(
        client, "POST", tenant.url("/ai-profiles"), raw.encode(), {**tenant.headers, **JSON}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    response.content.decode("utf-8")  # strict UTF-8: no surrogate reached the response


def test_a_422_echoes_only_an_excerpt(client: TestClient, tenant: TenantFixture) -> None:
    body = {"name": "x" * 100_000, "system_prompt": "y" * 100_000, "bogus": "z" * 100_000}
    response = client.post(tenant.url("/ai-profiles"), json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert len(response.content) < 3_000
    # The whole body is the input of a missing-field error: also cut short.
    response = client.post(
        tenant.url("/ai-profiles"), json={"greeting": "g" * 100_000}, headers=tenant.headers
    )
    assert response.status_code == 422 and len(response.content) < 3_000


def test_timestamps_need_an_offset_and_a_year_from_2000_to_2999(
    client: TestClient, tenant: TenantFixture
) -> None:
    for expires_at in (
        "9999-12-31T23:59:59-05:00",  # a year Python cannot read back once in UTC
        "1999-12-31T23:59:59Z",
        "3000-01-01T00:00:00Z",
        "2030-01-01T00:00:00",  # naive
    ):
        response = client.post(
            tenant.url("/api-keys"),
            json={"name": "k", "expires_at": expires_at},
            headers=tenant.headers,
        )
        assert response.status_code == 422, (expires_at, response.text)
    listed = client.get(tenant.url("/api-keys"), headers=tenant.headers)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2  # none was stored
    for bound in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-01-01"):
        response = client.get(
            tenant.url("/calls"), params={"started_after": bound}, headers=tenant.headers
        )
        assert response.status_code == 422, (bound, response.text)


def test_a_nul_in_the_query_string_is_422(client: TestClient, tenant: TenantFixture) -> None:
    response = client.get(tenant.url("/ai-profiles?name=a%00b"), headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_text"


def test_two_authorization_headers_are_400(client: TestClient, tenant: TenantFixture) -> None:
    headers = [
        ("Authorization", f"Bearer {tenant.admin_key}"),
        ("Authorization", f"Bearer {tenant.read_key}"),
    ]
    response = client.get(tenant.url("/calls"), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "ambiguous_authorization"


@pytest.mark.parametrize(
    "duration", ["99999999999999999999", "-5", "1e9", "NaN", "٣", "12_0", " 7 ", "86401"]
)
def test_a_status_callback_with_any_call_duration_is_handled(
    client: TestClient, tenant: TenantFixture, duration: str
) -> None:
    setup = create_number_and_profile(tenant.id)
    sid = twilio_call_sid()
    voice = {"CallSid": sid, "From": random_e164(), "To": setup.number}
    assert twilio_post(client, "/telephony/twilio/voice", voice).status_code == 200
    for status in ("in-progress", "completed"):
        params = {
            "CallSid": sid,
            "CallStatus": status,
            "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
            "CallDuration": duration,
        }
        response = twilio_post(client, "/telephony/twilio/status", params)
        assert response.status_code == 200, response.text
    calls = client.get(tenant.url("/calls"), headers=tenant.headers).json()["items"]
    assert calls[0]["status"] == "completed"
    expected = 7 if duration == " 7 " else None
    if expected is not None:
        assert calls[0]["duration_seconds"] == expected
    else:
        assert 0 <= calls[0]["duration_seconds"] <= 5  # measured from the answer instead
