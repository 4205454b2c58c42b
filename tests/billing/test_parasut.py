"""The Paraşüt provider against a fake Paraşüt on a real socket (tests/billing/fake_parasut.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest

from hoodrun.billing.config import ParasutConfig
from hoodrun.billing.providers import (
    CustomerInfo,
    InvoiceDraft,
    InvoiceLineDraft,
    ProviderRejected,
    ProviderUnavailable,
)
from hoodrun.billing.providers.parasut import ParasutProvider, ParasutRejected
from hoodrun.billing.providers.parasut._session import _RateLimiter
from tests.billing.fake_parasut import PDF_BYTES, USER_PASSWORD, Clock, FakeParasut

KDV = Decimal("0.20")
VKN = "1234567890"
INBOX = "urn:mail:defaultpk@acme.com.tr"
SALE_URL = "https://hoodrun.example/pricing"


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def customer(tax_id: str = VKN, name: str = "Acme Bilişim A.Ş.") -> CustomerInfo:
    return CustomerInfo(
        org_id=f"org-{tax_id}",
        name=name,
        email="fatura@acme.com.tr",
        country="TR",
        tax_id=tax_id,
        business=True,
        address="Moda Cd. 1",
        city="İstanbul",
        district="Kadıköy",
        tax_office="Kadıköy",
    )


def line(
    amount: str, quantity: str = "1", unit_price: str | None = None, rate: Decimal = KDV
) -> InvoiceLineDraft:
    kind = "credit" if Decimal(amount) < 0 else "usage"
    return InvoiceLineDraft(
        description=f"{kind} {amount}",
        quantity=Decimal(quantity),
        unit_price=Decimal(unit_price if unit_price is not None else amount),
        amount=Decimal(amount),
        tax_rate=rate if kind == "usage" else Decimal(0),
        kind=kind,
    )


USAGE = (
    line("1234.56"),
    line("2.50", quantity="1000", unit_price="0.0025"),  # exact: kept as quantity × unit price
    line("2.47", quantity="1234567", unit_price="0.000002"),  # 2.469134 rounded: sent as 1 × 2.47
)


def draft(
    number: str = "HR-2026-000123",
    lines: tuple[InvoiceLineDraft, ...] = USAGE,
    *,
    currency: str = "TRY",
    credits_before_tax: bool = False,
    total_off_by: Decimal = Decimal(0),
    exchange_rate: Decimal | None = None,
) -> InvoiceDraft:
    """Totals as HoodRun computes them: tax per line, half up; credits after tax (or before)."""
    usage = [li for li in lines if li.amount >= 0]
    subtotal = sum((li.amount for li in usage), Decimal(0))
    credits = -sum((li.amount for li in lines if li.amount < 0), Decimal(0))
    if credits_before_tax:
        tax = cents((subtotal - credits) * usage[0].tax_rate)
    else:
        tax = sum((cents(li.amount * li.tax_rate) for li in usage), Decimal(0))
    return InvoiceDraft(
        invoice_id=f"inv-{number}",
        number=number,
        currency=currency,
        issue_date=date(2026, 11, 30),
        due_date=date(2026, 12, 14),
        period="2026-11",
        description="RPC usage, November 2026",
        lines=lines,
        subtotal=subtotal,
        tax=tax,
        credits=credits,
        total=subtotal + tax - credits + total_off_by,
        tax_name="KDV",
        exchange_rate=exchange_rate,
    )


# Fixtures.


@pytest.fixture
def fake_factory() -> Iterator[Callable[..., FakeParasut]]:
    started: list[FakeParasut] = []

    def make(**options: Any) -> FakeParasut:
        fake = FakeParasut(**options).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(fake_factory: Callable[..., FakeParasut]) -> FakeParasut:
    return fake_factory()


@pytest.fixture
async def provider_factory() -> AsyncIterator[Callable[..., ParasutProvider]]:
    made: list[ParasutProvider] = []

    def make(
        fake: FakeParasut, *, clock: Any = None, sleep: Any = None, **settings: Any
    ) -> ParasutProvider:
        options: dict[str, Any] = {
            "enabled": True,
            "base_url": fake.url,
            "company_id": fake.company_id,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "username": "ops@hoodrun.test",
            "password": USER_PASSWORD,
            "rate_limit": 1000,
            "poll_interval": 0.01,
            "job_timeout": 5.0,
            "internet_sale_url": SALE_URL,
        }
        extra = {k: v for k, v in (("clock", clock), ("sleep", sleep)) if v is not None}
        provider = ParasutProvider(ParasutConfig(**(options | settings)), **extra)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture
def provider(
    fake: FakeParasut, provider_factory: Callable[..., ParasutProvider]
) -> ParasutProvider:
    return provider_factory(fake)


def stepping_clock() -> tuple[Clock, Callable[[float], Any]]:
    clock = Clock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return clock, sleep


# OAuth.


async def test_refresh_replaces_the_rotated_refresh_token(
    fake: FakeParasut, provider_factory: Callable[..., ParasutProvider]
) -> None:
    clock, sleep = stepping_clock()
    provider = provider_factory(fake, clock=clock, sleep=sleep)
    contact = await provider.ensure_customer(customer(), None)
    first_refresh = fake.issued_refresh_tokens[-1]

    clock.advance(7200)  # the access token is about to expire: refreshed before the request
    assert await provider.ensure_customer(customer(), contact) == contact
    assert fake.grants == [("password", 200), ("refresh_token", 200)]

    async with httpx.AsyncClient() as client:
        reused = await client.post(
            f"{fake.url}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": first_refresh,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
            },
        )
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    clock.advance(7200)  # refreshing again works only with the token the last refresh returned
    assert await provider.ensure_customer(customer(), contact) == contact
    assert fake.grants[-1] == ("refresh_token", 200)
    assert [g for g, _ in fake.grants].count("password") == 1


async def test_a_401_refreshes_the_token_and_retries_once(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.expire_access_tokens()
    assert await provider.ensure_customer(customer(), contact) == contact
    assert fake.grants == [("password", 200), ("refresh_token", 200)]
    assert [r.status for r in fake.requests if r.path == f"contacts/{contact}"] == [401, 200]


async def test_a_refused_refresh_token_logs_in_again(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.expire_access_tokens()
    fake.revoke_refresh_tokens()
    assert await provider.ensure_customer(customer(), contact) == contact
    assert fake.grants == [("password", 200), ("refresh_token", 400), ("password", 200)]


# Customers.


async def test_customers_are_found_by_tax_number_before_being_made(
    fake: FakeParasut, provider: ParasutProvider, provider_factory: Callable[..., ParasutProvider]
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    attributes = fake.contacts[contact]["attributes"]
    assert attributes["account_type"] == "customer" and attributes["contact_type"] == "company"
    assert attributes["tax_number"] == VKN and attributes["is_abroad"] is False
    assert attributes["tax_office"] == "Kadıköy" and attributes["district"] == "Kadıköy"

    other_process = provider_factory(fake)
    assert await other_process.ensure_customer(customer(), None) == contact
    assert await other_process.ensure_customer(customer(), "999999") == contact  # gone → found
    assert len(fake.contacts) == 1


async def test_a_422_is_rejected_with_paraşüts_detail(provider: ParasutProvider) -> None:
    with pytest.raises(ParasutRejected) as caught:
        await provider.ensure_customer(customer(tax_id="5555555555", name=""), None)
    assert caught.value.status == 422
    assert "name can't be blank" in str(caught.value)


# Invoices.


async def test_e_archive_for_a_customer_without_an_inbox(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    bill = draft()
    remote = await provider.send_invoice(contact, bill)

    (sent,) = fake.posted("sales_invoices")
    attributes = sent["data"]["attributes"]
    assert attributes["currency"] == "TRL"
    assert (attributes["invoice_series"], attributes["invoice_id"]) == ("HR-2026", 123)
    assert attributes["tax_number"] == VKN and attributes["billing_address"] == "Moda Cd. 1"
    assert "invoice_discount" not in attributes
    details = [d["attributes"] for d in sent["data"]["relationships"]["details"]["data"]]
    assert [(d["quantity"], d["unit_price"], d["vat_rate"]) for d in details] == [
        (1, Decimal("1234.56"), 20),
        (1000, Decimal("0.0025"), 20),
        (1, Decimal("2.47"), 20),
    ]

    (archive,) = fake.posted("e_archives")
    assert set(archive["data"]["relationships"]) == {"sales_invoice"}
    assert archive["data"]["relationships"]["sales_invoice"]["data"]["id"] == remote.provider_id
    assert archive["data"]["attributes"]["internet_sale"]["url"] == SALE_URL
    assert fake.posted("e_invoices") == []

    assert remote.status == "open" and remote.currency == "TRY"
    assert remote.total == bill.total == Decimal("1487.43")
    assert fake.invoices[remote.provider_id]["document"] == ("e_archives", remote.document_id)


async def test_e_invoice_for_a_customer_with_an_inbox(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(inboxes={VKN: INBOX})
    provider = provider_factory(fake)
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())

    (invoice,) = fake.posted("e_invoices")
    assert set(invoice["data"]["relationships"]) == {"invoice"}
    assert invoice["data"]["relationships"]["invoice"]["data"]["id"] == remote.provider_id
    assert invoice["data"]["attributes"]["to"] == INBOX
    assert invoice["data"]["attributes"]["scenario"] == "basic"
    assert fake.posted("e_archives") == []
    assert fake.invoices[remote.provider_id]["document"] == ("e_invoices", remote.document_id)


async def test_credits_after_tax_become_a_discount_that_gives_hoodruns_total(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    bill = draft(lines=(line("1234.56"), line("100.00"), line("-50.00")))
    remote = await provider.send_invoice(contact, bill)

    reported = fake.invoice(remote.provider_id)
    assert reported["invoice_discount_type"] == "amount"
    assert reported["net_total"] == remote.total == bill.total == Decimal("1551.47")
    # The discount is net of VAT, so Paraşüt's VAT is below HoodRun's by about 50 × 0.2 / 1.2.
    assert reported["invoice_discount"] == Decimal("41.67")
    assert bill.tax - reported["total_vat"] == Decimal("8.33")


async def test_credits_before_tax_are_the_discount_itself(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    bill = draft(lines=(line("1000.00"), line("-100.00")), credits_before_tax=True)
    remote = await provider.send_invoice(contact, bill)

    reported = fake.invoice(remote.provider_id)
    assert reported["invoice_discount"] == Decimal("100.00")
    assert reported["total_vat"] == bill.tax == Decimal("180.00")
    assert remote.total == bill.total == Decimal("1080.00")


async def test_a_total_paraşüt_computes_differently_is_not_issued(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    with pytest.raises(ProviderRejected, match="not issued"):
        await provider.send_invoice(contact, draft(total_off_by=Decimal("0.01")))
    assert fake.posted("e_archives") == [] and fake.posted("e_invoices") == []
    (invoice_id,) = fake.invoices
    assert await provider.document_pdf(invoice_id) is None
    assert (await provider.fetch_invoice(invoice_id)).status == "draft"


async def test_foreign_currency_invoices_carry_their_exchange_rate(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(
        contact, draft(currency="USD", exchange_rate=Decimal("35.1234"))
    )
    (sent,) = fake.posted("sales_invoices")
    assert sent["data"]["attributes"]["currency"] == "USD"
    assert sent["data"]["attributes"]["exchange_rate"] == Decimal("35.1234")
    assert remote.currency == "USD"
    with pytest.raises(ProviderRejected, match="JPY"):
        await provider.send_invoice(contact, draft("HR-2026-000124", currency="JPY"))


async def test_amounts_sent_as_strings_are_read_exactly(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(money_as_strings=True)
    provider = provider_factory(fake)
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())
    assert remote.total == Decimal("1487.43")


# Exactly once.


async def test_sending_twice_makes_one_invoice_and_one_e_document(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    first = await provider.send_invoice(contact, draft())
    again = await provider.send_invoice(contact, draft())
    assert again == first
    assert fake.invoice_count("HR-2026", 123) == 1
    assert len(fake.posted("e_archives")) == 1


async def test_a_crash_before_the_e_document_is_finished_by_the_retry(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.fail_next("POST", "e_archives", 503)
    with pytest.raises(ProviderUnavailable):
        await provider.send_invoice(contact, draft())
    assert fake.invoice_count("HR-2026", 123) == 1 and not fake.jobs

    remote = await provider.send_invoice(contact, draft())
    assert fake.invoice_count("HR-2026", 123) == 1
    assert len(fake.jobs) == 1 and remote.document_id is not None


async def test_an_answer_lost_after_the_invoice_was_made_does_not_make_another(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.fail_next("POST", "sales_invoices", 503, after=True)
    with pytest.raises(ProviderUnavailable):
        await provider.send_invoice(contact, draft())
    remote = await provider.send_invoice(contact, draft())
    assert fake.invoice_count("HR-2026", 123) == 1
    assert remote.status == "open"


async def test_a_slow_job_is_polled_again_by_the_retry_not_restarted(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(job_polls=10**6)
    provider = provider_factory(fake, job_timeout=0.05)
    contact = await provider.ensure_customer(customer(), None)
    with pytest.raises(ProviderUnavailable, match="still running"):
        await provider.send_invoice(contact, draft())
    fake.finish_jobs()
    remote = await provider.send_invoice(contact, draft())
    assert len(fake.posted("e_archives")) == 1
    assert remote.document_id is not None


async def test_a_failed_job_is_rejected_with_its_errors(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.job_errors = ["Alıcı vergi numarası geçersiz"]
    with pytest.raises(ProviderRejected, match="Alıcı vergi numarası geçersiz"):
        await provider.send_invoice(contact, draft())


# Availability and the rate limit.


async def test_paraşüt_down_is_unavailable(fake: FakeParasut, provider: ParasutProvider) -> None:
    contact = await provider.ensure_customer(customer(), None)
    fake.down = True
    with pytest.raises(ProviderUnavailable):
        await provider.send_invoice(contact, draft())
    with pytest.raises(ProviderUnavailable):
        await provider.fetch_invoice("1")
    fake.down = False
    assert (await provider.send_invoice(contact, draft())).status == "open"


async def test_the_client_keeps_within_paraşüts_rate_limit(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(rate_limit=3, rate_window=0.25)
    provider = provider_factory(fake, rate_limit=3, rate_window=0.25)
    for n, vkn in enumerate(("1111111111", "2222222222")):
        contact = await provider.ensure_customer(customer(tax_id=vkn), None)
        await provider.send_invoice(contact, draft(f"HR-2026-{n + 1:06d}"))
    assert len(fake.requests) > 12
    assert fake.throttled == 0
    assert fake.max_in_window() <= 3


async def test_a_429_waits_retry_after_then_retries(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    server_clock = Clock()
    fake = fake_factory(rate_limit=2, rate_window=10.0, clock=server_clock)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        server_clock.advance(seconds)

    provider = provider_factory(fake, sleep=sleep)
    contact = await provider.ensure_customer(customer(), None)  # two requests: list, create
    assert await provider.ensure_customer(customer(), contact) == contact
    assert waits == [10.0] and fake.throttled == 1


async def test_a_429_that_does_not_end_is_unavailable(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(rate_limit=2, rate_window=10.0, clock=Clock())
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    provider = provider_factory(fake, sleep=sleep)
    contact = await provider.ensure_customer(customer(), None)
    with pytest.raises(ProviderUnavailable, match="rate-limiting"):
        await provider.ensure_customer(customer(), contact)
    assert waits == [10.0, 10.0, 10.0] and fake.throttled == 4


async def test_the_limiter_spaces_requests_by_the_window() -> None:
    clock, sleep = stepping_clock()
    limiter = _RateLimiter(2, 1.0, clock, sleep)
    started = []
    for _ in range(5):
        async with limiter:
            started.append(clock())
    assert all(later - earlier >= 1.0 for earlier, later in zip(started, started[2:], strict=False))
    assert started[1] == started[0]


# Documents, payments, voiding, credits.


async def test_the_pdf_is_polled_until_ready_and_downloaded_without_the_token(
    fake_factory: Callable[..., FakeParasut], provider_factory: Callable[..., ParasutProvider]
) -> None:
    fake = fake_factory(pdf_polls=2)
    provider = provider_factory(fake)
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())
    assert await provider.document_pdf(remote.provider_id) == PDF_BYTES
    polls = [r.status for r in fake.requests if r.path == f"e_archives/{remote.document_id}/pdf"]
    assert polls == [204, 204, 200]
    assert fake.file_headers and not any(k.lower() == "authorization" for k in fake.file_headers[0])


async def test_payments_make_it_paid_and_fetch_reports_what_paraşüt_says(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())
    assert (await provider.collect_payment(remote.provider_id)).status == "open"
    await provider.record_payment(
        remote.provider_id, remote.total, paid_on=date(2026, 12, 1), account_id=7
    )
    paid = await provider.collect_payment(remote.provider_id)
    assert paid.status == "paid" and paid.amount_paid == remote.total

    fake.mutate_invoice(remote.provider_id, net_total=Decimal("1500.00"))
    assert (await provider.fetch_invoice(remote.provider_id)).total == Decimal("1500.00")


async def test_void_cancels_once(fake: FakeParasut, provider: ParasutProvider) -> None:
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())
    assert (await provider.void_invoice(remote.provider_id)).status == "void"
    assert fake.invoice(remote.provider_id)["item_type"] == "cancelled"
    assert (await provider.void_invoice(remote.provider_id)).status == "void"
    assert sum(1 for r in fake.requests if r.method == "DELETE") == 1


async def test_a_credit_note_is_a_refund_invoice_made_once_per_key(
    fake: FakeParasut, provider: ParasutProvider
) -> None:
    contact = await provider.ensure_customer(customer(), None)
    remote = await provider.send_invoice(contact, draft())
    credit = await provider.credit_note(
        remote.provider_id, Decimal("24.00"), "SLA credit", key="HR-CN-2026-000001"
    )
    again = await provider.credit_note(
        remote.provider_id, Decimal("24.00"), "SLA credit", key="HR-CN-2026-000001"
    )
    assert again == credit != remote.provider_id
    assert fake.invoice_count("HR-CN-2026", 1, "refund") == 1

    refund = fake.invoice(credit)
    assert refund["item_type"] == "refund" and refund["currency"] == "TRL"
    assert refund["net_total"] == Decimal("24.00") and refund["total_vat"] == Decimal("4.00")
    assert "HR-2026123" in refund["description"]
    assert fake.invoices[credit]["contact"] == contact


async def test_refunds_are_left_to_the_operator(provider: ParasutProvider) -> None:
    with pytest.raises(ProviderRejected, match="operator"):
        await provider.refund("1", Decimal("10.00"), "refund", key="r-1")


async def test_a_closed_provider_refuses_use(provider: ParasutProvider) -> None:
    await provider.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await provider.fetch_invoice("1")


def test_missing_secrets_name_the_keys() -> None:
    with pytest.raises(ValueError, match="client_secret, username, password"):
        ParasutProvider(ParasutConfig(company_id="1", client_id="c"))
