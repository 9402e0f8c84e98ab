"""Billing over HTTP: the usage report, the invoices, their PDF, voiding, and the CLI close."""

from __future__ import annotations

import io
import os
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app import cli
from app.services import billing
from tests.helpers import (
    TenantFixture,
    create_tenant,
    end_call_at,
    insert_call,
    twilio_call_sid,
    twilio_post,
)

APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)
NY_MARCH = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)  # 00:00 EST on 1 March


def _billed_tenant(
    client: TestClient,
    admin_headers: dict[str, str],
    owner_engine: Engine,
    *,
    plan: str = "starter",
    timezone: str = "UTC",
) -> TenantFixture:
    """A tenant with keys, in `timezone`, holding `plan` since 2025 (history backdated)."""
    tenant = create_tenant(plan=plan, name="Acme Dental")
    if timezone != "UTC":
        response = client.patch(tenant.url(), json={"timezone": timezone}, headers=admin_headers)
        assert response.status_code == 200, response.text
    with owner_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.system', 'on', true)"))
        conn.execute(
            text("UPDATE plan_changes SET changed_at = '2025-01-01Z' WHERE tenant_id = :t"),
            {"t": tenant.id},
        )
    return tenant


def _get(client: TestClient, tenant: TenantFixture, path: str, **params: Any) -> Any:
    response = client.get(tenant.url(path), params=params, headers=tenant.read_headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_status_callbacks_over_http_meter_into_the_local_month_and_usage_shows_it(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = _billed_tenant(
        client, admin_headers, owner_engine, plan="starter", timezone="America/New_York"
    )
    for ended_at, seconds in ((NY_MARCH - timedelta(minutes=1), 300), (NY_MARCH, 61)):
        sid = twilio_call_sid()
        insert_call(
            tenant.id,
            status="in_progress",
            provider_call_sid=sid,
            started_at=ended_at - timedelta(seconds=seconds),
        )
        params = {
            "CallSid": sid,
            "CallStatus": "completed",
            "CallDuration": str(seconds),
            "Timestamp": format_datetime(ended_at, usegmt=True),
            "AccountSid": os.environ["TWILIO_ACCOUNT_SID"],
        }
        assert twilio_post(client, "/telephony/twilio/status", params).status_code == 200

    march = _get(client, tenant, "/billing/usage", period="2026-03")
    assert march["period_start"] == "2026-03-01T00:00:00-05:00"
    assert march["period_end"] == "2026-04-01T00:00:00-04:00"  # DST began on 8 March
    assert march["timezone"] == "America/New_York"
    assert (march["used_minutes"], march["calls"], march["included_minutes"]) == (2, 1, 1000)
    assert march["plans"] == [
        {"plan": "starter", "seconds": 2674800, "base_fee_cents": 4900, "included_minutes": 1000}
    ]
    assert march["lines"] == [
        {
            "kind": "base_fee",
            "description": "Starter plan, 2026-03",
            "plan": "starter",
            "quantity": 1,
            "unit_amount_cents": 4900,
            "amount_cents": 4900,
        }
    ]
    assert march["total_cents"] == 4900
    assert _get(client, tenant, "/billing/usage", period="2026-02")["used_minutes"] == 5

    current = _get(client, tenant, "/billing/usage")
    assert current["period"] == datetime.now(ZoneInfo("America/New_York")).strftime("%Y-%m")
    bad = client.get(
        tenant.url("/billing/usage"), params={"period": "2026-13"}, headers=tenant.headers
    )
    assert bad.status_code == 422


def test_invoices_list_get_filter_and_page(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = _billed_tenant(client, admin_headers, owner_engine)
    for period in ("2026-01", "2026-02", "2026-03"):
        billing.close_period(tenant.id, period, APRIL_2)
    page = _get(client, tenant, "/billing/invoices", limit=2)
    assert [i["period"] for i in page["items"]] == ["2026-03", "2026-02"]
    rest = _get(client, tenant, "/billing/invoices", limit=2, cursor=page["next_cursor"])
    assert [i["period"] for i in rest["items"]] == ["2026-01"] and rest["next_cursor"] is None
    feb = _get(client, tenant, "/billing/invoices", period="2026-02")["items"]
    assert len(feb) == 1 and feb[0]["status"] == "issued"
    assert feb[0]["number"].startswith("VCA-2026-")
    assert feb[0]["total_cents"] == sum(line["amount_cents"] for line in feb[0]["lines"]) == 4900
    assert _get(client, tenant, f"/billing/invoices/{feb[0]['id']}") == feb[0]
    assert _get(client, tenant, "/billing/invoices", status="void")["items"] == []
    missing = client.get(tenant.url(f"/billing/invoices/{uuid.uuid4()}"), headers=tenant.headers)
    assert missing.status_code == 404


def test_the_pdf_reads_back_with_issuer_tenant_number_period_lines_and_totals(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = _billed_tenant(client, admin_headers, owner_engine, plan="starter")
    end_call_at(tenant.id, datetime(2026, 3, 10, tzinfo=UTC), seconds=1010 * 60)
    invoice = billing.close_period(tenant.id, "2026-03", APRIL_2)
    assert invoice is not None
    response = client.get(
        tenant.url(f"/billing/invoices/{invoice.id}/pdf"), headers=tenant.read_headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    content = "\n".join(
        page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages
    )
    for expected in (
        f"Invoice {invoice.number}",
        "VCA Voice AI Platform",
        "Acme Dental",
        "2026-03",
        "Starter plan, 2026-03",
        "$49.00",
        "Overage",
        "$0.50",  # 10 minutes at 5 c
        "$49.50",
    ):
        assert expected in content, (expected, content)


def test_voiding_is_for_the_platform_admin_with_a_reason(
    client: TestClient, admin_headers: dict[str, str], owner_engine: Engine
) -> None:
    tenant = _billed_tenant(client, admin_headers, owner_engine)
    invoice = billing.close_period(tenant.id, "2026-03", APRIL_2)
    assert invoice is not None
    url = tenant.url(f"/billing/invoices/{invoice.id}/void")
    for headers in (tenant.headers, tenant.read_headers):
        refused = client.post(url, json={"reason": "no"}, headers=headers)
        assert refused.status_code == 403, refused.text
    assert client.post(url, json={}, headers=admin_headers).status_code == 422
    voided = client.post(url, json={"reason": "Duplicate"}, headers=admin_headers)
    assert voided.status_code == 200, voided.text
    body = voided.json()
    assert (body["status"], body["void_reason"], body["number"]) == (
        "void",
        "Duplicate",
        invoice.number,
    )
    assert body["voided_at"] is not None and body["lines"] == invoice.lines
    again = client.post(url, json={"reason": "Again"}, headers=admin_headers)
    assert again.status_code == 409 and again.json()["code"] == "invoice_void"
    listed = _get(client, tenant, "/billing/invoices", status="void")["items"]
    assert [i["id"] for i in listed] == [str(invoice.id)]
    pdf = client.get(tenant.url(f"/billing/invoices/{invoice.id}/pdf"), headers=tenant.headers)
    assert "VOID: Duplicate" in PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()


def test_the_cli_closes_a_period_once(
    client: TestClient,
    admin_headers: dict[str, str],
    owner_engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = _billed_tenant(client, admin_headers, owner_engine)
    assert cli.main(["close-period", "2026-03", "--tenant", tenant.slug]) == 0
    first = capsys.readouterr().out
    assert cli.main(["close-period", "2026-03", "--tenant", tenant.slug]) == 0
    assert capsys.readouterr().out == first  # the same invoice, not a second one
    assert "VCA-2026-" in first and "4900 cents" in first
    assert len(_get(client, tenant, "/billing/invoices")["items"]) == 1
    future = (datetime.now(UTC) + timedelta(days=40)).strftime("%Y-%m")
    assert cli.main(["close-period", future, "--tenant", tenant.slug]) == 2
    assert cli.main(["close-period", "2026-3", "--tenant", tenant.slug]) == 2
    assert cli.main(["close-period", "2026-03", "--tenant", "no-such-tenant"]) == 2


def test_the_operator_reissues_a_voided_invoice_with_a_new_number(
    client: TestClient,
    admin_headers: dict[str, str],
    owner_engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = _billed_tenant(client, admin_headers, owner_engine)
    first = billing.close_period(tenant.id, "2026-03", APRIL_2)
    assert first is not None
    voided = client.post(
        tenant.url(f"/billing/invoices/{first.id}/void"),
        json={"reason": "Wrong company name"},
        headers=admin_headers,
    )
    assert voided.status_code == 200, voided.text
    # The worker and a plain close leave a voided period alone: the void may be a waiver.
    assert billing.close_period(tenant.id, "2026-03", APRIL_2).id == first.id  # type: ignore[union-attr]
    assert cli.main(["close-period", "2026-03", "--reissue"]) == 2  # one tenant only
    capsys.readouterr()
    assert cli.main(["close-period", "2026-03", "--tenant", tenant.slug, "--reissue"]) == 0
    assert cli.main(["close-period", "2026-03", "--tenant", tenant.slug, "--reissue"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == out[1] and " issued " in out[0]  # reissued once, then the same invoice
    invoices = {i["number"]: i for i in _get(client, tenant, "/billing/invoices")["items"]}
    assert len(invoices) == 2
    reissued = next(i for i in invoices.values() if i["status"] == "issued")
    assert invoices[first.number]["status"] == "void"  # it keeps its number and its lines
    assert reissued["number"] > first.number and reissued["number"] in out[0]
    assert reissued["lines"] == invoices[first.number]["lines"]
    assert reissued["total_cents"] == first.total_cents
