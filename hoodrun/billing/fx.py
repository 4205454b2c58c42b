"""Exchange rates for invoices issued in another currency than the price (TL in Turkey).

Sources (``billing.fx.source``):

- ``tcmb``, the Central Bank of the Republic of Turkey: one bulletin per business day, published
  around 15:30 Istanbul time at ``{tcmb_url}/today.xml`` and kept at
  ``{tcmb_url}/{YYYYMM}/{DDMMYYYY}.xml``. The rate is ``ForexBuying / Unit`` in TRY (KDV Law
  art. 26: the TCMB *döviz alış* rate, unless the parties agreed on another). No bulletin is
  published on weekends and holidays: the archive answers 404 for those days.
- ``ecb``, the European Central Bank's reference rates: units of each currency per 1 EUR, from
  one history file (``ecb_url``, the last 90 days by default).

Rates are kept in ``fx_rates`` as published, one row per (source, currency, day): for ``tcmb``
1 ``currency`` = ``rate`` TRY; for ``ecb`` 1 EUR = ``rate`` ``currency`` (the ECB's own figure,
kept exact rather than inverted). The ``quote`` column names the other side of the pair (TRY or
EUR).

Which bulletin an invoice uses: the latest one dated on or before its issue date. A bulletin
dated D is the one published on D, so an invoice issued on a weekend or holiday takes the last
business day's, as the tax practice does. The day's own bulletin only exists from 15:30 Istanbul
time: a quote of the current day taken earlier gets the previous bulletin, a later one the day's.
That is why the invoice stores the quote it was issued with (``FxQuote``: pair, rate, source and
bulletin date) rather than asking again.

Rounding: a quote's rate has 6 decimals (half-even), the scale of ``invoices.fx_rate``, so that
``original amount × stored rate``, rounded to the invoice currency's minor unit, is the amount
on the invoice. A TCMB rate against TRY (``ForexBuying / Unit``) already fits exactly; cross
rates (ECB's USD→TRY is TRY per EUR ÷ USD per EUR) are computed with 28 significant digits and
then rounded once. A pair whose rate 6 decimals cannot carry within 0.01% (1 IDR in TRY) is
refused rather than silently misstated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from types import TracebackType
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from sqlalchemy import select

from hoodrun.billing.config import FxConfig
from hoodrun.config import Config
from hoodrun.metering.money import Money, round_line
from hoodrun.store import Store
from hoodrun.store.tables import fx_rates

__all__ = [
    "FxError",
    "FxQuote",
    "FxRates",
    "RateUnavailable",
    "fetch_job",
    "parse_ecb",
    "parse_tcmb",
]

log = logging.getLogger("hoodrun.billing")

Source = Literal["tcmb", "ecb"]

# The currency each source quotes every other one against.
PIVOTS: dict[str, str] = {"tcmb": "TRY", "ecb": "EUR"}

# Turkey has kept UTC+3 all year since 2016; a fixed offset needs no tz database.
_ISTANBUL = timezone(timedelta(hours=3), "TRT")
_RATE_SCALE = Decimal("0.000001")  # invoices.fx_rate and fx_rates.rate: NUMERIC(20, 6)
_MAX_ROUNDING = Decimal("0.0001")  # relative error the 6 decimals may add to a cross rate
_PRECISION = 28
_MONEY_PRECISION = 60
_RECHECK = timedelta(minutes=10)  # before asking again for a bulletin not yet published
_FILL_DAYS = 7  # how far back the scheduled job looks for bulletins it missed
_INSERT_BATCH = 500  # rows per INSERT: SQLite allows 32766 bound parameters
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_ECB_NS = "{http://www.ecb.int/vocabulary/2002-08-01/eurofxref}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FxError(Exception):
    """Exchange rates could not be fetched or read."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class RateUnavailable(FxError):
    """No published rate for that currency on that day or the days before it."""


@dataclass(frozen=True, slots=True)
class FxQuote:
    """1 ``base`` = ``rate`` ``quote``, from ``source``'s bulletin dated ``day``.

    What an invoice issued in ``quote`` for a price in ``base`` records: ``day`` may be before
    the issue date (weekend, holiday) and says which bulletin was used.
    """

    base: str
    quote: str
    rate: Decimal
    source: str
    day: date

    def apply(self, amount: Money) -> Money:
        """``amount`` (in ``base``) × ``rate``, rounded half-even to ``quote``'s minor unit."""
        if amount.currency != self.base:
            raise FxError(f"this quote converts {self.base}, not {amount.currency}")
        with localcontext() as ctx:
            ctx.prec = _MONEY_PRECISION
            exact = amount.amount * self.rate
        return Money(round_line(exact, self.quote), self.quote)


# --- parsing -------------------------------------------------------------------------------------


def _parse_xml(xml: bytes, what: str) -> Element:
    try:
        root: Element = fromstring(xml, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise FxError(f"{what} is not readable XML: {exc}") from None
    return root


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise FxError(f"{what}: {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise FxError(f"{what}: {text!r} is not a positive number")
    return value


def _tcmb_day(root: Element) -> date:
    # Date="11/27/2026" on current bulletins; some carry only Tarih="27.11.2026".
    text = root.get("Date")
    layout = "%m/%d/%Y"
    if not text:
        text, layout = root.get("Tarih"), "%d.%m.%Y"
    if not text:
        raise FxError("TCMB bulletin: Tarih_Date has neither a Date nor a Tarih attribute")
    try:
        return datetime.strptime(text.strip(), layout).replace(tzinfo=UTC).date()
    except ValueError:
        raise FxError(f"TCMB bulletin: date {text!r} is not in the form {layout}") from None


def parse_tcmb(xml: bytes) -> tuple[date, dict[str, Decimal]]:
    """A TCMB bulletin's date and its rates: TRY per 1 unit of each currency.

    The rate is ``ForexBuying / Unit`` (JPY is quoted per 100). Currencies with no
    ``ForexBuying`` (the SDR) are left out. The XML declares its own encoding (UTF-8 or
    ISO-8859-9), so it is parsed from bytes.
    """
    root = _parse_xml(xml, "TCMB bulletin")
    if root.tag != "Tarih_Date":
        raise FxError(f"TCMB bulletin: the root element is <{root.tag}>, not <Tarih_Date>")
    day = _tcmb_day(root)
    rates: dict[str, Decimal] = {}
    for currency in root.iter("Currency"):
        code = (currency.get("CurrencyCode") or currency.get("Kod") or "").strip()
        buying = (currency.findtext("ForexBuying") or "").strip()
        if not buying:
            continue
        what = f"TCMB bulletin of {day}, {code or 'a currency without a code'}"
        if not _CURRENCY.match(code):
            raise FxError(f"{what}: the currency code is not 3 capital letters")
        unit = _decimal(currency.findtext("Unit") or "", f"{what}, Unit")
        if unit != unit.to_integral_value():
            raise FxError(f"{what}, Unit: {unit} is not a whole number")
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            rates[code] = _decimal(buying, f"{what}, ForexBuying") / unit
    return day, rates


def parse_ecb(xml: bytes) -> dict[date, dict[str, Decimal]]:
    """The ECB's reference rates by day: units of each currency per 1 EUR.

    Reads the daily file and the history files alike (``gesmes:Envelope`` holding
    ``<Cube time="...">`` elements of ``<Cube currency="..." rate="..."/>``).
    """
    root = _parse_xml(xml, "ECB reference rates")
    days: dict[date, dict[str, Decimal]] = {}
    for cube in root.iter(f"{_ECB_NS}Cube"):
        stamp = cube.get("time")
        if stamp is None:
            continue
        try:
            day = date.fromisoformat(stamp.strip())
        except ValueError:
            raise FxError(f"ECB reference rates: time {stamp!r} is not YYYY-MM-DD") from None
        rates = days.setdefault(day, {})
        for entry in cube.iter(f"{_ECB_NS}Cube"):
            code, rate = entry.get("currency"), entry.get("rate")
            if code is None or rate is None:
                continue
            what = f"ECB reference rates of {day}, {code}"
            if not _CURRENCY.match(code):
                raise FxError(f"{what}: the currency code is not 3 capital letters")
            rates[code] = _decimal(rate, what)
    if not days:
        raise FxError("ECB reference rates: no <Cube time=...> element in the file")
    return days


# --- the rates -----------------------------------------------------------------------------------


def _code(currency: str) -> str:
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise FxError(f"currency {currency!r}: an ISO 4217 code in capitals, like USD")
    return currency


def _days_back(start: date, earliest: date) -> Iterator[date]:
    day = start
    while day >= earliest:
        yield day
        day -= timedelta(days=1)


class FxRates:
    """Fetches bulletins into ``fx_rates`` and quotes rates from there.

    An async context manager (or call ``aclose``). The HTTP client is created here unless one is
    given; a given client is the caller's to close. Quotes fetch the archive bulletins they miss,
    so an invoice can be issued for a day the scheduled job did not cover.
    """

    def __init__(
        self,
        store: Store,
        config: FxConfig,
        *,
        clock: Callable[[], datetime] = _utc_now,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self._clock = clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=config.timeout, follow_redirects=True)
        self._closed = False
        # When a fetch last found nothing for a day (404, or absent from the ECB's file). A
        # past day is not asked again; the current day's bulletin may still come, so it is
        # asked again after _RECHECK (a run of invoices must not ask once per invoice).
        self._missing: dict[tuple[str, date], datetime] = {}

    @property
    def source(self) -> Source:
        return self.config.source

    async def __aenter__(self) -> FxRates:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    def url(self, day: date | None = None) -> str:
        """Where the configured source publishes the rates of ``day`` (None: the latest)."""
        if self.source == "ecb":
            return self.config.ecb_url
        base = self.config.tcmb_url.rstrip("/")
        if day is None:
            return f"{base}/today.xml"
        return f"{base}/{day:%Y%m}/{day:%d%m%Y}.xml"

    def today(self) -> date:
        """The current day in Istanbul, the last day a bulletin can be dated."""
        now = self._clock()
        if now.tzinfo is None:
            raise FxError("the clock must return an aware datetime (UTC)")
        return now.astimezone(_ISTANBUL).date()

    async def fetch(self, day: date | None = None) -> int:
        """Fetch the bulletin of ``day`` and store its rates; the number of rates stored.

        ``None`` fetches ``today.xml`` for TCMB (the latest bulletin, stored under its own
        date). ECB always fetches ``ecb_url`` and stores every day in it (point ``ecb_url`` at
        ``eurofxref-hist.xml`` for days older than 90). A 404 means nothing was published that
        day: 0, not an error. Network errors and other answers raise ``FxError`` (the job
        retries). Fetching the same day again overwrites its rows.
        """
        if self._closed:
            raise FxError("these FxRates are closed; create new ones")
        url = self.url(day)
        body = await self._get(url)
        if body is None:
            return 0
        if self.source == "tcmb":
            published, rates = parse_tcmb(body)
            if day is not None and published != day:
                log.warning(
                    "fx: %s holds the bulletin of %s, stored under that date", url, published
                )
            days = {published: rates}
        else:
            days = parse_ecb(body)
        stored = await self._save(days)
        log.info("fx: stored %d %s rates from %s", stored, self.source, url)
        return stored

    async def _get(self, url: str) -> bytes | None:
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise FxError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code != httpx.codes.OK:
            raise FxError(
                f"{url} answered HTTP {response.status_code}; will be tried again"
                if response.status_code >= 500
                else f"{url} answered HTTP {response.status_code}: check billing.fx's URLs"
            )
        return response.content

    async def _save(self, days: dict[date, dict[str, Decimal]]) -> int:
        now = self._clock()
        pivot = PIVOTS[self.source]
        rows = [
            {
                "source": self.source,
                "currency": currency,
                "day": day,
                "quote": pivot,
                # Exact for every Unit up to 100; a larger one could add a 7th decimal.
                "rate": rate.quantize(_RATE_SCALE, rounding=ROUND_HALF_EVEN),
                "fetched_at": now,
            }
            for day, rates in days.items()
            for currency, rate in rates.items()
            if currency != pivot
        ]
        async with self._store.transaction() as conn:
            for start in range(0, len(rows), _INSERT_BATCH):
                stmt = self._store.insert(fx_rates).values(rows[start : start + _INSERT_BATCH])
                stmt = stmt.on_conflict_do_update(
                    index_elements=[fx_rates.c.source, fx_rates.c.currency, fx_rates.c.day],
                    set_={
                        "quote": stmt.excluded.quote,
                        "rate": stmt.excluded.rate,
                        "fetched_at": stmt.excluded.fetched_at,
                    },
                )
                await conn.execute(stmt)
        return len(rows)

    async def stored(self, first: date, last: date) -> dict[date, dict[str, Decimal]]:
        """The stored rates of the configured source from ``first`` to ``last``, by day."""
        stmt = select(fx_rates.c.day, fx_rates.c.currency, fx_rates.c.rate).where(
            fx_rates.c.source == self.source, fx_rates.c.day.between(first, last)
        )
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        days: dict[date, dict[str, Decimal]] = {}
        for day, currency, rate in rows:
            days.setdefault(day, {})[currency] = rate
        return days

    async def quote(self, base: str, quote: str, on: date) -> FxQuote:
        """The rate of ``base`` in ``quote`` from the latest bulletin dated on or before ``on``.

        Looks back at most ``max_fallback_days`` days before ``on``, fetching the bulletins the
        store does not have; raises ``RateUnavailable`` when none of those days has both
        currencies, and ``FxError`` when a bulletin cannot be fetched (trying again may help).
        """
        base, quote = _code(base), _code(quote)
        if base == quote:
            return FxQuote(base, quote, Decimal(1), self.source, on)
        needed = {base, quote} - {PIVOTS[self.source]}
        earliest = on - timedelta(days=self.config.max_fallback_days)
        days = await self.stored(earliest, on)
        fetched_history = False  # the ECB's file covers every day: one download is enough
        for day in _days_back(on, earliest):
            if day not in days and self._may_fetch(day) and not fetched_history:
                if self.source == "tcmb":
                    await self.fetch(day)
                    days.update(await self.stored(day, day))
                    self._note_missing(day, day, days)
                else:
                    await self.fetch()
                    fetched_history = True
                    days.update(await self.stored(earliest, on))
                    self._note_missing(earliest, on, days)
            rates = days.get(day, {})
            if needed <= rates.keys():
                return self._quote(base, quote, day, rates)
        raise RateUnavailable(
            f"no {self.source} rate for {' and '.join(sorted(needed))} on {on} or the "
            f"{self.config.max_fallback_days} days before (searched back to {earliest}): "
            f"check that {self.source} publishes it, or raise billing.fx.max_fallback_days"
        )

    def _may_fetch(self, day: date) -> bool:
        today = self.today()
        if day > today:
            return False
        missed = self._missing.get((self.source, day))
        return missed is None or (day == today and self._clock() - missed >= _RECHECK)

    def _note_missing(self, first: date, last: date, days: dict[date, dict[str, Decimal]]) -> None:
        now = self._clock()
        for day in _days_back(last, first):
            if day not in days:
                self._missing[(self.source, day)] = now

    def _quote(self, base: str, quote: str, day: date, rates: dict[str, Decimal]) -> FxQuote:
        pivot = PIVOTS[self.source]
        value = {**rates, pivot: Decimal(1)}
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            # tcmb: pivot per unit, so base→quote = v(base) / v(quote);
            # ecb: units per pivot, so base→quote = v(quote) / v(base).
            if self.source == "tcmb":
                exact = value[base] / value[quote]
            else:
                exact = value[quote] / value[base]
            rate = exact.quantize(_RATE_SCALE, rounding=ROUND_HALF_EVEN)
            if rate == 0 or abs(rate - exact) / exact > _MAX_ROUNDING:
                raise FxError(
                    f"1 {base} = {exact} {quote} on {day}: too small for the 6 decimals an "
                    f"invoice stores; price in another currency or invoice in {base}"
                )
        return FxQuote(base, quote, rate, self.source, day)

    async def convert(self, amount: Money, to: str, on: date) -> tuple[Money, FxQuote]:
        """``amount`` in ``to`` at the rate of ``on`` (see ``quote``), rounded half-even to the
        minor unit of ``to``; with the quote, for the invoice to record."""
        rate = await self.quote(amount.currency, to, on)
        return rate.apply(amount), rate


async def fetch_job(
    config: Config,
    store: Store,
    *,
    clock: Callable[[], datetime] = _utc_now,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """The scheduled ``fx-fetch`` job: the latest rates, then the recent days the store misses.

    Runs after TCMB's 15:30 bulletin (``billing.schedule.fx_fetch_hour``). Filling covers the
    days a failed or skipped run left out, so quotes seldom need to fetch. Safe to run again:
    rows are upserted. ``FxError`` propagates for the queue to retry.
    """
    async with FxRates(store, config.billing.fx, clock=clock, client=client) as rates:
        stored = await rates.fetch()
        filled: list[str] = []
        today = rates.today()
        first = today - timedelta(days=_FILL_DAYS)
        if rates.source == "tcmb":
            have = await rates.stored(first, today)
            for day in _days_back(today, first):
                # TCMB publishes nothing on weekends: no need to hear it answer 404.
                if day not in have and day.weekday() < 5 and await rates.fetch(day):
                    filled.append(day.isoformat())
        have = await rates.stored(first, today)
        latest = max(have, default=None)
    return {
        "source": rates.source,
        "stored": stored,
        "latest": None if latest is None else latest.isoformat(),
        "filled": sorted(filled),
    }
