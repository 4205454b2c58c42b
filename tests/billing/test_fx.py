"""Exchange rates: the TCMB and ECB formats, fetching into the store, quotes with their fallback
to earlier bulletins, conversion and the scheduled job.

The sources are served from the fixtures in ``fixtures/fx`` by a local aiohttp server laid out
like the real sites; see that folder's README for the calendar they describe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import func, select

from hoodrun.billing.config import BillingConfig, FxConfig
from hoodrun.billing.fx import (
    FxError,
    FxQuote,
    FxRates,
    RateUnavailable,
    fetch_job,
    parse_ecb,
    parse_tcmb,
)
from hoodrun.config import Config
from hoodrun.metering.money import Money
from hoodrun.store import Store
from hoodrun.store.tables import fx_rates
from tests._stores import FakeClock

FIXTURES = Path(__file__).parent / "fixtures" / "fx"
TCMB = FIXTURES / "tcmb"
ECB_FILE = FIXTURES / "eurofxref-hist-90d.xml"
TODAY_FILE = "27112026.xml"
# Sunday 29 Nov 2026, after the day's hour for the job: today.xml holds Friday's bulletin.
SUNDAY = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
# Currencies in every TCMB fixture with a ForexBuying (XDR has none).
TCMB_CODES = {
    "USD", "AUD", "DKK", "EUR", "GBP", "CHF", "SEK", "CAD", "KWD", "NOK", "SAR", "JPY", "RUB",
    "CNY", "AZN", "AED",
}  # fmt: skip


@dataclass
class FxServer:
    """TCMB at ``/kurlar``, the ECB at ``/ecb/...``; ``status`` forces every answer's code."""

    base: str = ""
    requests: list[str] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)
    status: int | None = None

    @property
    def tcmb_url(self) -> str:
        return f"{self.base}/kurlar"

    @property
    def ecb_url(self) -> str:
        return f"{self.base}/ecb/eurofxref-hist-90d.xml"

    def archive_requests(self) -> list[str]:
        return [path.rsplit("/", 1)[-1] for path in self.requests if "/kurlar/2026" in path]


@pytest.fixture
async def fx_server() -> AsyncIterator[FxServer]:
    server = FxServer()

    def answer(path: Path | None) -> web.Response:
        if server.status is not None:
            return web.Response(status=server.status, text="Service Unavailable")
        if path is None or not path.exists() or path.name in server.hidden:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=path.read_bytes(), content_type="text/xml")

    async def today(request: web.Request) -> web.Response:
        server.requests.append(request.path)
        return answer(TCMB / TODAY_FILE)

    async def archive(request: web.Request) -> web.Response:
        server.requests.append(request.path)
        month, name = request.match_info["month"], request.match_info["name"]
        # The file DDMMYYYY.xml lives under YYYYMM only.
        matches = len(name) == 12 and name[4:8] + name[2:4] == month
        return answer(TCMB / name if matches else None)

    async def ecb(request: web.Request) -> web.Response:
        server.requests.append(request.path)
        return answer(ECB_FILE)

    app = web.Application()
    app.router.add_get("/kurlar/today.xml", today)
    app.router.add_get("/kurlar/{month}/{name}", archive)
    app.router.add_get("/ecb/eurofxref-hist-90d.xml", ecb)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    server.base = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
def sunday(clock: FakeClock) -> FakeClock:
    clock.now = SUNDAY
    return clock


def tcmb_config(server: FxServer, **extra: object) -> FxConfig:
    return FxConfig.model_validate({"tcmb_url": server.tcmb_url, **extra})


def ecb_config(server: FxServer, **extra: object) -> FxConfig:
    return FxConfig.model_validate({"source": "ecb", "ecb_url": server.ecb_url, **extra})


async def count_rows(store: Store) -> int:
    async with store.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(fx_rates))).scalar_one())


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(TCMB.glob("*.xml")), ids=lambda p: p.name)
def test_parse_tcmb_reads_each_bulletin(path: Path) -> None:
    day, rates = parse_tcmb(path.read_bytes())

    assert day == datetime.strptime(path.stem, "%d%m%Y").replace(tzinfo=UTC).date()
    assert set(rates) == TCMB_CODES  # XDR has no ForexBuying
    assert all(isinstance(rate, Decimal) and rate > 0 for rate in rates.values())
    # JPY is quoted per 100 yen: a yen is worth well under a lira, a dollar well over 40.
    assert rates["JPY"] < 1 < 40 < rates["USD"]


def test_parse_tcmb_divides_by_unit_and_keeps_empty_banknotes() -> None:
    day, rates = parse_tcmb((TCMB / "27112026.xml").read_bytes())

    assert day == date(2026, 11, 27)
    assert rates["USD"] == Decimal("50.3957")
    assert rates["JPY"] == Decimal("0.324683")  # <ForexBuying>32.4683</ForexBuying> / 100
    assert rates["RUB"] == Decimal("0.6196")  # its banknote fields are empty


def test_parse_tcmb_reads_iso_8859_9_with_only_tarih() -> None:
    raw = (TCMB / "28102026.xml").read_bytes()
    assert b'encoding="ISO-8859-9"' in raw
    assert "İNGİLİZ STERLİNİ".encode("iso-8859-9") in raw  # not UTF-8: İ is one byte, 0xDD
    assert b" Date=" not in raw

    day, rates = parse_tcmb(raw)

    assert day == date(2026, 10, 28)
    assert rates["GBP"] == Decimal("63.6838")
    assert rates["JPY"] == Decimal("0.323858")


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (b"<html><body>Sayfa bulunamadi", "not readable XML"),
        (b"<Kurlar/>", "not <Tarih_Date>"),
        (b'<Tarih_Date Date="2026-11-27"/>', "not in the form %m/%d/%Y"),
        (
            b'<Tarih_Date Date="11/27/2026"><Currency CurrencyCode="USD"><Unit>1</Unit>'
            b"<ForexBuying>50,3957</ForexBuying></Currency></Tarih_Date>",
            "'50,3957' is not a number",
        ),
        (
            b'<Tarih_Date Date="11/27/2026"><Currency CurrencyCode="JPY"><Unit/>'
            b"<ForexBuying>32.4683</ForexBuying></Currency></Tarih_Date>",
            "JPY, Unit",
        ),
    ],
)
def test_parse_tcmb_refuses_what_it_cannot_read(xml: bytes, message: str) -> None:
    with pytest.raises(FxError, match=message):
        parse_tcmb(xml)


def test_parse_tcmb_of_a_bulletin_without_rates_is_empty() -> None:
    assert parse_tcmb(b'<Tarih_Date Tarih="27.11.2026"/>') == (date(2026, 11, 27), {})


def test_parse_tcmb_refuses_entity_expansion() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<Tarih_Date Date="11/27/2026">&b;</Tarih_Date>'
    )
    with pytest.raises(FxError, match="not readable XML"):
        parse_tcmb(bomb)


def test_parse_ecb_reads_every_day() -> None:
    days = parse_ecb(ECB_FILE.read_bytes())

    assert sorted(days) == [
        date(2026, 11, d) for d in (16, 17, 18, 19, 20, 23, 24, 25, 26, 27)
    ]  # no weekend
    assert days[date(2026, 11, 27)]["USD"] == Decimal("1.1638")
    assert days[date(2026, 11, 27)]["TRY"] == Decimal("58.6610")
    assert days[date(2026, 11, 27)]["JPY"] == Decimal("177.98")
    assert len(days[date(2026, 11, 27)]) == 29
    assert "EUR" not in days[date(2026, 11, 27)]


def test_parse_ecb_refuses_a_file_without_days() -> None:
    with pytest.raises(FxError, match="no <Cube time"):
        parse_ecb(b"<gesmes:Envelope xmlns:gesmes='http://www.gesmes.org/xml/2002-08-01'/>")


# --- fetching ------------------------------------------------------------------------------------


async def test_fetch_stores_the_bulletin_of_a_day(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        stored = await rates.fetch(date(2026, 11, 20))

        assert stored == len(TCMB_CODES)
        assert fx_server.requests == ["/kurlar/202611/20112026.xml"]
        async with store.connect() as conn:
            rows = (await conn.execute(select(fx_rates))).mappings().all()
        by_code = {row["currency"]: row for row in rows}
        assert set(by_code) == TCMB_CODES
        jpy = by_code["JPY"]
        assert (jpy["source"], jpy["quote"], jpy["day"]) == ("tcmb", "TRY", date(2026, 11, 20))
        assert jpy["rate"] == Decimal("0.324519")
        assert jpy["fetched_at"] == SUNDAY


async def test_fetch_today_stores_under_the_bulletin_date(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        assert await rates.fetch() == len(TCMB_CODES)
        assert fx_server.requests == ["/kurlar/today.xml"]
        stored = await rates.stored(date(2026, 11, 1), date(2026, 11, 30))
    assert list(stored) == [date(2026, 11, 27)]  # a Sunday serves Friday's bulletin
    assert stored[date(2026, 11, 27)]["USD"] == Decimal("50.3957")


async def test_fetch_twice_keeps_one_row_per_rate(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        await rates.fetch(date(2026, 11, 27))
        sunday.advance(timedelta(hours=1))
        assert await rates.fetch(date(2026, 11, 27)) == len(TCMB_CODES)
        await rates.fetch()  # today.xml: the same bulletin again

    assert await count_rows(store) == len(TCMB_CODES)
    async with store.connect() as conn:
        fetched = set((await conn.execute(select(fx_rates.c.fetched_at))).scalars())
    assert fetched == {SUNDAY + timedelta(hours=1)}


async def test_fetch_a_day_without_bulletin_stores_nothing(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        assert await rates.fetch(date(2026, 11, 21)) == 0  # a Saturday: 404
    assert await count_rows(store) == 0


async def test_fetch_a_server_error_raises(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    fx_server.status = 500
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        with pytest.raises(FxError, match=r"/kurlar/202611/27112026\.xml answered HTTP 500"):
            await rates.fetch(date(2026, 11, 27))
        with pytest.raises(FxError, match="HTTP 500"):
            await rates.quote("USD", "TRY", date(2026, 11, 27))
    assert await count_rows(store) == 0


async def test_fetch_an_unreachable_server_raises(store: Store, sunday: FakeClock) -> None:
    config = FxConfig(tcmb_url="http://127.0.0.1:1/kurlar", timeout=2)
    async with FxRates(store, config, clock=sunday) as rates:
        with pytest.raises(FxError, match=r"cannot fetch http://127\.0\.0\.1:1/kurlar/today\.xml"):
            await rates.fetch()


async def test_closed_rates_refuse_to_fetch(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    rates = FxRates(store, tcmb_config(fx_server), clock=sunday)
    await rates.aclose()
    with pytest.raises(FxError, match="closed"):
        await rates.fetch()
    assert fx_server.requests == []


# --- quotes (TCMB) -------------------------------------------------------------------------------


async def test_quote_on_a_saturday_uses_friday(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        quote = await rates.quote("USD", "TRY", date(2026, 11, 21))

    assert quote == FxQuote("USD", "TRY", Decimal("50.1234"), "tcmb", date(2026, 11, 20))
    assert fx_server.archive_requests() == ["21112026.xml", "20112026.xml"]


async def test_quote_uses_the_store_before_the_network(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        await rates.fetch(date(2026, 11, 23))
        fx_server.requests.clear()
        quote = await rates.quote("EUR", "TRY", date(2026, 11, 23))
    assert (quote.day, quote.rate) == (date(2026, 11, 23), Decimal("58.3052"))
    assert fx_server.requests == []


async def test_quote_over_a_holiday_goes_further_back(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    on = date(2026, 11, 1)  # Sunday after Republic Day (Thu) and a bridge day (Fri)
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        quote = await rates.quote("GBP", "TRY", on)
        assert fx_server.archive_requests() == [
            "01112026.xml", "31102026.xml", "30102026.xml", "29102026.xml", "28102026.xml",
        ]  # fmt: skip
        # Asked again, the store has the bulletin and the gaps are known: no request.
        again = await rates.quote("GBP", "TRY", on)
    assert quote == again == FxQuote("GBP", "TRY", Decimal("63.6838"), "tcmb", date(2026, 10, 28))
    assert len(fx_server.requests) == 5


async def test_quote_beyond_max_fallback_days_is_unavailable(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    config = tcmb_config(fx_server, max_fallback_days=3)
    async with FxRates(store, config, clock=sunday) as rates:
        with pytest.raises(RateUnavailable) as caught:
            await rates.quote("USD", "TRY", date(2026, 11, 1))
    message = str(caught.value)
    assert "no tcmb rate for USD on 2026-11-01 or the 3 days before" in message
    assert "searched back to 2026-10-29" in message
    assert "billing.fx.max_fallback_days" in message
    assert "28102026.xml" not in fx_server.archive_requests()


async def test_quote_of_a_currency_tcmb_does_not_publish(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server, max_fallback_days=2), clock=sunday) as rates:
        with pytest.raises(RateUnavailable, match="no tcmb rate for XDR on 2026-11-27"):
            await rates.quote("XDR", "TRY", date(2026, 11, 27))


async def test_quote_never_asks_for_a_day_not_yet_come(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        quote = await rates.quote("USD", "TRY", date(2026, 11, 30))
    assert quote.day == date(2026, 11, 27)
    assert "30112026.xml" not in fx_server.archive_requests()


async def test_quote_of_the_current_day_takes_its_bulletin_once_published(
    store: Store, fx_server: FxServer, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)  # 10:00 in Istanbul
    fx_server.hidden.add("27112026.xml")
    friday = date(2026, 11, 27)
    async with FxRates(store, tcmb_config(fx_server), clock=clock) as rates:
        morning = await rates.quote("USD", "TRY", friday)
        clock.advance(timedelta(minutes=5))
        assert await rates.quote("USD", "TRY", friday) == morning
        # Within minutes of the first miss, the day's bulletin is not asked for again.
        assert fx_server.archive_requests() == ["27112026.xml", "26112026.xml"]
        clock.now = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)  # 16:00, after the 15:30 bulletin
        fx_server.hidden.clear()
        afternoon = await rates.quote("USD", "TRY", friday)
    assert morning.day == date(2026, 11, 26)
    assert (afternoon.day, afternoon.rate) == (friday, Decimal("50.3957"))


async def test_quote_between_two_foreign_currencies_crosses_through_try(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        eur_usd = await rates.quote("EUR", "USD", date(2026, 11, 27))
        try_usd = await rates.quote("TRY", "USD", date(2026, 11, 27))
        same = await rates.quote("USD", "USD", date(2026, 11, 28))
    six = Decimal("0.000001")
    assert eur_usd.rate == (Decimal("58.6492") / Decimal("50.3957")).quantize(six)
    assert try_usd.rate == (1 / Decimal("50.3957")).quantize(six) == Decimal("0.019843")
    assert same == FxQuote("USD", "USD", Decimal(1), "tcmb", date(2026, 11, 28))


async def test_quote_refuses_a_bad_currency_code(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        with pytest.raises(FxError, match="'usd': an ISO 4217 code in capitals"):
            await rates.quote("usd", "TRY", date(2026, 11, 27))


# --- quotes (ECB) --------------------------------------------------------------------------------


async def test_ecb_cross_rate_usd_to_try(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, ecb_config(fx_server), clock=sunday) as rates:
        quote = await rates.quote("USD", "TRY", date(2026, 11, 28))  # Saturday
        eur = await rates.quote("EUR", "TRY", date(2026, 11, 26))

    # TRY per EUR ÷ USD per EUR, rounded once to 6 decimals.
    exact = Decimal("58.6610") / Decimal("1.1638")
    assert quote == FxQuote(
        "USD",
        "TRY",
        exact.quantize(Decimal("0.000001"), ROUND_HALF_EVEN),
        "ecb",
        date(2026, 11, 27),
    )
    assert quote.rate == Decimal("50.404709")
    assert (eur.day, eur.rate) == (date(2026, 11, 26), Decimal("58.5749"))
    assert fx_server.requests == ["/ecb/eurofxref-hist-90d.xml"]  # one download for both


async def test_ecb_fetch_stores_the_whole_history(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, ecb_config(fx_server), clock=sunday) as rates:
        assert await rates.fetch() == 10 * 29
        assert await rates.fetch() == 10 * 29
    assert await count_rows(store) == 10 * 29
    async with store.connect() as conn:
        row = (
            (await conn.execute(select(fx_rates).where(fx_rates.c.currency == "TRY")))
            .mappings()
            .first()
        )
    assert row is not None and (row["source"], row["quote"]) == ("ecb", "EUR")


async def test_ecb_refuses_a_rate_too_small_for_six_decimals(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, ecb_config(fx_server), clock=sunday) as rates:
        with pytest.raises(FxError, match=r"1 IDR = 0\.0000512\d* EUR on 2026-11-27: too small"):
            await rates.quote("IDR", "EUR", date(2026, 11, 27))


# --- conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("50.00", "2519.78"),  # 2519.785: a tie, to the even 8
        ("150.00", "7559.36"),  # 7559.355: a tie, to the even 6
        ("1234.56", "62216.52"),  # 62216.515392
        ("0.01", "0.50"),  # 0.503957
    ],
)
async def test_convert_rounds_half_even_to_the_minor_unit(
    store: Store, fx_server: FxServer, sunday: FakeClock, amount: str, expected: str
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        converted, quote = await rates.convert(Money.of(amount, "USD"), "TRY", date(2026, 11, 28))
    assert quote == FxQuote("USD", "TRY", Decimal("50.3957"), "tcmb", date(2026, 11, 27))
    assert converted == Money.of(expected, "TRY")
    assert str(converted.amount) == expected


async def test_convert_to_a_currency_without_decimals(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    async with FxRates(store, tcmb_config(fx_server), clock=sunday) as rates:
        converted, quote = await rates.convert(Money.of("1000", "TRY"), "JPY", date(2026, 11, 27))
    assert quote.rate == (1 / Decimal("0.324683")).quantize(Decimal("0.000001"))
    assert converted == Money.of("3080", "JPY")  # 1000 × 3.079927 = 3079.927, to whole yen


def test_a_stored_quote_converts_only_its_base() -> None:
    quote = FxQuote("USD", "TRY", Decimal("2.5"), "tcmb", date(2026, 11, 27))
    assert quote.apply(Money.of("0.01", "USD")) == Money.of("0.02", "TRY")  # 0.025
    assert quote.apply(Money.of("0.03", "USD")) == Money.of("0.08", "TRY")  # 0.075
    with pytest.raises(FxError, match="converts USD, not EUR"):
        quote.apply(Money.of("1", "EUR"))


# --- the scheduled job ---------------------------------------------------------------------------


async def test_fetch_job_stores_today_and_fills_missed_days(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    config = Config(billing=BillingConfig(fx=tcmb_config(fx_server)))
    async with FxRates(store, config.billing.fx, clock=sunday) as rates:
        await rates.fetch(date(2026, 11, 24))  # already there: not fetched again
    fx_server.requests.clear()

    summary = await fetch_job(config, store, clock=sunday)

    assert summary == {
        "source": "tcmb",
        "stored": len(TCMB_CODES),
        "latest": "2026-11-27",
        "filled": ["2026-11-23", "2026-11-25", "2026-11-26"],
    }
    assert fx_server.requests[0] == "/kurlar/today.xml"
    assert "24112026.xml" not in fx_server.archive_requests()
    assert not any(
        name.startswith(("28", "29", "21", "22")) for name in fx_server.archive_requests()
    )
    assert await count_rows(store) == 5 * len(TCMB_CODES)


async def test_fetch_job_fails_for_the_queue_to_retry(
    store: Store, fx_server: FxServer, sunday: FakeClock
) -> None:
    fx_server.status = 503
    config = Config(billing=BillingConfig(fx=tcmb_config(fx_server)))
    with pytest.raises(FxError, match="HTTP 503; will be tried again"):
        await fetch_job(config, store, clock=sunday)
