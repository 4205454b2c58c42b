"""Invoices made from closing snapshots, on SQLite and PostgreSQL: totals, conversion, numbering,
credits spent once, the state machine with its audit rows and ledger entries, credit notes and
refunds, and the provider's view."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.invoices import (
    AdjustmentRefused,
    CurrencyError,
    InvalidTransition,
    Invoice,
    InvoiceBook,
    InvoiceNotFound,
    SnapshotInvalid,
    SnapshotNotFound,
)
from hoodrun.config import Config
from hoodrun.metering.money import Money
from hoodrun.metering.store import CreditBook
from hoodrun.store import Store, new_id, read_audit
from hoodrun.store.tables import audit_log, closing_snapshots, credit_ledger, orgs
from tests._stores import FakeClock

CONFIG = Config.model_validate({})
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
D = Decimal

# What rating writes for a period: fee, usage per 1M requests, a 10% discount, KDV 20%.
USD_LINES = [
    {"kind": "fee", "description": "plan fee (pro)", "quantity": "1", "unit_price": "49", "amount": "49.00", "per": "1"},
    {"kind": "usage", "description": "requests tier 1 (0 to ∞)", "quantity": "2500000", "unit_price": "0.45", "amount": "1.12", "per": "1000000"},
    {"kind": "discount", "description": "discount 10%", "quantity": "0.1", "unit_price": "50.12", "amount": "5.01", "per": "1"},
    {"kind": "tax", "description": "KDV 20%", "quantity": "0.2", "unit_price": "45.11", "amount": "9.02", "per": "1", "tax_name": "KDV", "reverse_charge": False},
]  # fmt: skip
# Lines whose tax, converted to TL, differs per line (348.99) and on the subtotal (349.00).
CONVERTED_LINES = [
    {"kind": "fee", "description": "plan fee (pro)", "quantity": "1", "unit_price": "49", "amount": "49.00", "per": "1"},
    {"kind": "usage", "description": "requests", "quantity": "2000000", "unit_price": "0.5", "amount": "1.00", "per": "1000000"},
    {"kind": "flat", "description": "requests: flat price", "quantity": "1", "unit_price": "1", "amount": "1.00", "per": "1"},
    {"kind": "tax", "description": "KDV 20%", "quantity": "0.2", "unit_price": "51.00", "amount": "10.20", "per": "1"},
]  # fmt: skip


class Killed(Exception):
    """A worker dying mid-step."""


@dataclass(frozen=True)
class Quote:
    base: str
    quote: str
    rate: Decimal
    source: str
    day: date


TCMB = Quote("USD", "TRY", D("34.2156"), "tcmb", date(2026, 11, 30))


@dataclass
class FakeLedger:
    """Records what it is told; ``fail`` makes it raise inside the caller's transaction."""

    entries: list[tuple[str, str, str, Money]] = field(default_factory=list)
    fail: bool = False

    async def append(
        self,
        kind: str,
        org_id: str,
        reference: str,
        amount: Money,
        details: dict[str, Any],
        /,
        *,
        conn: AsyncConnection,
    ) -> None:
        assert conn.in_transaction()
        if self.fail:
            raise RuntimeError("ledger down")
        self.entries.append((kind, org_id, reference, amount))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
def book(store: Store, clock: FakeClock, ledger: FakeLedger) -> InvoiceBook:
    return InvoiceBook(store, CONFIG, clock=clock, ledger=ledger)


async def make_org(store: Store, name: str | None = None) -> str:
    org_id = new_id("org")
    async with store.transaction() as conn:
        await conn.execute(
            insert(orgs).values(id=org_id, name=name or org_id, plan=None, created_at=NOW)
        )
    return org_id


async def make_snapshot(
    store: Store,
    org_id: str,
    lines: Sequence[dict[str, Any]] = USD_LINES,
    *,
    period: str = "2026-11",
    currency: str = "USD",
    **sums: Decimal,
) -> str:
    """A closing snapshot whose sums are those of its lines (unless given)."""
    signed = [D(x["amount"]) * (-1 if x["kind"] in ("discount", "credit") else 1) for x in lines]
    kinds = [x["kind"] for x in lines]
    subtotal = sum(
        (a for a, k in zip(signed, kinds, strict=True) if k not in ("tax", "credit")), D(0)
    )
    tax = sum((a for a, k in zip(signed, kinds, strict=True) if k == "tax"), D(0))
    credits = -sum((a for a, k in zip(signed, kinds, strict=True) if k == "credit"), D(0))
    values = {
        "subtotal": subtotal,
        "tax": tax,
        "credits": credits,
        "total": subtotal + tax - credits,
    }
    values |= sums
    snapshot_id = new_id("snap")
    start = datetime.fromisoformat(f"{period}-01T00:00:00+00:00")
    async with store.transaction() as conn:
        await conn.execute(
            insert(closing_snapshots).values(
                id=snapshot_id,
                org_id=org_id,
                period=period,
                period_start=start,
                period_end=start + timedelta(days=30),
                contract_id="ctr_1",
                plan="pro",
                currency=currency,
                usage={},
                late_usage={},
                lines=list(lines),
                content_hash="0" * 64,
                closed_at=NOW,
                **values,
            )
        )
    return snapshot_id


async def actions(store: Store, invoice_id: str) -> list[str]:
    async with store.connect() as conn:
        return [e.action for e in reversed(await read_audit(conn, target_id=invoice_id))]


def usd(amount: str) -> Money:
    return Money(D(amount), "USD")


def try_(amount: str) -> Money:
    return Money(D(amount), "TRY")


# --- making --------------------------------------------------------------------------------------


async def test_an_invoice_from_a_snapshot_has_its_lines_taxes_and_totals(
    store: Store, book: InvoiceBook
) -> None:
    org = await make_org(store)
    snap = await make_snapshot(store, org)
    invoice = await book.create_from_snapshot(snap, provider="stripe")
    assert invoice.number == "HR-2026-000001"
    assert invoice.status == "draft" and invoice.provider == "stripe"
    assert (invoice.org_id, invoice.period, invoice.snapshot_id) == (org, "2026-11", snap)
    assert (invoice.issue_date, invoice.due_date) == (date(2026, 12, 1), date(2026, 12, 15))
    assert invoice.subtotal == usd("45.11") and invoice.tax == usd("9.02")
    assert invoice.credits == usd("0") and invoice.total == usd("54.13")
    assert [line.kind for line in invoice.lines] == ["fee", "usage", "discount", "tax"]
    usage = invoice.lines[1]
    assert usage.unit_price == usd("0.45") and usage.per == D(1000000)
    assert {line.tax_rate for line in invoice.lines[:3]} == {D("0.2")}
    assert invoice.lines[2].signed == usd("-5.01")
    assert not invoice.converted and invoice.original_total is None
    assert await actions(store, invoice.id) == ["invoice.create"]
    assert await book.get(invoice.id) == invoice
    assert await book.by_number("HR-2026-000001") == invoice
    assert await book.for_snapshot(snap) == invoice


async def test_a_converted_invoice_rounds_each_line_and_taxes_each_line(
    store: Store, book: InvoiceBook
) -> None:
    org = await make_org(store)
    snap = await make_snapshot(store, org, CONVERTED_LINES)
    invoice = await book.create_from_snapshot(snap, provider="parasut", currency="TRY", fx=TCMB)
    charges = [line for line in invoice.lines if line.kind != "tax"]
    # 49.00, 1.00, 1.00 USD at 34.2156, each rounded on its own.
    assert [line.amount for line in charges] == [try_("1676.56"), try_("34.22"), try_("34.22")]
    assert charges[1].unit_price == try_("17.1078")  # 0.5 USD per 1M, converted exactly
    assert invoice.subtotal == try_("1745.00")
    # Per line: 335.31 + 6.84 + 6.84; on the subtotal it would have been 349.00.
    assert invoice.tax == try_("348.99")
    (tax_line,) = [line for line in invoice.lines if line.kind == "tax"]
    assert tax_line.amount == invoice.tax and tax_line.description == "KDV 20%"
    assert invoice.total == try_("2093.99")
    assert invoice.total.amount == sum(line.signed.amount for line in invoice.lines)
    assert invoice.original_currency == "USD" and invoice.original_total == usd("61.20")
    assert (invoice.fx_rate, invoice.fx_source, invoice.fx_date) == (
        D("34.2156"),
        "tcmb",
        date(2026, 11, 30),
    )
    # What a provider computing VAT per line from the draft gets is the invoice's total.
    draft = book.draft(invoice, tax_name="KDV", reverse_charge=False)
    recomputed = sum(
        line.amount + (line.amount * line.tax_rate).quantize(D("0.01")) for line in draft.lines
    )
    assert recomputed == draft.total == D("2093.99") and draft.exchange_rate == D("34.2156")


async def test_conversion_needs_a_matching_rate(store: Store, book: InvoiceBook) -> None:
    org = await make_org(store)
    snap = await make_snapshot(store, org)
    with pytest.raises(CurrencyError, match="needs a rate"):
        await book.create_from_snapshot(snap, provider="parasut", currency="TRY")
    eur = Quote("EUR", "TRY", D("37.1"), "tcmb", date(2026, 11, 30))
    with pytest.raises(CurrencyError, match="EUR to TRY"):
        await book.create_from_snapshot(snap, provider="parasut", currency="TRY", fx=eur)
    fine = Quote("USD", "TRY", D("34.1234567"), "tcmb", date(2026, 11, 30))
    with pytest.raises(CurrencyError, match="6 decimals"):
        await book.create_from_snapshot(snap, provider="parasut", currency="TRY", fx=fine)
    assert await book.for_snapshot(snap) is None


async def test_a_snapshot_that_contradicts_itself_is_not_invoiced(
    store: Store, book: InvoiceBook
) -> None:
    org = await make_org(store)
    wrong_sum = await make_snapshot(store, org, subtotal=D("45.12"))
    with pytest.raises(SnapshotInvalid, match=r"charges add up to 45\.11 USD, its subtotal is"):
        await book.create_from_snapshot(wrong_sum, provider="none")
    floats = [{"kind": "fee", "description": "fee", "amount": 10.5}]
    other = await make_org(store, "other")
    float_snapshot = await make_snapshot(store, other, floats, subtotal=D("10.5"), total=D("10.5"))
    with pytest.raises(SnapshotInvalid, match=r"line 1: amount: 10\.5 went through a float"):
        await book.create_from_snapshot(float_snapshot, provider="none")
    with pytest.raises(SnapshotNotFound, match="snap_missing"):
        await book.create_from_snapshot("snap_missing", provider="none")
    with pytest.raises(ValueError, match="provider 'paypal'"):
        await book.create_from_snapshot(wrong_sum, provider="paypal")


async def test_a_reverse_charge_snapshot_has_no_tax_and_keeps_the_note(
    store: Store, book: InvoiceBook
) -> None:
    lines = [
        USD_LINES[0],
        {"kind": "tax", "description": "VAT: reverse charge (customer tax id DE1)", "quantity": "0", "unit_price": "49.00", "amount": "0", "per": "1", "tax_name": "VAT", "reverse_charge": True},
    ]  # fmt: skip
    snap = await make_snapshot(store, await make_org(store), lines)
    invoice = await book.create_from_snapshot(snap, provider="stripe")
    assert invoice.reverse_charge and invoice.tax == usd("0") and invoice.total == usd("49.00")
    assert invoice.lines[0].tax_rate == 0
    assert invoice.lines[-1].description.startswith("VAT: reverse charge")
    assert (await book.get(invoice.id)).reverse_charge


async def test_making_an_invoice_twice_returns_the_first(store: Store, book: InvoiceBook) -> None:
    snap = await make_snapshot(store, await make_org(store))
    first = await book.create_from_snapshot(snap, provider="none")
    again = await book.create_from_snapshot(snap, provider="none")
    together = await asyncio.gather(
        *(book.create_from_snapshot(snap, provider="none") for _ in range(5))
    )
    assert {first.id, again.id, *(i.id for i in together)} == {first.id}
    assert len(await book.list()) == 1


async def test_numbers_are_sequential_and_unique_when_made_at_once(
    store: Store, book: InvoiceBook
) -> None:
    snapshots = [await make_snapshot(store, await make_org(store, f"org{i}")) for i in range(10)]
    made = await asyncio.gather(*(book.create_from_snapshot(s, provider="none") for s in snapshots))
    assert sorted(i.number for i in made) == [f"HR-2026-{n:06d}" for n in range(1, 11)]
    # A new year starts a new sequence.
    next_year = await make_snapshot(store, await make_org(store, "late"), period="2026-12")
    later = await book.create_from_snapshot(next_year, provider="none", issue_date=date(2027, 1, 1))
    assert later.number == "HR-2027-000001"


# --- credits -------------------------------------------------------------------------------------


def spender(credits: CreditBook, calls: list[str]) -> Any:
    async def spend(org_id: str, amount: Money, reference: str) -> Money:
        calls.append(reference)
        used = await credits.consume(org_id, amount, reason="invoice", reference=reference)
        return amount - used.remaining

    return spend


async def spends(store: Store, reference: str) -> list[Decimal]:
    async with store.connect() as conn:
        rows = await conn.execute(
            select(credit_ledger.c.amount).where(credit_ledger.c.reference == reference)
        )
        return [row.amount for row in rows]


async def test_credits_are_spent_once_however_often_the_invoice_is_made(
    store: Store, book: InvoiceBook, clock: FakeClock, ledger: FakeLedger
) -> None:
    org = await make_org(store)
    credits = CreditBook(store, clock)
    await credits.grant(org, "prepaid", usd("20.00"))
    snap = await make_snapshot(store, org)
    calls: list[str] = []
    first = await book.create_from_snapshot(
        snap, provider="stripe", credits=spender(credits, calls)
    )
    again = await book.create_from_snapshot(
        snap, provider="stripe", credits=spender(credits, calls)
    )
    assert again == first and calls == [first.number]
    assert first.credits == usd("20.00") and first.total == usd("34.13")
    assert first.credits_applied and first.lines[-1].kind == "credit"
    assert await spends(store, first.number) == [D("-20.00")]
    assert await credits.balance(org, "USD") == usd("0")
    assert await actions(store, first.id) == ["invoice.create", "invoice.credits"]
    assert ledger.entries == []  # the spend's entry is the credit book's, not the invoice's
    draft = book.draft(first, tax_name="VAT", reverse_charge=False)
    assert draft.lines[-1].amount == D("-20.00") and draft.credits == D("20.00")


async def test_a_crash_after_spending_is_completed_from_the_credit_ledger(
    store: Store, book: InvoiceBook, clock: FakeClock
) -> None:
    org = await make_org(store)
    credits = CreditBook(store, clock)
    await credits.grant(org, "prepaid", usd("100.00"))
    snap = await make_snapshot(store, org)

    async def spend_then_crash(org_id: str, amount: Money, reference: str) -> Money:
        await credits.consume(org_id, amount, reason="invoice", reference=reference)
        raise Killed("worker killed before recording")

    with pytest.raises(Killed):
        await book.create_from_snapshot(snap, provider="stripe", credits=spend_then_crash)
    half_done = await book.for_snapshot(snap)
    assert half_done is not None and not half_done.credits_applied

    async def must_not_spend(org_id: str, amount: Money, reference: str) -> Money:
        raise AssertionError("credits spent twice")

    done = await book.create_from_snapshot(snap, provider="stripe", credits=must_not_spend)
    assert done.id == half_done.id
    assert done.credits == usd("54.13") and done.total == usd("0")
    assert await spends(store, done.number) == [D("-54.13")]
    assert await credits.balance(org, "USD") == usd("45.87")


async def test_credits_that_paid_nothing_are_not_asked_again(
    store: Store, book: InvoiceBook, clock: FakeClock
) -> None:
    org = await make_org(store)
    credits = CreditBook(store, clock)
    snap = await make_snapshot(store, org)
    calls: list[str] = []
    invoice = await book.create_from_snapshot(
        snap, provider="none", credits=spender(credits, calls)
    )
    assert invoice.total == usd("54.13") and invoice.credits_applied
    await credits.grant(org, "prepaid", usd("10.00"))
    again = await book.create_from_snapshot(snap, provider="none", credits=spender(credits, calls))
    assert again.total == usd("54.13") and len(calls) == 1
    draft = book.draft(again, tax_name="VAT", reverse_charge=False)
    assert [line.kind for line in draft.lines] == ["fee", "usage", "discount"]


# --- states --------------------------------------------------------------------------------------


async def test_the_life_of_an_invoice_is_audited_and_told_to_the_ledger(
    store: Store, book: InvoiceBook, ledger: FakeLedger, clock: FakeClock
) -> None:
    snap = await make_snapshot(store, await make_org(store))
    invoice = await book.create_from_snapshot(snap, provider="stripe")
    pending = await book.mark_pending(invoice.id, "stripe: 503 Service Unavailable")
    assert pending.status == "pending" and pending.last_error is not None
    assert (await book.mark_pending(invoice.id, "timeout")).last_error == "timeout"
    clock.advance(timedelta(minutes=5))
    sent = await book.mark_sent(invoice.id, "in_123", "open", usd("54.13"))
    assert sent.status == "open" and sent.sent_at == clock.now and sent.last_error is None
    assert sent.provider_total == usd("54.13") and sent.provider_id == "in_123"
    assert await book.mark_sent(invoice.id, "in_123", "open", usd("54.13")) == sent
    with pytest.raises(InvalidTransition, match="already open as in_123"):
        await book.mark_sent(invoice.id, "in_999", "open", usd("54.13"))
    checked = await book.record_provider_total(invoice.id, usd("54.12"), "open")
    assert checked.provider_total == usd("54.12") and checked.status == "open"
    paid_at = NOW + timedelta(days=3)
    paid = await book.mark_paid(invoice.id, paid_at)
    assert paid.status == "paid" and paid.paid_at == paid_at
    assert await book.mark_paid(invoice.id, paid_at) == paid  # a webhook delivered twice
    with pytest.raises(
        InvalidTransition, match="is paid: only a draft, open or pending invoice can become void"
    ):
        await book.mark_void(invoice.id)
    assert await actions(store, invoice.id) == [
        "invoice.create",
        "invoice.pending",
        "invoice.pending",
        "invoice.open",
        "invoice.provider_total",
        "invoice.paid",
    ]
    org = invoice.org_id
    assert ledger.entries == [
        ("invoice.issued", org, invoice.id, usd("54.13")),
        ("payment.received", org, invoice.id, usd("54.13")),
    ]


@pytest.mark.parametrize(
    ("steps", "refused"),
    [
        ((), "mark_paid"),
        ((), "mark_uncollectible"),
        (("open",), "mark_pending"),
        (("void",), "mark_sent"),
        (("void",), "mark_pending"),
        (("open", "uncollectible"), "mark_paid"),
    ],
)
async def test_transitions_the_state_machine_refuses(
    store: Store, book: InvoiceBook, steps: tuple[str, ...], refused: str
) -> None:
    snap = await make_snapshot(store, await make_org(store))
    invoice = await book.create_from_snapshot(snap, provider="stripe")
    moves = {
        "open": lambda: book.mark_sent(invoice.id, "in_1", "open", usd("54.13")),
        "void": lambda: book.mark_void(invoice.id),
        "uncollectible": lambda: book.mark_uncollectible(invoice.id),
        "mark_paid": lambda: book.mark_paid(invoice.id),
        "mark_uncollectible": lambda: book.mark_uncollectible(invoice.id),
        "mark_pending": lambda: book.mark_pending(invoice.id, "down"),
        "mark_sent": lambda: book.mark_sent(invoice.id, "in_1", "open", usd("54.13")),
    }
    for step in steps:
        await moves[step]()
    before = await book.get(invoice.id)
    with pytest.raises(InvalidTransition, match=f"invoice {invoice.number} is {before.status}"):
        await moves[refused]()
    assert await book.get(invoice.id) == before


async def test_voiding_an_issued_invoice_reverses_it_in_the_ledger(
    store: Store, book: InvoiceBook, ledger: FakeLedger
) -> None:
    org = await make_org(store)
    draft = await book.create_from_snapshot(await make_snapshot(store, org), provider="none")
    assert (await book.mark_void(draft.id)).status == "void"
    assert ledger.entries == []  # never issued: nothing to reverse
    issued = await book.create_from_snapshot(
        await make_snapshot(store, org, period="2026-10"), provider="stripe"
    )
    await book.mark_sent(issued.id, "in_2", "open", usd("54.13"))
    await book.mark_void(issued.id)
    assert [entry[0] for entry in ledger.entries] == ["invoice.issued", "invoice.voided"]


async def test_a_failing_ledger_undoes_the_transition(
    store: Store, book: InvoiceBook, ledger: FakeLedger
) -> None:
    invoice = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store)), provider="stripe"
    )
    ledger.fail = True
    with pytest.raises(RuntimeError, match="ledger down"):
        await book.mark_sent(invoice.id, "in_1", "open", usd("54.13"))
    assert (await book.get(invoice.id)).status == "draft"
    assert await actions(store, invoice.id) == ["invoice.create"]


async def test_the_provider_total_must_be_in_the_invoice_currency(
    store: Store, book: InvoiceBook
) -> None:
    invoice = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store)), provider="stripe"
    )
    with pytest.raises(CurrencyError, match="in EUR; invoice HR-2026-000001 is in USD"):
        await book.mark_sent(invoice.id, "in_1", "open", Money(D("54.13"), "EUR"))
    with pytest.raises(InvoiceNotFound, match="inv_nope"):
        await book.mark_paid("inv_nope")


# --- credit notes and refunds --------------------------------------------------------------------


async def issued_invoice(store: Store, book: InvoiceBook, *, paid: bool) -> Invoice:
    invoice = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store)), provider="stripe"
    )
    invoice = await book.mark_sent(invoice.id, "in_1", "open", invoice.total)
    return await book.mark_paid(invoice.id) if paid else invoice


async def test_credit_notes_stay_within_the_invoice_total(
    store: Store, book: InvoiceBook, ledger: FakeLedger
) -> None:
    draft = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store, "draft")), provider="none"
    )
    with pytest.raises(AdjustmentRefused, match="is draft"):
        await book.add_credit_note(draft.id, usd("1.00"), "typo")
    invoice = await issued_invoice(store, book, paid=False)
    note = await book.add_credit_note(invoice.id, usd("50.00"), "outage credit")
    assert note.status == "pending" and note.amount == usd("50.00")
    with pytest.raises(AdjustmentRefused, match=r"come to 54\.14 USD, more than its total"):
        await book.add_credit_note(invoice.id, usd("4.14"), "more")
    with pytest.raises(AdjustmentRefused, match="in EUR"):
        await book.add_credit_note(invoice.id, Money(D("1"), "EUR"), "wrong currency")
    with pytest.raises(AdjustmentRefused, match="positive amount"):
        await book.add_credit_note(invoice.id, usd("0.001"), "too fine")
    issued = await book.mark_credit_note_issued(note.id, "cn_1")
    assert issued.status == "issued" and issued.issued_at == NOW
    assert await book.mark_credit_note_issued(note.id, "cn_1") == issued
    assert ledger.entries[-1] == ("credit_note.issued", invoice.org_id, note.id, usd("50.00"))
    assert len(ledger.entries) == 2  # issued, then the credit note once
    with pytest.raises(InvalidTransition, match="is issued"):
        await book.mark_credit_note_issued(note.id, "cn_2")
    assert await book.credit_notes(invoice.id) == [issued]
    assert "credit_note.create" in await actions(store, invoice.id)


async def test_refunds_need_a_paid_invoice_and_failed_ones_free_their_amount(
    store: Store, book: InvoiceBook, clock: FakeClock, ledger: FakeLedger
) -> None:
    open_invoice = await issued_invoice(store, book, paid=False)
    with pytest.raises(AdjustmentRefused, match="is open: a refund needs it paid"):
        await book.add_refund(open_invoice.id, usd("1.00"), "goodwill")
    paid = await issued_invoice(store, book, paid=True)
    refund = await book.add_refund(paid.id, usd("54.13"), "cancelled")
    with pytest.raises(AdjustmentRefused, match="more than its total"):
        await book.add_refund(paid.id, usd("0.01"), "again")
    failed = await book.mark_refund_done(refund.id, "re_1", succeeded=False)
    assert failed.status == "failed" and failed.done_at == NOW
    clock.advance(timedelta(hours=1))
    retry = await book.add_refund(paid.id, usd("54.13"), "cancelled, again")
    done = await book.mark_refund_done(retry.id, "re_2")
    assert done.status == "succeeded"
    assert await book.mark_refund_done(retry.id, "re_2") == done
    refunded = [entry for entry in ledger.entries if entry[0] == "refund.issued"]
    assert refunded == [("refund.issued", paid.org_id, retry.id, usd("54.13"))]
    assert [r.status for r in await book.refunds(paid.id)] == ["failed", "succeeded"]


# --- the provider's view and the readers ---------------------------------------------------------


async def test_the_draft_for_a_provider(store: Store, book: InvoiceBook) -> None:
    invoice = await book.create_from_snapshot(
        await make_snapshot(store, await make_org(store)), provider="stripe"
    )
    draft = book.draft(invoice, tax_name="VAT", reverse_charge=False)
    assert [line.kind for line in draft.lines] == ["fee", "usage", "discount"]
    fee, usage, discount = draft.lines
    assert fee.amount == D("49.00") and fee.tax_rate == D("0.2")
    assert usage.unit_price == D("4.5E-7") and usage.quantity == D(2500000)
    assert discount.amount == D("-5.01") and discount.unit_price < 0
    assert (draft.subtotal, draft.tax, draft.credits, draft.total) == (
        D("45.11"),
        D("9.02"),
        D("0"),
        D("54.13"),
    )
    assert draft.number == invoice.number and draft.exchange_rate is None
    assert draft.metadata["invoice_id"] == invoice.id and draft.metadata["period"] == "2026-11"


async def test_listing_filters_by_org_status_and_period(store: Store, book: InvoiceBook) -> None:
    acme, other = await make_org(store, "acme"), await make_org(store, "other")
    first = await book.create_from_snapshot(await make_snapshot(store, acme), provider="none")
    second = await book.create_from_snapshot(
        await make_snapshot(store, acme, period="2026-10"), provider="none"
    )
    third = await book.create_from_snapshot(await make_snapshot(store, other), provider="none")
    await book.mark_void(second.id)
    assert {i.id for i in await book.list(org_id=acme)} == {first.id, second.id}
    assert [i.id for i in await book.list(status="void")] == [second.id]
    assert {i.id for i in await book.list(period="2026-11")} == {first.id, third.id}
    assert len(await book.list(limit=1)) == 1
    with pytest.raises(ValueError, match="status 'gone'"):
        await book.list(status="gone")
    async with store.connect() as conn:
        audited = await conn.scalar(
            select(audit_log.c.id).where(audit_log.c.action == "invoice.void")
        )
    assert audited is not None
