"""Tenants' webhook endpoints and their delivery log (SPEC §11): what the API manages.

Sending is the worker's (app/webhooks/delivery.py). A delivery's id is its `webhook-id` on every
attempt, including after a manual redelivery (which starts a new cycle of attempts for the same
delivery, so receivers can de-duplicate on it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app import crypto
from app.config.settings import settings
from app.errors import Conflict, InvalidInput, NotFound
from app.models import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint, WebhookEvent
from app.models.base import utcnow
from app.schemas.webhooks import WebhookCreate, WebhookUpdate
from app.services.events import notify_workers, record_event
from app.services.pagination import PageResult, paginate
from app.services.scope import TenantScope, get_scoped, get_scoped_for_update, scoped
from app.webhooks.signing import generate_secret
from app.webhooks.ssrf import UnsafeURLError, check_webhook_url

# After a rotation the old secret keeps signing (as a second signature) for this long.
SECRET_ROTATION_GRACE = timedelta(hours=24)


class UnsafeWebhookURL(InvalidInput):
    code = "unsafe_url"
    default_detail = "The webhook URL is not allowed."


class EndpointDisabled(Conflict):
    code = "endpoint_disabled"
    default_detail = "The webhook endpoint is disabled; enable it first."


class DeliveryInProgress(Conflict):
    code = "delivery_in_progress"
    default_detail = "The delivery is being attempted right now; retry in a moment."


class WebhookService:
    """A tenant's endpoints and their delivery log; every query starts from `scoped()`."""

    def __init__(self, session: Session, scope: TenantScope) -> None:
        self.session = session
        self.scope = scope

    # --- endpoints ---------------------------------------------------------------------------

    def create(self, data: WebhookCreate) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its secret (returned here and by rotate_secret only).

        The URL is checked against SSRF rules first (422 `unsafe_url` with the reason).
        """
        secret = generate_secret()
        endpoint = WebhookEndpoint(
            tenant_id=self.scope.tenant_id,
            url=_checked_url(data.url),
            description=data.description,
            event_types=list(data.event_types),
            enabled=data.enabled,
            secret=crypto.encrypt(secret),
        )
        self.session.add(endpoint)
        self.session.flush()
        return endpoint, secret

    def list(self, *, limit: int, cursor: str | None) -> PageResult[WebhookEndpoint]:
        return paginate(
            self.session,
            scoped(WebhookEndpoint, self.scope),
            WebhookEndpoint,
            limit=limit,
            cursor=cursor,
        )

    def get(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        return get_scoped(
            self.session, WebhookEndpoint, self.scope, endpoint_id, what="Webhook endpoint"
        )

    def update(self, endpoint_id: uuid.UUID, data: WebhookUpdate) -> WebhookEndpoint:
        """Apply the fields present in `data`. A new URL is SSRF-checked; enabling clears the
        disabled reason and the failure streak (deliveries already dead stay dead until redelivered)."""
        endpoint = self._get_for_update(endpoint_id)
        fields = data.model_fields_set
        for name in ("url", "event_types", "enabled"):
            if name in fields and getattr(data, name) is None:
                raise InvalidInput(f"{name} cannot be null.", code="invalid_input")
        if data.url is not None:
            endpoint.url = _checked_url(data.url)
        if "description" in fields:
            endpoint.description = data.description
        if data.event_types is not None:
            endpoint.event_types = list(data.event_types)
        if data.enabled is not None:
            if data.enabled and not endpoint.enabled:
                endpoint.disabled_reason = None
                endpoint.failing_since = None
            endpoint.enabled = data.enabled
        self.session.flush()
        return endpoint

    def delete(self, endpoint_id: uuid.UUID) -> None:
        """Delete the endpoint with its deliveries and attempt log; nothing more is sent to it."""
        endpoint = self._get_for_update(endpoint_id)
        self.session.delete(endpoint)
        self.session.flush()

    def rotate_secret(self, endpoint_id: uuid.UUID) -> tuple[WebhookEndpoint, str]:
        """A new secret, used from now on. For 24 hours deliveries carry a second signature made
        with the previous secret, so a receiver can switch without rejecting anything."""
        endpoint = self._get_for_update(endpoint_id)
        secret = generate_secret()
        # Stored encrypted (a legacy plaintext one is encrypted on the way).
        endpoint.previous_secret = crypto.reencrypt(endpoint.secret)
        endpoint.previous_secret_expires_at = utcnow() + SECRET_ROTATION_GRACE
        endpoint.secret = crypto.encrypt(secret)
        self.session.flush()
        return endpoint, secret

    def send_test(self, endpoint_id: uuid.UUID) -> WebhookDelivery:
        """Queue a `webhook.test` event for this endpoint only (whatever its subscriptions).

        Sent by the worker once the request commits. A disabled endpoint: 409 endpoint_disabled.
        """
        endpoint = self.get(endpoint_id)
        if not endpoint.enabled:
            raise EndpointDisabled()
        recorded = record_event(
            self.session,
            self.scope.tenant_id,
            "webhook.test",
            {"webhook_id": str(endpoint.id), "message": "This is a test event from VCA."},
            endpoint_id=endpoint.id,
        )
        return self._delivery(endpoint.id, recorded.delivery_ids[0])

    # --- deliveries --------------------------------------------------------------------------

    def list_deliveries(
        self,
        endpoint_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
        status: str | None = None,
    ) -> PageResult[WebhookDelivery]:
        """The endpoint's deliveries, newest first (keyset pages), optionally of one status."""
        self.get(endpoint_id)
        statement = scoped(WebhookDelivery, self.scope).where(
            WebhookDelivery.endpoint_id == endpoint_id
        )
        if status is not None:
            statement = statement.where(WebhookDelivery.status == status)
        return paginate(self.session, statement, WebhookDelivery, limit=limit, cursor=cursor)

    def get_delivery(
        self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> tuple[WebhookDelivery, dict[str, Any], Sequence[WebhookDeliveryAttempt]]:
        """One delivery with the body it sends (parsed) and every attempt, oldest first."""
        delivery = self._delivery(endpoint_id, delivery_id)
        body = self.session.scalars(
            scoped(WebhookEvent, self.scope)
            .where(WebhookEvent.id == delivery.event_id)
            .with_only_columns(WebhookEvent.body)
        ).one()
        attempts = list(
            self.session.scalars(
                scoped(WebhookDeliveryAttempt, self.scope)
                .where(WebhookDeliveryAttempt.delivery_id == delivery.id)
                .order_by(WebhookDeliveryAttempt.created_at, WebhookDeliveryAttempt.id)
            )
        )
        return delivery, json.loads(body), attempts

    def redeliver(self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
        """Send the delivery again as soon as a worker is free: a new cycle of up to 8 attempts for
        the same delivery (same `webhook-id`; the attempt log keeps the earlier cycles).

        409 `delivery_in_progress` while a worker holds it; 409 `endpoint_disabled` when the
        endpoint is disabled.
        """
        endpoint = self.get(endpoint_id)
        if not endpoint.enabled:
            raise EndpointDisabled()
        delivery = self.session.scalars(
            scoped(WebhookDelivery, self.scope)
            .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.id == delivery_id)
            .with_for_update()
        ).one_or_none()
        if delivery is None:
            raise _delivery_not_found()
        if delivery.status == "delivering":
            raise DeliveryInProgress()
        delivery.status = "pending"
        delivery.attempt_count = 0
        delivery.next_attempt_at = utcnow()
        delivery.lease_expires_at = None
        self.session.flush()
        notify_workers(self.session)
        return delivery

    def _delivery(self, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
        self.get(endpoint_id)
        delivery = self.session.scalars(
            scoped(WebhookDelivery, self.scope).where(
                WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.id == delivery_id
            )
        ).one_or_none()
        if delivery is None:
            raise _delivery_not_found()
        return delivery

    def _get_for_update(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        return get_scoped_for_update(
            self.session, WebhookEndpoint, self.scope, endpoint_id, what="Webhook endpoint"
        )


def _delivery_not_found() -> NotFound:
    return NotFound("Webhook delivery not found.")


def _checked_url(url: str) -> str:
    try:
        return check_webhook_url(
            url,
            allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS,
            require_https=settings.webhook_require_https,
        )
    except UnsafeURLError as exc:
        raise UnsafeWebhookURL(f"The webhook URL is not allowed: {exc.reason}.") from exc


def reencrypt_endpoint_secrets(
    session: Session, tenant_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> tuple[int, uuid.UUID | None]:
    """Re-encrypt up to `limit` of the tenant's endpoints (ids after `after`) with the first key of
    ENCRYPTION_KEYS, legacy plaintext included. Returns how many were rewritten and the last id
    seen (None when there are no more). The rows stay locked only for the caller's transaction."""
    statement = scoped(WebhookEndpoint, tenant_id).order_by(WebhookEndpoint.id).limit(limit)
    if after is not None:
        statement = statement.where(WebhookEndpoint.id > after)
    endpoints = list(session.scalars(statement.with_for_update()))
    for endpoint in endpoints:
        endpoint.secret = crypto.reencrypt(endpoint.secret)
        if endpoint.previous_secret is not None:
            endpoint.previous_secret = crypto.reencrypt(endpoint.previous_secret)
    session.flush()
    return len(endpoints), endpoints[-1].id if len(endpoints) == limit else None
