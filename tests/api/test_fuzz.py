"""The search for the next 500, made automatic: generated input against the real app and database.

Two searches, each bounded so the suite stays fast (raise FUZZ_EXAMPLES to search longer):
- hypothesis, with values chosen to break things (NUL, unpaired surrogates, huge and non-finite
  numbers, far-past and far-future timestamps, wrong content types, tampered cursors), thrown at
  every /api/v1 route with the fields the route's own schema names;
- schemathesis over the app's OpenAPI document, which generates valid and invalid requests for
  every operation.
The property is the same: no response is a 5xx.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from main import app
from tests.conftest import ADMIN_KEY
from tests.helpers import TenantFixture, create_tenant, iter_routes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
PARAM = re.compile(r"{(\w+)}")
ROUTES = sorted(
    (method, path, route)
    for path, route in iter_routes(app)
    if isinstance(route, APIRoute) and path.startswith("/api/v1")
    for method in route.methods - {"HEAD", "OPTIONS"}
    # Deleting the tenant under test would leave every later example a plain 404.
    if (method, path) != ("DELETE", "/api/v1/tenants/{tenant_id}")
)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _field_names(route: APIRoute) -> list[str]:
    names = [param.alias for param in route.dependant.query_params]
    body = route.body_field
    if body is not None:
        names += list(getattr(body.field_info.annotation, "model_fields", {}))
    return names or ["name"]


def _cursor(payload: Any) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


NASTY_TEXT = st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "x\udfffy", "\ufeff", "\u202e", "'; --", "%00", "+", " ", ""]
) | st.text(max_size=40)
NASTY_NUMBERS = (
    st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 2**63, -(2**63) - 1, 10**400]
    )
    | st.integers()
    | st.floats()
)
NASTY_TIMES = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "3000-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-03-08T02:30:00",
        "2026-03-08T02:30:00 05:00",
        "+275760-09-13T00:00:00Z",
    ]
)
TAMPERED_CURSORS = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(_cursor),
    st.sampled_from(
        [
            _cursor(["9999-12-31T23:59:59-14:00", str(uuid.uuid4())]),
            _cursor(["0001-01-01T00:00:00+14:00", str(uuid.uuid4())]),
            _cursor(["2026-01-01T00:00:00", str(uuid.uuid4())]),
            _cursor(["2026-01-01T00:00:00Z", "not-a-uuid"]),
            _cursor([[["x"]], None]),
            _cursor({"a": 1, "b": 2}),
            _cursor("[" * 300 + "]" * 300),
            _cursor(b"\xff\xfe\x00"),
        ]
    ),
)
SCALARS = st.one_of(st.none(), st.booleans(), NASTY_TEXT, NASTY_NUMBERS, NASTY_TIMES)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(NASTY_TEXT, children, max_size=3)
    ),
    max_leaves=6,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "text/plain",
        "application/xml",
        "",
        "multipart/form-data",
    ]
)


@pytest.fixture(scope="module")
def fuzz_tenant(client: TestClient) -> TenantFixture:
    return create_tenant(plan="pro")


def _url(path: str, tenant_id: uuid.UUID, ids: st.DataObject) -> str:
    def fill(match: re.Match[str]) -> str:
        if match.group(1) == "tenant_id":
            return str(tenant_id)
        return ids.draw(st.sampled_from([str(uuid.uuid4()), "0", "%00", "x" * 300]))

    return PARAM.sub(fill, path)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_no_route_answers_generated_input_with_a_5xx(
    client: TestClient, fuzz_tenant: TenantFixture, data: st.DataObject
) -> None:
    method, path, route = data.draw(st.sampled_from(ROUTES), label="route")
    names = _field_names(route)
    url = _url(path, fuzz_tenant.id, data)
    params = data.draw(
        st.dictionaries(
            st.sampled_from([*names, "cursor", "limit", "from", "to"]),
            st.one_of(NASTY_TEXT, NASTY_TIMES, TAMPERED_CURSORS, NASTY_NUMBERS.map(str)),
            max_size=3,
        ),
        label="query",
    )
    headers = dict(
        data.draw(st.sampled_from([ADMIN, fuzz_tenant.headers, fuzz_tenant.read_headers]))
    )
    content: bytes | None = None
    if method in {"POST", "PATCH", "PUT"}:
        body = data.draw(st.dictionaries(st.sampled_from(names), VALUES, max_size=4) | VALUES)
        content = json.dumps(body, allow_nan=True).encode()
        headers["Content-Type"] = data.draw(CONTENT_TYPES, label="content type")
    # Encoded by hand: a surrogate goes out as the bytes a careless client would send.
    query = urlencode(params, encoding="utf-8", errors="surrogatepass", quote_via=quote)
    response = client.request(method, f"{url}?{query}", content=content, headers=headers)
    assert response.status_code < 500, (method, url, params, content, response.text[:500])


# The fuzzing phase only: the coverage phase alone sends hundreds of requests per operation.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    app,
    config=schemathesis.Config.from_dict(
        {"phases": {name: {"enabled": False} for name in ("coverage", "examples", "stateful")}}
    ),
)


@schema.exclude(path_regex="^/telephony").parametrize()
@settings(
    max_examples=max(1, EXAMPLES // 12),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_openapi_operations_never_answer_5xx(case: Any, fuzz_tenant: TenantFixture) -> None:
    if "tenant_id" in (case.path_parameters or {}):
        case.path_parameters["tenant_id"] = str(fuzz_tenant.id)
    response = case.call(headers=ADMIN)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
