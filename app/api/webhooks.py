from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Cursor, DbSession, Limit, TenantContext, TransactionalRoute, Writer
from app.errors import Forbidden, InvalidInput, NotFound, Unauthorized, error_responses
from app.schemas.common import Page
from app.schemas.webhooks import (
    DeliveryAttemptOut,
    DeliveryDetail,
    DeliveryOut,
    DeliveryStatus,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
    WebhookWithSecret,
)
from app.services.webhooks import (
    DeliveryInProgress,
    EndpointDisabled,
    UnsafeWebhookURL,
    WebhookService,
)

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/webhooks", tags=["webhooks"]
)


def _with_secret(endpoint: object, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(Unauthorized, Forbidden, NotFound, UnsafeWebhookURL),
    summary="Register a webhook endpoint (the secret is shown only in this response)",
)
def create_webhook(data: WebhookCreate, session: DbSession, scope: Writer) -> WebhookWithSecret:
    endpoint, secret = WebhookService(session, scope).create(data)
    return _with_secret(endpoint, secret)


@router.get("", responses=error_responses(Unauthorized, NotFound))
def list_webhooks(
    session: DbSession, scope: TenantContext, limit: Limit = 20, cursor: Cursor = None
) -> Page[WebhookOut]:
    page = WebhookService(session, scope).list(limit=limit, cursor=cursor)
    return Page(
        items=[WebhookOut.model_validate(e) for e in page.items], next_cursor=page.next_cursor
    )


@router.get("/{webhook_id}", responses=error_responses(Unauthorized, NotFound))
def get_webhook(webhook_id: uuid.UUID, session: DbSession, scope: TenantContext) -> WebhookOut:
    return WebhookOut.model_validate(WebhookService(session, scope).get(webhook_id))


@router.patch(
    "/{webhook_id}",
    responses=error_responses(Unauthorized, Forbidden, NotFound, UnsafeWebhookURL),
    summary="Change an endpoint (enabling it again clears disabled_reason)",
)
def update_webhook(
    webhook_id: uuid.UUID, data: WebhookUpdate, session: DbSession, scope: Writer
) -> WebhookOut:
    return WebhookOut.model_validate(WebhookService(session, scope).update(webhook_id, data))


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Delete an endpoint with its delivery log",
)
def delete_webhook(webhook_id: uuid.UUID, session: DbSession, scope: Writer) -> Response:
    WebhookService(session, scope).delete(webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(Unauthorized, Forbidden, NotFound, EndpointDisabled),
    summary="Send a webhook.test event to this endpoint (returns the queued delivery)",
)
def test_webhook(webhook_id: uuid.UUID, session: DbSession, scope: Writer) -> DeliveryOut:
    return DeliveryOut.model_validate(WebhookService(session, scope).send_test(webhook_id))


@router.post(
    "/{webhook_id}/rotate-secret",
    responses=error_responses(Unauthorized, Forbidden, NotFound),
    summary="Replace the signing secret (the old one also signs for 24 hours)",
)
def rotate_webhook_secret(
    webhook_id: uuid.UUID, session: DbSession, scope: Writer
) -> WebhookWithSecret:
    endpoint, secret = WebhookService(session, scope).rotate_secret(webhook_id)
    return _with_secret(endpoint, secret)


@router.get(
    "/{webhook_id}/deliveries",
    responses=error_responses(Unauthorized, NotFound, InvalidInput),
    summary="The endpoint's delivery log, newest first",
)
def list_webhook_deliveries(
    webhook_id: uuid.UUID,
    session: DbSession,
    scope: TenantContext,
    limit: Limit = 20,
    cursor: Cursor = None,
    delivery_status: Annotated[
        DeliveryStatus | None, Query(alias="status", description="Only deliveries in this status.")
    ] = None,
) -> Page[DeliveryOut]:
    page = WebhookService(session, scope).list_deliveries(
        webhook_id, limit=limit, cursor=cursor, status=delivery_status
    )
    return Page(
        items=[DeliveryOut.model_validate(d) for d in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    responses=error_responses(Unauthorized, NotFound),
    summary="One delivery with its body and every attempt",
)
def get_webhook_delivery(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, session: DbSession, scope: TenantContext
) -> DeliveryDetail:
    delivery, payload, attempts = WebhookService(session, scope).get_delivery(
        webhook_id, delivery_id
    )
    return DeliveryDetail(
        **DeliveryOut.model_validate(delivery).model_dump(),
        payload=payload,
        attempts=[DeliveryAttemptOut.model_validate(a) for a in attempts],
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(
        Unauthorized, Forbidden, NotFound, DeliveryInProgress, EndpointDisabled
    ),
    summary="Send a delivery again (same webhook-id, a new cycle of attempts)",
)
def redeliver_webhook_delivery(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, session: DbSession, scope: Writer
) -> DeliveryOut:
    return DeliveryOut.model_validate(
        WebhookService(session, scope).redeliver(webhook_id, delivery_id)
    )
