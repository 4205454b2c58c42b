"""The invoice document a customer downloads: HTML (Jinja2) and PDF (fpdf2), with the same
content: issuer, customer, number, dates, period, the lines, subtotal, tax (or the reverse-charge
note), credits, total and, for an invoice converted from another currency, the original amount
with the rate, its source and its date.

Amounts are written one way everywhere: ``1,234.56 TRY`` (the currency's minor unit, a comma
between thousands). The HTML template escapes every value (names and addresses come from
customers). The PDF embeds DejaVu Sans when its files are found (Debian's ``fonts-dejavu-core``
at ``/usr/share/fonts/truetype/dejavu``), so Turkish letters (ş, ğ, İ, ı) print as they are;
without it the PDF falls back to Helvetica, which has Latin-1 only, and the text is
transliterated to it (ş → s, İ → I, ı → i).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Protocol

import jinja2
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from hoodrun.billing.config import IssuerConfig
from hoodrun.billing.invoices import Invoice, InvoiceLine
from hoodrun.metering.money import Money, minor_units

__all__ = [
    "FONT_DIR",
    "BillingAccountLike",
    "DocumentView",
    "Row",
    "document_view",
    "format_money",
    "latin1",
    "render_html",
    "render_pdf",
]

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
_SHOWN_DECIMALS = 6
_STATUS_TITLES = {
    "draft": "Draft",
    "pending": "Draft (being issued)",
    "open": "Issued",
    "paid": "Paid",
    "void": "Void",
    "uncollectible": "Uncollectible",
}
# Letters without a Latin-1 decomposition; the rest lose their accents (ş → s).
_LATIN1_SPELLING = {"ı": "i", "₺": "TL", "€": "EUR", "∞": "inf", "—": "-", "–": "-", "…": "..."}


class BillingAccountLike(Protocol):
    """Who the invoice is addressed to (a ``billing_accounts`` row)."""

    @property
    def legal_name(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def city(self) -> str: ...
    @property
    def district(self) -> str: ...
    @property
    def tax_office(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Row:
    """A line of the table, formatted."""

    description: str
    quantity: str
    unit_price: str
    tax: str
    amount: str


@dataclass(frozen=True, slots=True)
class DocumentView:
    """What both documents show, already formatted: the template and the PDF only lay it out."""

    title: str
    number: str
    status: str
    issuer: tuple[str, ...]
    """The issuer's name, then its address, tax id and email lines."""
    customer: tuple[str, ...]
    """The customer's name, then its address, tax office and email lines."""
    details: tuple[tuple[str, str], ...]
    """Number, dates, period, currency: (label, value)."""
    rows: tuple[Row, ...]
    totals: tuple[tuple[str, str], ...]
    """Subtotal, tax, credits and total: (label, value); the total is last."""
    notes: tuple[str, ...]
    """The reverse-charge note and the conversion, when they apply."""


def format_money(money: Money) -> str:
    """``1,234.56 TRY``: the currency's minor unit, thousands separated."""
    places = minor_units(money.currency)
    return f"{money.amount:,.{places}f} {money.currency}"


def document_view(
    invoice: Invoice, *, issuer: IssuerConfig, account: BillingAccountLike | None, org_name: str
) -> DocumentView:
    """The invoice's content as both documents show it."""
    issuer_lines = (
        issuer.name,
        *_nonempty(issuer.address.splitlines()),
        *_nonempty([f"Tax ID: {issuer.tax_id}" if issuer.tax_id else ""]),
        *_nonempty([issuer.email]),
    )
    if account is not None:
        place = ", ".join(_nonempty([account.district, account.city]))
        customer: tuple[str, ...] = (
            account.legal_name,
            *_nonempty(account.address.splitlines()),
            *_nonempty([place]),
            *_nonempty([f"Tax office: {account.tax_office}" if account.tax_office else ""]),
            *_nonempty([account.email]),
        )
        if org_name and org_name != account.legal_name:
            customer = (*customer, f"Account: {org_name}")
    else:
        customer = (org_name,)
    details = (
        ("Invoice number", invoice.number),
        ("Issue date", _day(invoice.issue_date)),
        ("Due date", _day(invoice.due_date)),
        ("Period", invoice.period),
        ("Currency", invoice.currency),
    )
    rows = tuple(_row(line) for line in invoice.lines if line.kind not in ("tax", "credit"))
    totals: list[tuple[str, str]] = [("Subtotal", format_money(invoice.subtotal))]
    taxes = [line for line in invoice.lines if line.kind == "tax"]
    for line in taxes:
        totals.append((line.description, format_money(line.amount)))
    if not taxes:
        totals.append(("Tax", format_money(invoice.tax)))
    if invoice.credits.amount > 0:
        totals.append(("Credits applied", format_money(-invoice.credits)))
    totals.append(("Total due", format_money(invoice.total)))
    notes: list[str] = []
    if invoice.reverse_charge:
        notes.append(
            "Reverse charge: no tax is charged; the customer accounts for it where it is due."
        )
    if invoice.original_total is not None and invoice.fx_rate is not None:
        original = invoice.original_total
        notes.append(
            f"Converted from {format_money(original)} at 1 {original.currency} = "
            f"{_decimal(invoice.fx_rate, 4)} {invoice.currency} "
            f"({(invoice.fx_source or '').upper()} rate of {_day(invoice.fx_date)})."
        )
    return DocumentView(
        title="Invoice",
        number=invoice.number,
        status=_STATUS_TITLES.get(invoice.status, invoice.status),
        issuer=issuer_lines,
        customer=customer,
        details=details,
        rows=rows,
        totals=tuple(totals),
        notes=tuple(notes),
    )


# --- HTML ----------------------------------------------------------------------------------------


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hoodrun.billing", "templates"),
        autoescape=True,  # customer-provided names and addresses: always escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(
    invoice: Invoice, *, issuer: IssuerConfig, account: BillingAccountLike | None, org_name: str
) -> str:
    """The invoice as an HTML page (printable, no external resources)."""
    view = document_view(invoice, issuer=issuer, account=account, org_name=org_name)
    return _environment().get_template("invoice.html").render(doc=view)


# --- PDF -----------------------------------------------------------------------------------------


def render_pdf(
    invoice: Invoice,
    *,
    issuer: IssuerConfig,
    account: BillingAccountLike | None,
    org_name: str,
    font_dir: Path | None = FONT_DIR,
    compress: bool = True,
) -> bytes:
    """The invoice as an A4 PDF. ``font_dir`` holds DejaVu Sans (``None`` or missing: Helvetica
    with transliterated text); ``compress=False`` leaves the page streams readable."""
    view = document_view(invoice, issuer=issuer, account=account, org_name=org_name)
    pdf = _Pdf(font_dir)
    pdf.set_compression(compress)
    pdf.set_title(f"{view.title} {view.number}")
    pdf.set_author(pdf.printable(view.issuer[0]))
    pdf.set_creator("HoodRun")
    pdf.set_margins(18, 16, 18)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    _header(pdf, view)
    _parties(pdf, view)
    _table(pdf, view.rows)
    _totals(pdf, view.totals)
    _notes(pdf, view.notes)
    return bytes(pdf.output())


class _Pdf(FPDF):
    """An FPDF whose text goes through ``printable``: as is with DejaVu, transliterated
    without."""

    def __init__(self, font_dir: Path | None) -> None:
        super().__init__(format="A4")
        files = {style: font_dir / name for style, name in _FONT_FILES.items()} if font_dir else {}
        self.embedded = bool(files) and all(path.is_file() for path in files.values())
        if self.embedded:
            for style, path in files.items():
                self.add_font("DejaVu", style, str(path))
        self.face = "DejaVu" if self.embedded else "Helvetica"

    def printable(self, value: str) -> str:
        return value if self.embedded else latin1(value)

    def use(self, size: float, bold: bool = False) -> None:
        self.set_font(self.face, "B" if bold else "", size)

    def footer(self) -> None:
        self.set_y(-12)
        self.use(7.5)
        self.set_text_color(120)
        self.cell(0, 5, f"{self.page_no()}/{{nb}}", align="R")


def _header(pdf: _Pdf, view: DocumentView) -> None:
    width = pdf.epw / 2
    top = pdf.get_y()
    pdf.use(15, bold=True)
    _stack(pdf, width, 7, view.issuer[0])
    pdf.use(8.5)
    pdf.set_text_color(90)
    for line in view.issuer[1:]:
        _stack(pdf, width, 4.5, line)
    pdf.set_text_color(0)
    left_bottom = pdf.get_y()
    pdf.set_xy(pdf.l_margin + width, top)
    pdf.use(18, bold=True)
    pdf.cell(
        width, 9, pdf.printable(view.title.upper()), align="R", new_x=XPos.LEFT, new_y=YPos.NEXT
    )
    pdf.use(10)
    pdf.cell(width, 6, pdf.printable(view.number), align="R", new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.use(8.5)
    pdf.set_text_color(90)
    pdf.cell(width, 5, pdf.printable(view.status), align="R")
    pdf.set_text_color(0)
    pdf.set_xy(pdf.l_margin, max(left_bottom, pdf.get_y() + 5) + 6)


def _parties(pdf: _Pdf, view: DocumentView) -> None:
    width = pdf.epw / 2
    top = pdf.get_y()
    pdf.use(8, bold=True)
    pdf.set_text_color(90)
    pdf.cell(width, 5, "BILL TO", new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.set_text_color(0)
    pdf.use(10, bold=True)
    _stack(pdf, width - 6, 5, view.customer[0])
    pdf.use(9)
    for line in view.customer[1:]:
        _stack(pdf, width - 6, 4.6, line)
    left_bottom = pdf.get_y()
    pdf.set_xy(pdf.l_margin + width, top)
    for label, value in view.details:
        pdf.set_x(pdf.l_margin + width)
        pdf.use(8.5)
        pdf.set_text_color(90)
        pdf.cell(width / 2, 5, pdf.printable(label))
        pdf.set_text_color(0)
        pdf.use(9, bold=True)
        pdf.cell(width / 2, 5, pdf.printable(value), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_xy(pdf.l_margin, max(left_bottom, pdf.get_y()) + 8)


def _stack(pdf: _Pdf, width: float, height: float, text: str) -> None:
    """A paragraph at the left margin; the next one goes below it."""
    pdf.multi_cell(
        width, height, pdf.printable(text), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )


def _table(pdf: _Pdf, rows: Sequence[Row]) -> None:
    pdf.use(8.5)
    heading = FontFace(emphasis="BOLD", fill_color=(238, 240, 243))
    with pdf.table(
        col_widths=(76, 26, 34, 14, 32),
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT"),
        headings_style=heading,
        borders_layout="HORIZONTAL_LINES",
        line_height=5,
        padding=(1.6, 1.5),
    ) as table:
        header = table.row()
        for title in ("Description", "Quantity", "Unit price", "Tax", "Amount"):
            header.cell(title)
        for item in rows:
            row = table.row()
            for text in (item.description, item.quantity, item.unit_price, item.tax, item.amount):
                row.cell(pdf.printable(text))
    pdf.ln(4)


def _totals(pdf: _Pdf, totals: Sequence[tuple[str, str]]) -> None:
    label_width, value_width = 62.0, 38.0
    start = pdf.l_margin + pdf.epw - label_width - value_width
    for index, (label, value) in enumerate(totals):
        last = index == len(totals) - 1
        if last:
            pdf.set_draw_color(60)
            y = pdf.get_y() + 1
            pdf.line(start, y, pdf.l_margin + pdf.epw, y)
            pdf.ln(2.5)
        pdf.set_x(start)
        pdf.use(10.5 if last else 9, bold=last)
        pdf.cell(label_width, 6, pdf.printable(label), align="R")
        pdf.cell(
            value_width, 6, pdf.printable(value), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.ln(6)


def _notes(pdf: _Pdf, notes: Sequence[str]) -> None:
    pdf.use(8.5)
    pdf.set_text_color(70)
    for note in notes:
        _stack(pdf, 0, 4.6, note)
        pdf.ln(1.5)
    pdf.set_text_color(0)


# --- formatting ----------------------------------------------------------------------------------


def latin1(text: str) -> str:
    """``text`` in Latin-1 for the core PDF fonts: accents dropped where Latin-1 has no letter
    (``Paraşüt İğdır`` → ``Parasüt Igdir``); what cannot be spelled becomes ``?``."""
    out: list[str] = []
    for char in text:
        if char in _LATIN1_SPELLING:
            out.append(_LATIN1_SPELLING[char])
            continue
        try:
            char.encode("latin-1")
        except UnicodeEncodeError:
            base = "".join(
                c
                for c in unicodedata.normalize("NFKD", char)
                if not unicodedata.combining(c) and ord(c) < 256
            )
            out.append(base or "?")
        else:
            out.append(char)
    return "".join(out)


def _row(line: InvoiceLine) -> Row:
    price = -line.unit_price.amount if line.deduction else line.unit_price.amount
    unit = _decimal(price, minor_units(line.amount.currency))
    if line.per != 1:
        unit = f"{unit} / {_quantity(line.per)}"
    tax = f"{_quantity(line.tax_rate * 100)}%" if line.tax_rate else "–"
    return Row(
        description=line.description,
        quantity=_quantity(line.quantity),
        unit_price=unit,
        tax=tax,
        amount=format_money(line.signed),
    )


def _decimal(value: Decimal, at_least: int) -> str:
    """``value`` with thousands separated, at least ``at_least`` and at most 6 decimals."""
    with localcontext() as ctx:
        ctx.prec = 60
        shown = value.quantize(Decimal(1).scaleb(-_SHOWN_DECIMALS))
        text = f"{shown:,f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(at_least, "0")
    return f"{whole}.{fraction}" if fraction else whole


def _quantity(value: Decimal) -> str:
    return _decimal(value, 0)


def _day(value: date | None) -> str:
    return "" if value is None else value.isoformat()


def _nonempty(values: Sequence[str]) -> list[str]:
    return [value.strip() for value in values if value and value.strip()]
