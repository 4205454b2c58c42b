"""The Stripe provider through the official SDK: against localstripe where it implements the flow
(customers, a subscription customer's invoice paid with a card), against ``fake_stripe`` (Stripe's
documented API) for one-off invoices, finalize, credit notes, refunds and idempotency keys."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest
import stripe

from hoodrun.billing.config import StripeConfig
from hoodrun.billing.providers import (
    CustomerInfo,
    InvoiceDraft,
    InvoiceLineDraft,
    ProviderRejected,
    ProviderUnavailable,
)
from hoodrun.billing.providers.stripe import (
    StripeProvider,
    from_minor,
    parse_webhook,
    to_minor,
)
from tests.billing.fake_stripe import API_KEY, FakeStripe, sign_webhook

# The servers' fixtures (fake_stripe, fake_stripe_server, localstripe_url).
pytest_plugins = ["tests.billing.stripe_servers"]

SECRET = "whsec_test_secret"
ACME = CustomerInfo(
    org_id="org_acme",
    name="Acme GmbH",
    email="billing@acme.example",
    country="DE",
    tax_id="DE123456789",
    business=True,
    address="Hauptstrasse 1",
    city="Berlin",
)


def line(
    description: str, amount: str, *, kind: str = "usage", rate: str = "0.20"
) -> InvoiceLineDraft:
    value = Decimal(amount)
    return InvoiceLineDraft(description, Decimal(1), value, value, Decimal(rate), kind)


def draft(number: str = "HR-2026-0001", *, credit_line: bool = False) -> InvoiceDraft:
    """49.00 + 12.34 = 61.34, VAT 20% 12.27 (12.268 rounded), credits 10.00: total 63.61."""
    lines = [
        line("Growth plan, October 2026", "49.00", kind="fee"),
        line("Requests above the plan", "12.34"),
    ]
    if credit_line:
        lines.append(line("Promotional credit", "-10.00", kind="credit", rate="0"))
    return InvoiceDraft(
        invoice_id="inv_01",
        number=number,
        currency="EUR",
        issue_date=date(2026, 11, 1),
        due_date=date(2026, 11, 15),
        period="2026-10",
        description="HoodRun usage, October 2026",
        lines=tuple(lines),
        subtotal=Decimal("61.34"),
        tax=Decimal("12.27"),
        credits=Decimal("10.00"),
        total=Decimal("63.61"),
        metadata={"org": "org_acme"},
    )


def config(url: str, key: str = API_KEY) -> StripeConfig:
    return StripeConfig(
        enabled=True, api_key=key, api_base=url, collection_method="charge_automatically"
    )


@pytest.fixture
async def provider(fake_stripe: FakeStripe) -> AsyncIterator[StripeProvider]:
    async with StripeProvider(config(fake_stripe.url), max_network_retries=0) as made:
        yield made


@pytest.fixture
async def customer(provider: StripeProvider) -> str:
    return await provider.ensure_customer(ACME, None)


def posts(fake: FakeStripe, pattern: str) -> int:
    return sum(
        1 for method, path in fake.requests if method == "POST" and re.fullmatch(pattern, path)
    )


# --- money -----------------------------------------------------------------------------------------


def test_amounts_go_over_in_minor_units_of_the_currency() -> None:
    assert to_minor(Decimal("12.50"), "USD") == 1250
    assert to_minor(Decimal("-10.00"), "EUR") == -1000
    assert to_minor(Decimal("1500"), "JPY") == 1500
    assert to_minor(Decimal("1.250"), "KWD") == 1250
    assert from_minor(1250, "USD") == Decimal("12.50")
    assert from_minor(1500, "JPY") == Decimal(1500)
    with pytest.raises(ProviderRejected, match="finer"):
        to_minor(Decimal("0.125"), "USD")


# --- localstripe: the SDK against a stateful Stripe ------------------------------------------------


async def test_ensure_customer_creates_then_reuses_on_localstripe(localstripe_url: str) -> None:
    async with StripeProvider(config(localstripe_url), max_network_retries=0) as provider:
        made = await provider.ensure_customer(ACME, None)
        again = await provider.ensure_customer(ACME, made)
        found = (await provider.client.v1.customers.retrieve_async(made)).to_dict()
        replaced = await provider.ensure_customer(ACME, "cus_gone")
    assert again == made
    assert found["name"] == "Acme GmbH"
    assert found["email"] == "billing@acme.example"
    assert found["address"] == {"country": "DE", "line1": "Hauptstrasse 1", "city": "Berlin"}
    assert found["metadata"] == {"hoodrun_org": "org_acme", "tax_id": "DE123456789"}
    assert replaced not in (made, "cus_gone")


async def test_a_subscription_invoice_is_paid_by_card_on_localstripe(localstripe_url: str) -> None:
    async with StripeProvider(config(localstripe_url), max_network_retries=0) as provider:
        customer_id = await provider.ensure_customer(ACME, None)
        v1 = provider.client.v1
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
        method = await v1.payment_methods.create_async(params={"type": "card", "card": card})
        await v1.payment_methods.attach_async(method.id, params={"customer": customer_id})
        await v1.customers.update_async(
            customer_id, params={"invoice_settings": {"default_payment_method": method.id}}
        )
        product = await v1.products.create_async(params={"name": "Growth"})
        plan = await v1.plans.create_async(
            params={"amount": 4900, "currency": "eur", "interval": "month", "product": product.id}
        )
        await v1.subscriptions.create_async(
            params={"customer": customer_id, "items": [{"plan": plan.id}]}
        )
        await v1.invoice_items.create_async(
            params={
                "customer": customer_id,
                "amount": 1234,
                "currency": "eur",
                "description": "Requests",
            }
        )
        invoice = await v1.invoices.create_async(params={"customer": customer_id})

        before = await provider.fetch_invoice(invoice.id)
        paid = await provider.collect_payment(invoice.id)
        again = await provider.collect_payment(invoice.id)
    assert (before.status, before.total, before.currency) == ("draft", Decimal("61.34"), "EUR")
    assert (paid.status, paid.amount_paid) == ("paid", Decimal("61.34"))
    assert again == paid


# --- send_invoice ----------------------------------------------------------------------------------


async def test_send_invoice_creates_fills_and_finalizes(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    remote = await provider.send_invoice(customer, draft())

    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert (remote.provider_id, remote.status) == (made["id"], "open")
    assert (remote.total, remote.currency, remote.amount_paid) == (Decimal("63.61"), "EUR", 0)
    assert made["total"] == made["amount_due"] == 6361
    assert made["number"] == "HR-2026-0001"
    assert made["currency"] == "eur"
    assert (made["collection_method"], made["days_until_due"]) == ("charge_automatically", None)
    assert made["auto_advance"] is False
    assert made["metadata"] == {
        "org": "org_acme",
        "hoodrun_number": "HR-2026-0001",
        "hoodrun_invoice": "inv_01",
        "period": "2026-10",
    }
    lines = made["lines"]["data"]
    assert [(x["description"], x["amount"]) for x in lines] == [
        ("Growth plan, October 2026", 4900),
        ("Requests above the plan", 1234),
        ("VAT 20%", 1227),
        ("Credits", -1000),
    ]
    assert [x["metadata"]["hoodrun_line"] for x in lines] == ["0", "1", "2", "3"]
    october = (1790812800, 1793491200)  # 2026-10-01 and 2026-11-01, 00:00 UTC
    assert {(x["period"]["start"], x["period"]["end"]) for x in lines} == {october}


async def test_charged_automatically_with_reverse_charge(fake_stripe: FakeStripe) -> None:
    reverse = replace(
        draft(), tax=Decimal(0), credits=Decimal(0), total=Decimal("61.34"), reverse_charge=True
    )
    automatic = StripeConfig(
        enabled=True,
        api_key=API_KEY,
        api_base=fake_stripe.url,
        collection_method="charge_automatically",
    )
    async with StripeProvider(automatic, max_network_retries=0) as provider:
        customer_id = await provider.ensure_customer(ACME, None)
        remote = await provider.send_invoice(customer_id, reverse)

    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert (made["collection_method"], made["days_until_due"]) == ("charge_automatically", None)
    assert made["footer"] == "Reverse charge: the customer accounts for VAT on this invoice."
    assert [x["amount"] for x in made["lines"]["data"]] == [4900, 1234]
    assert remote.total == Decimal("61.34")


async def test_credit_lines_already_in_the_draft_are_not_added_again(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    remote = await provider.send_invoice(customer, draft(credit_line=True))

    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert [x["amount"] for x in made["lines"]["data"]] == [4900, 1234, -1000, 1227]
    assert remote.total == Decimal("63.61")


async def test_a_draft_that_does_not_add_up_is_refused_before_anything_is_made(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    wrong = replace(draft(), total=Decimal("70"))
    made_before = len(fake_stripe.requests)

    with pytest.raises(ProviderRejected, match="do not add up"):
        await provider.send_invoice(customer, wrong)
    assert len(fake_stripe.requests) == made_before


async def test_sending_twice_returns_the_same_invoice(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    first = await provider.send_invoice(customer, draft())
    second = await provider.send_invoice(customer, draft())

    assert second == first
    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert made["lines"]["total_count"] == 4
    assert posts(fake_stripe, "/v1/invoices") == 1


async def test_a_crash_before_finalize_is_finished_by_the_retry(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail(method="POST", path="/v1/invoices/[^/]+/finalize")
    with pytest.raises(ProviderUnavailable):
        await provider.send_invoice(customer, draft())
    [left] = fake_stripe.invoices_for("HR-2026-0001")
    assert (left["status"], left["lines"]["total_count"]) == ("draft", 4)

    remote = await provider.send_invoice(customer, draft())

    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert (remote.provider_id, remote.status, remote.total) == (
        left["id"],
        "open",
        Decimal("63.61"),
    )
    assert (made["status"], made["lines"]["total_count"]) == ("open", 4)


@pytest.mark.parametrize("expired", [False, True], ids=["keys-kept", "keys-expired"])
@pytest.mark.parametrize(
    "lost", ["/v1/invoices", "/v1/invoiceitems", "/v1/invoices/[^/]+/finalize"]
)
async def test_an_answer_lost_on_the_way_is_not_made_twice(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe, lost: str, expired: bool
) -> None:
    """Whether Stripe still has the idempotency keys (a quick retry) or not (a day later), the
    retry finds what the lost request made instead of making it again."""
    fake_stripe.fail(method="POST", path=lost, after=True)
    with pytest.raises(ProviderUnavailable):
        await provider.send_invoice(customer, draft())
    if expired:
        fake_stripe.expire_keys()

    remote = await provider.send_invoice(customer, draft())

    [made] = fake_stripe.invoices_for("HR-2026-0001")
    assert (remote.provider_id, remote.status) == (made["id"], "open")
    assert [x["metadata"]["hoodrun_line"] for x in made["lines"]["data"]] == ["0", "1", "2", "3"]
    assert made["total"] == 6361


async def test_the_fake_replays_an_idempotency_key_and_refuses_other_parameters(
    provider: StripeProvider, customer: str
) -> None:
    v1 = provider.client.v1
    options: stripe.RequestOptions = {"idempotency_key": "same-key"}
    first = await v1.invoices.create_async(params={"customer": customer}, options=options)
    again = await v1.invoices.create_async(params={"customer": customer}, options=options)
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        await v1.invoices.create_async(
            params={"customer": customer, "currency": "usd"}, options=options
        )


# --- errors ----------------------------------------------------------------------------------------


async def test_stripe_down_is_unavailable_until_it_is_back(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    fake_stripe.down()
    with pytest.raises(ProviderUnavailable, match="temporarily unavailable"):
        await provider.send_invoice(customer, draft())
    with pytest.raises(ProviderUnavailable):
        await provider.ensure_customer(ACME, customer)
    fake_stripe.up()

    assert (await provider.send_invoice(customer, draft())).status == "open"


async def test_the_sdk_retries_a_passing_outage_itself(fake_stripe: FakeStripe) -> None:
    fake_stripe.fail(times=1, method="POST", path="/v1/customers")
    async with StripeProvider(config(fake_stripe.url), max_network_retries=1) as provider:
        made = await provider.ensure_customer(ACME, None)
    assert posts(fake_stripe, "/v1/customers") == 2
    assert list(fake_stripe.customers) == [made]


async def test_an_unreachable_stripe_is_unavailable() -> None:
    async with StripeProvider(config("http://127.0.0.1:9"), max_network_retries=0) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.ensure_customer(ACME, None)


async def test_a_refused_request_is_rejected_with_stripes_message(provider: StripeProvider) -> None:
    with pytest.raises(ProviderRejected, match="No such customer: 'cus_missing'"):
        await provider.send_invoice("cus_missing", draft())


async def test_a_bad_key_is_rejected_without_showing_the_key(fake_stripe: FakeStripe) -> None:
    async with StripeProvider(config(fake_stripe.url, key="rk_wrong_key_1234")) as provider:
        with pytest.raises(ProviderRejected, match="Invalid API Key") as caught:
            await provider.ensure_customer(ACME, None)
    assert "rk_wrong_key_1234" not in str(caught.value)


async def test_a_closed_provider_refuses_calls(fake_stripe: FakeStripe) -> None:
    provider = StripeProvider(config(fake_stripe.url))
    await provider.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await provider.fetch_invoice("in_x")
    with pytest.raises(RuntimeError, match="closed"):
        await provider.ensure_customer(ACME, "cus_x")
    assert fake_stripe.requests == []


def test_a_missing_key_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="api_key"):
        StripeProvider(StripeConfig(enabled=True))


# --- customers -------------------------------------------------------------------------------------


async def test_a_deleted_customer_is_replaced(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    await provider.client.v1.customers.delete_async(customer)

    replaced = await provider.ensure_customer(ACME, customer)

    assert replaced != customer
    assert fake_stripe.customers[replaced]["metadata"] == {
        "hoodrun_org": "org_acme",
        "tax_id": "DE123456789",
    }
    assert fake_stripe.tax_ids[replaced] == [
        {"object": "tax_id", "type": "eu_vat", "value": "DE123456789"}
    ]


async def test_a_customer_whose_address_changed_is_updated(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    moved = replace(ACME, city="Hamburg")
    unchanged_posts = posts(fake_stripe, f"/v1/customers/{customer}")
    await provider.ensure_customer(ACME, customer)
    assert posts(fake_stripe, f"/v1/customers/{customer}") == unchanged_posts

    assert await provider.ensure_customer(moved, customer) == customer
    assert fake_stripe.customers[customer]["address"]["city"] == "Hamburg"


# --- payment, void, corrections --------------------------------------------------------------------


async def test_collect_payment_pays_once(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())

    paid = await provider.collect_payment(sent.provider_id)
    again = await provider.collect_payment(sent.provider_id)

    assert (paid.status, paid.amount_paid, paid.total) == (
        "paid",
        Decimal("63.61"),
        Decimal("63.61"),
    )
    assert again == paid
    assert posts(fake_stripe, "/v1/invoices/[^/]+/pay") == 1


async def test_an_invoice_the_customer_pays_from_is_read_not_charged(
    fake_stripe: FakeStripe,
) -> None:
    settings = config(fake_stripe.url).model_copy(update={"collection_method": "send_invoice"})
    async with StripeProvider(settings, max_network_retries=0) as sending:
        customer = await sending.ensure_customer(ACME, None)
        sent = await sending.send_invoice(customer, draft())
        [made] = fake_stripe.invoices_for("HR-2026-0001")
        assert (made["collection_method"], made["days_until_due"]) == ("send_invoice", 14)

        read = await sending.collect_payment(sent.provider_id)

    assert (read.status, read.amount_paid) == ("open", 0)
    assert posts(fake_stripe, "/v1/invoices/[^/]+/pay") == 0


async def test_a_declined_card_is_rejected_and_a_later_attempt_can_pay(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())
    fake_stripe.decline(customer)

    with pytest.raises(ProviderRejected, match="Your card was declined"):
        await provider.collect_payment(sent.provider_id)
    assert (await provider.fetch_invoice(sent.provider_id)).status == "open"

    fake_stripe.declining.clear()  # the customer updated their card
    assert (await provider.collect_payment(sent.provider_id)).status == "paid"


async def test_void_invoice(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())

    voided = await provider.void_invoice(sent.provider_id)
    again = await provider.void_invoice(sent.provider_id)

    assert voided.status == again.status == "void"
    assert (await provider.collect_payment(sent.provider_id)).status == "void"
    assert posts(fake_stripe, "/v1/invoices/[^/]+/void") == 1
    assert posts(fake_stripe, "/v1/invoices/[^/]+/pay") == 0


async def test_a_credit_note_on_an_open_invoice_lowers_what_is_due(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())

    note = await provider.credit_note(
        sent.provider_id, Decimal("10.00"), "usage double counted", key="cn-1"
    )
    again = await provider.credit_note(
        sent.provider_id, Decimal("10.00"), "usage double counted", key="cn-1"
    )

    assert again == note
    assert list(fake_stripe.credit_notes) == [note]
    made = fake_stripe.credit_notes[note]
    assert (made["amount"], made["memo"], made["type"]) == (
        1000,
        "usage double counted",
        "pre_payment",
    )
    assert made["metadata"] == {"hoodrun_key": "cn-1"}
    assert (await provider.fetch_invoice(sent.provider_id)).total == Decimal("53.61")


async def test_a_credit_note_on_a_paid_invoice_is_settled_out_of_band(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())
    await provider.collect_payment(sent.provider_id)

    note = await provider.credit_note(sent.provider_id, Decimal("5.00"), "goodwill", key="cn-2")

    made = fake_stripe.credit_notes[note]
    assert (made["type"], made["out_of_band_amount"]) == ("post_payment", 500)
    assert (await provider.fetch_invoice(sent.provider_id)).status == "paid"


async def test_refund_pays_back_part_of_a_paid_invoice_once(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())
    await provider.collect_payment(sent.provider_id)

    refund = await provider.refund(sent.provider_id, Decimal("5.00"), "outage credit", key="rf-1")
    again = await provider.refund(sent.provider_id, Decimal("5.00"), "outage credit", key="rf-1")

    assert again == refund
    [intent] = fake_stripe.payment_intents.values()
    made = fake_stripe.refunds[refund]
    assert (made["amount"], made["currency"], made["payment_intent"]) == (500, "eur", intent["id"])
    assert made["metadata"]["hoodrun_key"] == "rf-1"
    assert intent["amount_refunded"] == 500


async def test_an_unpaid_invoice_has_nothing_to_refund(
    provider: StripeProvider, customer: str
) -> None:
    sent = await provider.send_invoice(customer, draft())
    with pytest.raises(ProviderRejected, match="no payment"):
        await provider.refund(sent.provider_id, Decimal("1.00"), "x", key="rf-2")


async def test_fetch_invoice_sees_a_total_changed_behind_our_back(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())

    fake_stripe.adjust(sent.provider_id, 500)

    fetched = await provider.fetch_invoice(sent.provider_id)
    assert (fetched.status, fetched.total) == ("open", Decimal("68.61"))


# --- webhooks --------------------------------------------------------------------------------------


async def test_a_signed_invoice_event_is_parsed(
    provider: StripeProvider, customer: str, fake_stripe: FakeStripe
) -> None:
    sent = await provider.send_invoice(customer, draft())
    await provider.collect_payment(sent.provider_id)
    payload = fake_stripe.event("invoice.paid", sent.provider_id)

    event = parse_webhook(payload, sign_webhook(payload, SECRET), SECRET)

    assert event is not None
    assert (event.type, event.number) == ("invoice.paid", "HR-2026-0001")
    assert (event.invoice.provider_id, event.invoice.status) == (sent.provider_id, "paid")
    assert event.invoice.amount_paid == Decimal("63.61")


def test_a_bad_or_stale_signature_is_rejected() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid"}).encode()
    with pytest.raises(ProviderRejected, match="invalid signature"):
        parse_webhook(payload, sign_webhook(payload, "whsec_other"), SECRET)
    with pytest.raises(ProviderRejected, match="invalid signature"):
        parse_webhook(payload, sign_webhook(payload, SECRET, int(time.time()) - 3600), SECRET)
    with pytest.raises(ProviderRejected, match="invalid signature"):
        parse_webhook(payload + b" ", sign_webhook(payload, SECRET), SECRET)


def test_events_other_than_invoices_are_ignored_and_thin_ones_refused() -> None:
    body = {"id": "evt_2", "object": "event", "type": "customer.created", "data": {"object": {}}}
    payload = json.dumps(body).encode()
    assert parse_webhook(payload, sign_webhook(payload, SECRET), SECRET) is None

    body = {"id": "evt_3", "object": "event", "type": "invoice.paid", "data": {"object": {}}}
    payload = json.dumps(body).encode()
    with pytest.raises(ProviderRejected, match="no invoice"):
        parse_webhook(payload, sign_webhook(payload, SECRET), SECRET)
