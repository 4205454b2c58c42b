"""The invoice document (HTML and PDF) and the admin API that serves it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from hoodrun.api.app import create_api_app
from hoodrun.billing.config import IssuerConfig
from hoodrun.billing.documents import FONT_DIR, format_money, latin1, render_html, render_pdf
from hoodrun.billing.invoices import Invoice, InvoiceBook, InvoiceLine
from hoodrun.keys.service import KeyService
from hoodrun.metering.money import Money
from hoodrun.store import Store
from hoodrun.store.tables import billing_accounts
from tests._stores import FakeClock
from tests.billing.test_invoices import CONFIG, NOW, TCMB, make_org, make_snapshot

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ISSUER = IssuerConfig(
    name="HoodRun Bilişim A.Ş.",
    address="Kordon Cad. 1\nİzmir",
    tax_id="1234567890",
    email="billing@hoodrun.example",
)
D = Decimal
dejavu = pytest.mark.skipif(
    not (FONT_DIR / "DejaVuSans.ttf").is_file(), reason="DejaVu fonts are not installed"
)


@dataclass(frozen=True)
class Account:
    legal_name: str = "Paraşüt Iğdır Yazılım Ltd. Şti."
    email: str = "muhasebe@example.com.tr"
    address: str = "Atatürk Bulvarı 12"
    city: str = "İstanbul"
    district: str = "Kadıköy"
    tax_office: str = "Kadıköy"


def tl(amount: str) -> Money:
    return Money(D(amount), "TRY")


def converted_invoice(**changes: Any) -> Invoice:
    """An open TL invoice converted from USD, with a discount, KDV and credits."""
    lines = (
        InvoiceLine("fee", "plan fee (pro)", D(1), tl("1676.56"), tl("1676.56"), D("0.2")),
        InvoiceLine(
            "usage", "requests", D(2500000), tl("15.39702"), tl("38.49"), D("0.2"), D(1000000)
        ),
        InvoiceLine("discount", "discount 10%", D("0.1"), tl("1715.05"), tl("171.51"), D("0.2")),
        InvoiceLine("tax", "KDV 20%", D("0.2"), tl("1543.54"), tl("308.71"), D("0.2")),
        InvoiceLine("credit", "credit applied", D(1), tl("100.00"), tl("100.00")),
    )
    invoice = Invoice(
        id="inv_1",
        number="HR-2026-000042",
        org_id="org_1",
        snapshot_id="snap_1",
        period="2026-11",
        status="open",
        currency="TRY",
        lines=lines,
        subtotal=tl("1543.54"),
        tax=tl("308.71"),
        credits=tl("100.00"),
        total=tl("1752.25"),
        issue_date=date(2026, 12, 1),
        due_date=date(2026, 12, 15),
        provider="parasut",
        created_at=NOW,
        updated_at=NOW,
        credits_applied=True,
        original_currency="USD",
        original_total=Money(D("54.13"), "USD"),
        fx_rate=D("34.2156"),
        fx_source="tcmb",
        fx_date=date(2026, 11, 30),
    )
    return replace(invoice, **changes)


# --- reading a PDF's text (no PDF library needed) ------------------------------------------------


def _literal(data: bytes, start: int) -> tuple[bytes, int]:
    """The PDF literal string opening at ``data[start]`` and the index after it."""
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}
    out = bytearray()
    depth, i = 1, start + 1
    while True:
        char = data[i]
        if char == 0x5C:  # a backslash escape
            following = data[i + 1]
            octal = re.match(rb"[0-7]{1,3}", data[i + 1 : i + 4])
            if following in escapes:
                out += escapes[following]
                i += 2
            elif octal:
                out.append(int(octal.group(), 8) & 0xFF)
                i += 1 + len(octal.group())
            else:
                out.append(following)
                i += 2
            continue
        depth += {0x28: 1, 0x29: -1}.get(char, 0)
        if depth == 0:
            return bytes(out), i + 1
        out.append(char)
        i += 1


def pdf_text(pdf: bytes) -> str:
    """The text shown by an uncompressed PDF: each embedded font's glyph codes mapped back
    through its ToUnicode table; core fonts' strings read as Latin-1."""
    objects = {int(n): body for n, body in re.findall(rb"(\d+) 0 obj(.*?)endobj", pdf, re.S)}
    cmaps: dict[int, dict[int, str]] = {}
    for number, body in objects.items():
        ref = re.search(rb"/ToUnicode (\d+) 0 R", body)
        if ref:
            pairs = re.findall(rb"<([0-9A-F]{4})> <([0-9A-F]{4})>", objects[int(ref.group(1))])
            cmaps[number] = {int(code, 16): chr(int(char, 16)) for code, char in pairs}
    fonts = {
        name: int(number)
        for table in re.findall(rb"/Font\s*<<(.*?)>>", pdf, re.S)
        for name, number in re.findall(rb"/(\w+) (\d+) 0 R", table)
    }
    text: list[str] = []
    font: int | None = None  # a font set in one text object stays for the next ones
    for block in re.findall(rb"BT(.*?)ET", pdf, re.S):
        i = 0
        while i < len(block):
            chosen = re.match(rb"/(\w+) [\d.]+ Tf", block[i:])
            if chosen:
                font = fonts.get(chosen.group(1))
                i += chosen.end()
            elif block[i] == 0x28:
                raw, i = _literal(block, i)
                cmap = cmaps.get(font) if font is not None else None
                if cmap is None:
                    text.append(raw.decode("latin-1"))
                else:
                    codes = (int.from_bytes(raw[k : k + 2], "big") for k in range(0, len(raw), 2))
                    text.append("".join(cmap.get(code, "\ufffd") for code in codes))
            else:
                i += 1
        text.append("\n")
    return "".join(text)


# --- documents -----------------------------------------------------------------------------------


def test_amounts_are_written_one_way() -> None:
    assert format_money(tl("1234.5")) == "1,234.50 TRY"
    assert format_money(Money(D("-1000"), "JPY")) == "-1,000 JPY"
    assert latin1("Paraşüt İğdır ılık — ₺") == "Parasüt Igdir ilik - TL"


def test_the_html_document_shows_the_invoice_and_escapes_customer_names() -> None:
    account = Account(legal_name="<script>alert('x')</script> Ltd", address="a & b")
    page = render_html(
        converted_invoice(), issuer=ISSUER, account=account, org_name='"><img src=x>'
    )
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Ltd" in page
    assert "a &amp; b" in page and "&#34;&gt;&lt;img src=x&gt;" in page
    for shown in ("HR-2026-000042", "1,752.25 TRY", "HoodRun Bilişim A.Ş.", "KDV 20%", "2026-11"):
        assert shown in page
    assert "-100.00 TRY" in page  # credits
    assert "-171.51 TRY" in page  # the discount, a deduction
    assert "Converted from 54.13 USD at 1 USD = 34.2156 TRY (TCMB rate of 2026-11-30)" in page
    assert "15.39702 / 1,000,000" in page  # a unit price per million requests


def test_a_reverse_charge_invoice_says_so_instead_of_charging_tax() -> None:
    usd = "USD"
    fee = Money(D("49.00"), usd)
    note = "VAT: reverse charge (customer tax id DE123)"
    invoice = converted_invoice(
        currency=usd,
        lines=(
            InvoiceLine("fee", "plan fee", D(1), fee, fee),
            InvoiceLine("tax", note, D(0), fee, Money.zero(usd)),
        ),
        subtotal=fee,
        tax=Money.zero(usd),
        credits=Money.zero(usd),
        total=fee,
        reverse_charge=True,
        original_currency=None,
        original_total=None,
        fx_rate=None,
        fx_source=None,
        fx_date=None,
    )
    page = render_html(invoice, issuer=ISSUER, account=None, org_name="acme")
    assert "Reverse charge: no tax is charged" in page and note in page
    assert "Converted from" not in page and "Credits applied" not in page
    text = pdf_text(
        render_pdf(invoice, issuer=ISSUER, account=None, org_name="acme", compress=False)
    )
    assert "Reverse charge" in text and "49.00 USD" in text


@dejavu
def test_the_pdf_prints_the_invoice_with_turkish_letters() -> None:
    pdf = render_pdf(
        converted_invoice(), issuer=ISSUER, account=Account(), org_name="acme", compress=False
    )
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    text = pdf_text(pdf)
    for shown in (
        "HR-2026-000042",
        "1,752.25 TRY",
        "Paraşüt Iğdır Yazılım Ltd. Şti.",
        "İstanbul",
        "HoodRun Bilişim A.Ş.",
        "2026-12-15",
        "-100.00 TRY",
        "Converted from 54.13 USD at 1 USD = 34.2156 TRY (TCMB rate of 2026-11-30).",
    ):
        assert shown in text, shown
    compressed = render_pdf(converted_invoice(), issuer=ISSUER, account=Account(), org_name="acme")
    assert compressed.startswith(b"%PDF-") and len(compressed) < len(pdf)


def test_without_the_fonts_the_pdf_is_transliterated() -> None:
    pdf = render_pdf(
        converted_invoice(),
        issuer=ISSUER,
        account=Account(),
        org_name="acme",
        font_dir=None,
        compress=False,
    )
    text = pdf_text(pdf)
    assert "Parasüt Igdir Yazilim Ltd. Sti." in text and "Istanbul" in text
    assert "HR-2026-000042" in text and "1,752.25 TRY" in text


# --- the admin API -------------------------------------------------------------------------------


@pytest.fixture
async def api(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, InvoiceBook]]:
    book = InvoiceBook(store, CONFIG, clock=FakeClock(NOW))
    app = create_api_app(CONFIG, KeyService(store, CONFIG), token=TOKEN, billing=(book, None))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http, book


async def add_account(store: Store, org_id: str, legal_name: str) -> None:
    async with store.transaction() as conn:
        await conn.execute(
            insert(billing_accounts).values(
                org_id=org_id,
                legal_name=legal_name,
                email="a@example.com",
                address="Street 1",
                city="İzmir",
                district="Konak",
                tax_office="Konak",
                updated_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
        )


async def test_invoices_through_the_admin_api(store: Store, api: Any) -> None:
    http, book = api
    org = await make_org(store, "acme")
    await add_account(store, org, "<b>Acme</b> Şirketi")
    snap = await make_snapshot(store, org)
    invoice = await book.create_from_snapshot(snap, provider="parasut", currency="TRY", fx=TCMB)
    other = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store, "other")), provider="stripe"
    )
    await book.mark_void(other.id)

    listed = await http.get("/admin/v1/invoices", params={"org": org}, headers=AUTH)
    assert listed.status_code == 200, listed.text
    assert [i["number"] for i in listed.json()["invoices"]] == [invoice.number]
    voided = (await http.get("/admin/v1/invoices?status=void", headers=AUTH)).json()
    assert [i["id"] for i in voided["invoices"]] == [other.id]
    by_period = await http.get("/admin/v1/invoices?period=2026-11", headers=AUTH)
    assert len(by_period.json()["invoices"]) == 2
    assert (await http.get("/admin/v1/invoices?status=lost", headers=AUTH)).status_code == 422

    detail = (await http.get(f"/admin/v1/invoices/{invoice.id}", headers=AUTH)).json()
    assert detail["total"] == {"amount": str(invoice.total.amount), "currency": "TRY"}
    assert detail["conversion"]["original"] == {"amount": "54.13", "currency": "USD"}
    assert detail["conversion"]["rate"] == "34.2156" and detail["conversion"]["source"] == "tcmb"
    assert [line["kind"] for line in detail["lines"]] == ["fee", "usage", "discount", "tax"]
    assert all(isinstance(line["amount"]["amount"], str) for line in detail["lines"])

    page = await http.get(f"/admin/v1/invoices/{invoice.id}/document.html", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;Acme&lt;/b&gt; Şirketi" in page.text and invoice.number in page.text

    pdf = await http.get(f"/admin/v1/invoices/{invoice.id}/document.pdf", headers=AUTH)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="{invoice.number}.pdf"'
    assert pdf.content.startswith(b"%PDF-")


async def test_the_api_says_which_invoice_is_missing_and_wants_the_token(api: Any) -> None:
    http, _ = api
    for path in ("inv_nope", "inv_nope/document.html", "inv_nope/document.pdf"):
        missing = await http.get(f"/admin/v1/invoices/{path}", headers=AUTH)
        assert missing.status_code == 404
        assert missing.json()["error"] == {
            "code": "invoice_not_found",
            "message": "no invoice 'inv_nope'",
        }
    assert (await http.get("/admin/v1/invoices")).status_code == 401
