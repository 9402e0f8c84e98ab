"""Billing: a period's usage and charges, the invoices, their PDF and their voiding (SPEC 9)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import AdminOnly, Cursor, DbSession, Limit, TenantContext, TransactionalRoute
from app.errors import Conflict, Forbidden, NotFound, Unauthorized, error_responses
from app.models.base import utcnow
from app.models.invoice import InvoiceStatus
from app.schemas.billing import InvoiceOut, InvoiceVoid, UsageOut
from app.schemas.common import Page
from app.services.billing import BillingService

router = APIRouter(
    route_class=TransactionalRoute, prefix="/tenants/{tenant_id}/billing", tags=["billing"]
)

Period = Annotated[
    str | None,
    Query(
        pattern=r"^2\d{3}-(0[1-9]|1[0-2])$", description="A month, YYYY-MM.", examples=["2026-03"]
    ),
]


@router.get(
    "/usage",
    responses=error_responses(Unauthorized, NotFound),
    summary="A period's usage and charges so far (default: the current period)",
)
def get_usage(session: DbSession, scope: TenantContext, period: Period = None) -> UsageOut:
    return UsageOut.model_validate(BillingService(session, scope).usage(period, utcnow()))


@router.get("/invoices", responses=error_responses(Unauthorized, NotFound), summary="List invoices")
def list_invoices(
    session: DbSession,
    scope: TenantContext,
    limit: Limit = 20,
    cursor: Cursor = None,
    period: Period = None,
    status: Annotated[InvoiceStatus | None, Query()] = None,
) -> Page[InvoiceOut]:
    page = BillingService(session, scope).list_invoices(
        limit=limit, cursor=cursor, period=period, status=status
    )
    return Page(
        items=[InvoiceOut.model_validate(i) for i in page.items], next_cursor=page.next_cursor
    )


@router.get("/invoices/{invoice_id}", responses=error_responses(Unauthorized, NotFound))
def get_invoice(invoice_id: uuid.UUID, session: DbSession, scope: TenantContext) -> InvoiceOut:
    return InvoiceOut.model_validate(BillingService(session, scope).get_invoice(invoice_id))


@router.get(
    "/invoices/{invoice_id}/pdf",
    responses={
        **error_responses(Unauthorized, NotFound),
        200: {"content": {"application/pdf": {}}, "description": "The invoice as a PDF."},
    },
    response_class=Response,
    summary="The invoice as a PDF",
)
def get_invoice_pdf(invoice_id: uuid.UUID, session: DbSession, scope: TenantContext) -> Response:
    invoice, pdf = BillingService(session, scope).invoice_pdf(invoice_id)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
    )


@router.post(
    "/invoices/{invoice_id}/void",
    responses=error_responses(Unauthorized, Forbidden, NotFound, Conflict),
    summary="Void an invoice, with a reason (platform admin)",
)
def void_invoice(
    invoice_id: uuid.UUID,
    data: InvoiceVoid,
    session: DbSession,
    scope: TenantContext,
    _: AdminOnly,
) -> InvoiceOut:
    return InvoiceOut.model_validate(
        BillingService(session, scope).void(invoice_id, data.reason, utcnow())
    )
