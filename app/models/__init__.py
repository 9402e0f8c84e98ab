"""All models, imported here so Alembic and the tests see the whole metadata."""

from app.models.ai_profile import AIProfile
from app.models.api_key import ApiKey
from app.models.base import Base
from app.models.billing_period import BillingPeriod
from app.models.call import Call
from app.models.call_turn import CallTurn
from app.models.idempotency_key import AdminIdempotencyKey, IdempotencyKey
from app.models.invoice import Invoice, InvoiceCounter
from app.models.phone_number import PhoneNumber
from app.models.plan import Plan
from app.models.plan_change import PlanChange
from app.models.tenant import Tenant
from app.models.usage_record import UsageRecord
from app.models.webhook_delivery import WebhookDelivery
from app.models.webhook_delivery_attempt import WebhookDeliveryAttempt
from app.models.webhook_endpoint import WebhookEndpoint
from app.models.webhook_event import WebhookEvent

__all__ = [
    "AIProfile",
    "AdminIdempotencyKey",
    "ApiKey",
    "Base",
    "BillingPeriod",
    "Call",
    "CallTurn",
    "Invoice",
    "InvoiceCounter",
    "IdempotencyKey",
    "PhoneNumber",
    "Plan",
    "PlanChange",
    "Tenant",
    "UsageRecord",
    "WebhookDelivery",
    "WebhookDeliveryAttempt",
    "WebhookEndpoint",
    "WebhookEvent",
]
