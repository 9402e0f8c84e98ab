"""An invoice as a PDF a tenant's accountant can file (fpdf2, pure Python)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from app.config.settings import settings
from app.models import Invoice

ISSUER = "VCA Voice AI Platform"


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _latin1(value: str) -> str:
    # The PDF core fonts speak Latin-1; anything else is shown as '?', never an error.
    return value.encode("latin-1", "replace").decode("latin-1")


def render_invoice_pdf(invoice: Invoice, tenant_name: str) -> bytes:
    """The PDF of `invoice`: issuer, the tenant, number, period, lines and totals, and VOID with
    its reason for a voided one."""
    zone = ZoneInfo(invoice.timezone)
    start = invoice.period_start.astimezone(zone)
    end = invoice.period_end.astimezone(zone)
    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {invoice.number}")
    pdf.set_author(ISSUER)
    pdf.set_creator(settings.APP_NAME)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, f"Invoice {invoice.number}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    for text in (
        f"Issuer: {ISSUER}",
        f"Billed to: {_latin1(tenant_name)}",
        f"Period: {invoice.period} ({start:%Y-%m-%d %H:%M %z} to {end:%Y-%m-%d %H:%M %z},"
        f" {invoice.timezone})",
        f"Issued: {invoice.issued_at:%Y-%m-%d %H:%M} UTC",
        f"Currency: {invoice.currency}",
    ):
        pdf.cell(0, 6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if invoice.status == "void":
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 8, _latin1(f"VOID: {invoice.void_reason}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    widths = (100, 20, 32, 32)
    pdf.set_font("Helvetica", "B", 10)
    for width, heading in zip(widths, ("Description", "Qty", "Unit", "Amount"), strict=True):
        pdf.cell(width, 7, heading, border="B", align="L" if heading == "Description" else "R")
    pdf.ln()
    pdf.set_font("Helvetica", size=9)
    for line in invoice.lines:
        cells = (
            _latin1(line["description"]),
            str(line["quantity"]),
            _money(line["unit_amount_cents"]),
            _money(line["amount_cents"]),
        )
        for index, (width, text) in enumerate(zip(widths, cells, strict=True)):
            pdf.cell(width, 6, text[:70] if index == 0 else text, align="L" if index == 0 else "R")
        pdf.ln()
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    for label, cents in (("Subtotal", invoice.subtotal_cents), ("Total", invoice.total_cents)):
        pdf.cell(sum(widths[:3]), 7, label, align="R")
        pdf.cell(widths[3], 7, _money(cents), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())
