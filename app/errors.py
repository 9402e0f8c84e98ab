"""Error types: every failure a client can cause is one of these, rendered as {"detail", "code"}."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, Field

# What an error may echo of the client's input: enough to recognise it, never the whole of it.
EXCERPT_CHARS = 80
_EXCERPT_ITEMS = 5
_EXCERPT_DEPTH = 2


class AppError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    default_detail: ClassVar[str] = "The request could not be processed."

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.error_code = code or self.code
        self.headers = headers or {}
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.error_code}


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    default_detail = "A valid API key is required (Authorization: Bearer <key>)."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_detail = "This API key is not allowed to do that."


class TenantSuspended(Forbidden):
    code = "tenant_suspended"
    default_detail = "This tenant is suspended: its data can be read but not changed."


class PlanLimitReached(Forbidden):
    code = "plan_limit_reached"
    default_detail = "The tenant's plan does not allow more of this resource."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_detail = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_detail = "The request conflicts with the current state of the resource."


class InvalidInput(AppError):
    """Input that passed the schema but breaks a rule only the service can check."""

    status_code = 422
    code = "invalid_input"
    default_detail = "The request contains an invalid value."


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_requests"
    default_detail = "Too many requests; retry later."


class BadGateway(AppError):
    status_code = 502
    code = "provider_error"
    default_detail = "An upstream provider failed."


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_detail = "The service is temporarily unavailable; retry later."

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": "5"})


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    default_detail = "The database is unavailable; retry shortly."


class AtCapacity(ServiceUnavailable):
    code = "capacity"
    default_detail = "This server holds all the live calls it can; retry on another."


class ErrorBody(BaseModel):
    """Every error: a sentence for people and a stable code for programs."""

    detail: str = Field(examples=["Not found."])
    code: str = Field(examples=["not_found"])


class ValidationIssue(BaseModel):
    """One problem with the request, as FastAPI reports it."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, str] | None = None


class ValidationErrorBody(BaseModel):
    """422: FastAPI's list of issues (code `validation_error`), or a rule only the service can
    check as one sentence (e.g. `unsafe_url`, `invalid_range`)."""

    detail: list[ValidationIssue] | str
    code: str = Field(examples=["validation_error"])


def _response(status_code: int, errors: list[tuple[str, str]]) -> dict[str, Any]:
    model: type[BaseModel] = ErrorBody
    if status_code == 422:
        model = ValidationErrorBody
        if all(code != "validation_error" for code, _ in errors):
            errors = [("validation_error", "The request is invalid."), *errors]
    examples = {code: {"value": {"detail": detail, "code": code}} for code, detail in errors}
    return {
        "model": model,
        "description": " / ".join(f"`{code}`: {detail}" for code, detail in errors),
        "content": {"application/json": {"examples": examples}},
    }


def error_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the errors a route can return, each with the error model
    and one example per code (several errors may share a status)."""
    by_status: dict[int, list[tuple[str, str]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append((error.code, error.default_detail))
    return {status: _response(status, codes) for status, codes in by_status.items()}


# Every route that takes input may answer 422 (FastAPI's validation): documented once, app-wide.
VALIDATION_ERROR_RESPONSE: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ValidationErrorBody,
        "description": "The request is invalid (`validation_error`).",
    }
}


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    default_detail = "The request body is larger than 1 MiB."


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    default_detail = "Send the request body as JSON (Content-Type: application/json)."


def printable(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` cut to `limit` characters, and encodable as UTF-8 (an unpaired surrogate is shown
    escaped): safe to put in a JSON response."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def excerpt(value: Any, limit: int = EXCERPT_CHARS, _depth: int = 0) -> Any:
    """A short excerpt of client input that JSON can always serialise: strings and bytes cut and
    made encodable, non-finite and huge numbers as text, containers cut to a few items."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return printable(value, limit)
    if isinstance(value, bytes | bytearray):
        return printable(bytes(value[: limit * 4]).decode("utf-8", "replace"), limit)
    if _depth >= _EXCERPT_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:_EXCERPT_ITEMS]
        return {printable(str(k), limit): excerpt(v, limit, _depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [excerpt(v, limit, _depth + 1) for v in list(value)[:_EXCERPT_ITEMS]]
    return printable(str(value), limit)
