"""The OpenAPI document is good enough to generate a client from: every operation has the route
function's name as its id (unique), a declared tag, an example body, and a schema for every answer.

Walked over every route of the app, so a new route is held to the same rules.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.testclient import TestClient

from main import app
from tests.helpers import iter_routes

METHODS = {"get", "post", "put", "patch", "delete"}
# Bodies that are not JSON: TwiML and the CSV export; 204 has none.
NON_JSON = {"application/xml", "text/csv", "application/pdf"}


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _api_routes() -> list[APIRoute]:
    return [route for _, route in iter_routes(app) if isinstance(route, APIRoute)]


def test_route_names_are_unique_and_are_the_operation_ids(spec: dict[str, Any]) -> None:
    names = Counter(route.name for route in _api_routes())
    assert [name for name, count in names.items() if count > 1] == []
    ids = {operation["operationId"] for _, _, operation in _operations(spec)}
    assert ids == {route.name for route in _api_routes() if route.include_in_schema}
    assert {"list_calls", "create_outbound_call", "get_call", "create_tenant"} <= ids


def test_every_operation_has_a_declared_tag(spec: dict[str, Any]) -> None:
    declared = {tag["name"] for tag in spec["tags"]}
    for method, path, operation in _operations(spec):
        assert operation.get("tags"), f"{method} {path} has no tag"
        assert set(operation["tags"]) <= declared, f"{method} {path}: undeclared tag"


def test_every_request_body_has_an_example_the_schema_accepts(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    bodies = 0
    for route in _api_routes():
        if route.body_field is None:
            continue
        model = route.body_field.field_info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        examples = schemas[model.__name__].get("examples")
        assert examples, f"{route.name}: no example body"
        for example in examples:
            model.model_validate(example)  # an example that would be refused teaches nothing
        bodies += 1
    assert bodies >= 10


def test_every_response_has_a_schema_and_errors_the_error_model(spec: dict[str, Any]) -> None:
    error_models = {"#/components/schemas/ErrorBody", "#/components/schemas/ValidationErrorBody"}
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if status == "204":
                continue
            content = response.get("content", {})
            assert content, f"{method} {path} {status}: no body documented"
            for media_type, body in content.items():
                if media_type in NON_JSON:
                    continue
                schema = body.get("schema", {})
                assert schema, f"{method} {path} {status}: no schema"
                if status.startswith(("4", "5")) and path != "/healthz":
                    assert schema.get("$ref") in error_models, f"{method} {path} {status}"


def test_a_validation_error_matches_its_documented_model(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    from app.errors import ValidationErrorBody

    response = client.post("/api/v1/tenants", json={"name": ""}, headers=admin_headers)
    assert response.status_code == 422
    assert ValidationErrorBody.model_validate(response.json()).code == "validation_error"
