"""Error types: every failure a client can cause is one of these, rendered as {"detail", "code"}."""

from __future__ import annotations

from typing import Any, ClassVar


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


def error_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the errors a route can return."""
    return {
        error.status_code: {
            "description": error.default_detail,
            "content": {
                "application/json": {
                    "example": {"detail": error.default_detail, "code": error.code}
                }
            },
        }
        for error in errors
    }
