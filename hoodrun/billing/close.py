"""Period close: per org, a frozen snapshot of a calendar month's usage and the lines it rates to.

``await PeriodCloser(store, analytics, config).close("2026-11")`` writes one ``closing_snapshots``
row per org with a contract in the month, once the month has ended (``PeriodNotEnded`` before).

What is counted
    Billable usage of [start, end) from the hourly rollups (``usage_hourly FINAL``), in one query
    for every org, kept by (chain, method); which calls count, and how, is in ``_close_usage``.
    Whether a call needed an archive node is not in the records, so ``archive`` multipliers never
    apply here. The plan's ``price.meter`` (requests or compute_units) picks the quantity rated. A
    plan pricing an event meter (``meters:``) is not rated here: its orgs are errors of the close,
    named in the result.

Contracts
    Every contract overlapping the month, for every org, in one query. One covering the month is
    rated by ``rate_period``. When the month splits in two parts (a plan change, or a contract
    that starts or ends inside it), ``prorate`` rates them, the usage split by hour: the rollups
    cannot split an hour, so an hour goes to the part its start falls in. A part outside any
    contract is priced at nothing; its usage is reported (``CloseResult.unbilled``), not billed,
    since usage before a customer signed does not fall under the terms it signed later. More than
    two parts is an error for the org (rating splits a period once). A contract's plan without a
    price rates to nothing; a plan no longer in the config is an error.

Orgs without a contract
    Not billed: there is no currency, country or agreed price to bill them under, and orgs on a
    free plan have no contract by design. Their usage is in ``CloseResult.unbilled`` with the org's
    plan (``orgs.plan``, else the default) and whether it has a price; a priced one is logged as a
    warning. The remedy is a contract (it may start in the past) and closing the period again for
    that org, which then writes its snapshot.

Late usage
    Usage that reaches the rollups after its month was closed is billed in the next month closed,
    never dropped and never twice. Closing P recounts the ``LATE_PERIODS`` months before it (those
    still within the hourly rollups' retention) with the same query; per org with a snapshot for
    such a month Q, what the recount finds beyond what was counted (Q's snapshot's ``usage`` plus
    the ``late_usage`` of Q already carried by later snapshots) is Q's late usage. It goes into P's
    snapshot as ``late_usage`` rows naming Q and is rated with P's usage, at the prices of P's
    (last) contract. An org with late usage and no contract in P is reported in ``unbilled`` (and
    found again by the next close while the month is within reach). A recount below what was
    billed (data lost since) is not credited here, that is a credit note's business: the close
    names it in ``warnings``.

Snapshots
    Inserted only, never updated (on PostgreSQL a trigger refuses UPDATE and DELETE), in batches,
    with one audit row (``billing.close``) for the whole close. Closing again is idempotent: an org
    that already has a snapshot for the month is skipped (two closes at once insert one each).
    ``content_hash`` is the SHA-256 of the snapshot's canonical JSON, which ``verify_snapshot``
    checks (``hoodrun.billing.snapshots``: the snapshot, its hash and the close's result).
    Tax is by the contract's country (``Config.taxes``), as rating does. Credits are not applied:
    the invoice spends them, so a snapshot's lines and totals are before credits (``credits`` 0).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import or_, select

from hoodrun.billing._close_usage import (
    USAGE_BY_HOUR,
    USAGE_BY_METHOD,
    _add,
    _batches,
    _Counts,
    _nothing,
    _outside_terms,
    _Part,
    _parts,
    _split,
    _unbilled,
    _unbilled_of,
    _usage_json,
    _weigh,
)
from hoodrun.billing.snapshots import (
    CloseResult,
    Snapshot,
    Unbilled,
    _line_json,
    snapshot_hash,
    verify_snapshot,
)
from hoodrun.config import Config
from hoodrun.metering.config import BUILTIN_METERS, PriceConfig
from hoodrun.metering.entitlements import method_kind, month_bounds
from hoodrun.metering.money import Money, total
from hoodrun.metering.rating import RatedPeriod, prorate, rate_period
from hoodrun.metering.store import Contract
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import closing_snapshots, contracts, orgs
from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "LATE_PERIODS",
    "USAGE_BY_HOUR",
    "USAGE_BY_METHOD",
    "CloseError",
    "CloseResult",
    "InvalidPeriod",
    "PeriodCloser",
    "PeriodNotEnded",
    "Snapshot",
    "Unbilled",
    "closable",
    "parse_period",
    "previous_period",
    "snapshot_hash",
    "verify_snapshot",
]

log = logging.getLogger("hoodrun.billing")

LATE_PERIODS = 2
"""How many months before the one closed are recounted for late usage."""

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")
_INSERT_BATCH = 500
_IN_BATCH = 1000
_YIELD_EVERY = 50  # orgs rated between two yields to the event loop

Progress = Callable[[int, int], None]


class CloseError(Exception):
    """The period cannot be closed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidPeriod(CloseError, ValueError):
    """A period is a calendar month written YYYY-MM, like 2026-11."""


class PeriodNotEnded(CloseError):
    """The period has not ended yet."""


class _OrgError(Exception):
    """An org's snapshot cannot be made; the message says why."""


# --- periods -------------------------------------------------------------------------------------


def parse_period(period: str) -> tuple[datetime, datetime]:
    """The UTC bounds [start, end) of the month ``period`` ("2026-11")."""
    match = _PERIOD.match(period)
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise InvalidPeriod(f"period {period!r}: a month written YYYY-MM, like 2026-11")
    return month_bounds(datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC))


def closable(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The bounds of ``period`` if it has ended at ``now``; ``PeriodNotEnded`` otherwise."""
    start, end = parse_period(period)
    if now < end:
        raise PeriodNotEnded(
            f"period {period} ends at {end.isoformat()}; it cannot be closed before "
            f"(now {now.astimezone(UTC).isoformat(timespec='seconds')})"
        )
    return start, end


def previous_period(period: str, months: int = 1) -> str:
    """The month ``months`` before ``period``."""
    start, _ = parse_period(period)
    index = start.year * 12 + start.month - 1 - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# --- the close -----------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PeriodCloser:
    """Closes calendar months into ``closing_snapshots`` (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        analytics: AnalyticsStore,
        config: Config,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._analytics = analytics
        self.config = config
        self._clock = clock

    async def close(
        self,
        period: str,
        *,
        orgs: Collection[str] | None = None,
        progress: Progress | None = None,
        actor: str = "cli",
    ) -> CloseResult:
        """Close ``period`` ("2026-11") for every org, or only ``orgs`` (ids).

        ``progress(done, total)`` is called as orgs are rated. ``PeriodNotEnded`` before the
        month's end; per-org problems are in the result's ``errors``, not raised.
        """
        now = self._clock()
        start, end = closable(period, now)
        wanted = None if orgs is None else set(orgs)
        earlier = self._late_periods(period, now)
        history, closed_now, earlier_rows, known = await self._business(
            period, start, end, earlier, wanted
        )
        usage = await self._usage(start, end)
        late, warnings = await self._late(earlier_rows, period)
        errors = {org: "no org with this id" for org in sorted((wanted or set()) - known)}
        considered = set(history) | set(usage) | set(late)
        if wanted is not None:  # orgs asked for are reported even without contract or usage
            considered = (considered & wanted) | (wanted & known)
        skipped = considered & closed_now
        todo = sorted(considered - closed_now)

        parts = {org: _parts(history.get(org, []), start, end) for org in todo}
        split = [org for org in todo if len(parts[org]) > 1]
        hourly = await self._hourly(start, end, split) if split else {}
        rows: list[dict[str, Any]] = []
        unbilled: list[Unbilled] = []
        no_contract: list[str] = []
        for done, org in enumerate(todo, start=1):
            if all(part.contract is None for part in parts[org]):
                no_contract.append(org)
                unbilled += _unbilled_of(org, period, usage.get(org), late.get(org, []))
            else:
                try:
                    row, outside = self._snapshot(
                        org, period, (start, end), parts[org], usage.get(org, {}),
                        hourly.get(org, {}), late.get(org, []), now,
                    )  # fmt: skip
                except (_OrgError, ValueError, LookupError, ArithmeticError) as exc:
                    errors[org] = str(exc) or type(exc).__name__
                else:
                    rows.append(row)
                    unbilled += outside
            if progress is not None:
                progress(done, len(todo))
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

        unbilled = await self._with_plans(unbilled)
        for item in unbilled:
            if item.priced:
                log.warning(
                    "billable usage of org %s in %s is not billed (%s): %d requests, %d compute "
                    "units",
                    item.org_id, item.period, item.reason, item.requests, item.compute_units,
                )  # fmt: skip
        for message in warnings:
            log.warning("%s", message)
        written, raced = await self._write(
            rows,
            period,
            now,
            actor,
            skipped=len(skipped),
            no_contract=len(no_contract),
            errors=len(errors),
        )
        return CloseResult(
            period=period,
            closed=tuple(Snapshot.from_row(row) for row in written),
            skipped=tuple(sorted(skipped | set(raced))),
            no_contract=tuple(no_contract),
            unbilled=tuple(unbilled),
            errors=errors,
            warnings=tuple(warnings),
        )

    async def snapshots(
        self, period: str | None = None, org_id: str | None = None
    ) -> list[Snapshot]:
        """The snapshots written, of one period and/or one org, by period then org."""
        stmt = select(closing_snapshots).order_by(
            closing_snapshots.c.period, closing_snapshots.c.org_id
        )
        if period is not None:
            stmt = stmt.where(closing_snapshots.c.period == period)
        if org_id is not None:
            stmt = stmt.where(closing_snapshots.c.org_id == org_id)
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Snapshot.from_row(dict(row)) for row in rows]

    async def snapshot(self, org_id: str, period: str) -> Snapshot | None:
        """The org's snapshot of ``period``, if it was closed."""
        found = await self.snapshots(period, org_id)
        return found[0] if found else None

    # --- reading ---------------------------------------------------------------------------------

    def _late_periods(self, period: str, now: datetime) -> list[str]:
        """The months recounted for late usage: those the hourly rollups still hold whole."""
        kept_since = now - timedelta(days=self.config.telemetry.retention.hourly_days)
        months = [previous_period(period, n) for n in range(1, LATE_PERIODS + 1)]
        return [month for month in months if parse_period(month)[0] >= kept_since]

    async def _business(
        self,
        period: str,
        start: datetime,
        end: datetime,
        earlier: Sequence[str],
        wanted: set[str] | None,
    ) -> tuple[dict[str, list[Contract]], set[str], list[Mapping[str, Any]], set[str]]:
        """Contracts overlapping the month, orgs closed already, earlier snapshots' usage, and
        which of ``wanted`` exist."""
        overlapping = (
            select(contracts)
            .where(contracts.c.starts_at < end)
            .where(or_(contracts.c.ends_at.is_(None), contracts.c.ends_at > start))
            .order_by(contracts.c.org_id, contracts.c.starts_at, contracts.c.created_at)
        )
        closed = select(closing_snapshots.c.org_id).where(closing_snapshots.c.period == period)
        before = select(
            closing_snapshots.c.org_id,
            closing_snapshots.c.period,
            closing_snapshots.c.usage,
            closing_snapshots.c.late_usage,
        ).where(closing_snapshots.c.period.in_(earlier))
        if wanted is not None:
            overlapping = overlapping.where(contracts.c.org_id.in_(wanted))
            closed = closed.where(closing_snapshots.c.org_id.in_(wanted))
            before = before.where(closing_snapshots.c.org_id.in_(wanted))
        history: dict[str, list[Contract]] = defaultdict(list)
        known: set[str] = set()
        async with self._store.connect() as conn:
            for row in (await conn.execute(overlapping)).mappings():
                history[row["org_id"]].append(Contract(**row))
            closed_now: set[str] = set((await conn.scalars(closed)).all())
            earlier_rows: list[Mapping[str, Any]] = []
            if earlier:
                earlier_rows += [dict(row) for row in (await conn.execute(before)).mappings()]
            if wanted:
                found = await conn.scalars(select(orgs.c.id).where(orgs.c.id.in_(wanted)))
                known = set(found.all())
        return dict(history), closed_now, earlier_rows, known

    async def _usage(self, start: datetime, end: datetime) -> dict[str, _Counts]:
        params = {"start": int(start.timestamp()), "end": int(end.timestamp())}
        usage: dict[str, _Counts] = defaultdict(dict)
        for row in await self._analytics.query(USAGE_BY_METHOD, params):
            key = (str(row["chain"]), str(row["method"]))
            usage[str(row["org_id"])][key] = [int(row["requests"]), int(row["compute_units"])]
        return dict(usage)

    async def _hourly(
        self, start: datetime, end: datetime, org_ids: Sequence[str]
    ) -> dict[str, dict[int, _Counts]]:
        """Per org and hour (epoch seconds) for orgs whose month splits in parts."""
        by_org: dict[str, dict[int, _Counts]] = defaultdict(lambda: defaultdict(dict))
        for batch in _batches(org_ids, _IN_BATCH):
            params = {
                "start": int(start.timestamp()),
                "end": int(end.timestamp()),
                "orgs": ",".join(batch),
            }
            for row in await self._analytics.query(USAGE_BY_HOUR, params):
                key = (str(row["chain"]), str(row["method"]))
                counts = [int(row["requests"]), int(row["compute_units"])]
                by_org[str(row["org_id"])][int(row["hour"])][key] = counts
        return by_org

    async def _late(
        self, earlier_rows: Sequence[Mapping[str, Any]], period: str
    ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        """Late usage per org (recount minus what was counted), and recounts below it."""
        counted: dict[tuple[str, str], _Counts] = defaultdict(dict)  # (org, month) -> counts
        snapshotted: set[tuple[str, str]] = set()
        for row in earlier_rows:
            snapshotted.add((row["org_id"], row["period"]))
            for item in row["usage"]:
                _add(counted[(row["org_id"], row["period"])], item)
            for item in row["late_usage"]:
                _add(counted[(row["org_id"], item["period"])], item)
        late: dict[str, list[dict[str, Any]]] = {}
        warnings: list[str] = []
        for month in sorted({month for _, month in snapshotted}):
            recount = await self._usage(*parse_period(month))
            for org in sorted(org for org, month_of in snapshotted if month_of == month):
                billed, found = counted.get((org, month), {}), recount.get(org, {})
                below = []
                for key in sorted(set(billed) | set(found)):
                    was, counts = billed.get(key, [0, 0]), found.get(key, [0, 0])
                    if counts[0] < was[0] or counts[1] < was[1]:
                        below.append(f"{key[0]} {key[1]}")
                    extra = [max(counts[0] - was[0], 0), max(counts[1] - was[1], 0)]
                    if extra[0] or extra[1]:
                        late.setdefault(org, []).append(
                            {"period": month, "chain": key[0], "kind": method_kind(key[1]),
                             "method": key[1], "requests": extra[0], "compute_units": extra[1]}
                        )  # fmt: skip
                if below:
                    warnings.append(
                        f"org {org}, {month}: the recount finds less than was billed for "
                        f"{', '.join(below)}; not credited by the close of {period}"
                    )
        return late, warnings

    async def _with_plans(self, unbilled: list[Unbilled]) -> list[Unbilled]:
        """``unbilled`` with each org's plan, and whether that plan is priced."""
        ids = sorted({item.org_id for item in unbilled})
        plans: dict[str, str | None] = {}
        if not ids:
            return unbilled
        async with self._store.connect() as conn:
            for batch in _batches(ids, _IN_BATCH):
                stmt = select(orgs.c.id, orgs.c.plan).where(orgs.c.id.in_(batch))
                for org_id, plan in (await conn.execute(stmt)).all():
                    plans[org_id] = plan or self.config.default_plan
        out = []
        for item in unbilled:
            plan = plans.get(item.org_id)
            configured = self.config.plan(plan) if plan is not None else None
            priced = configured is not None and configured.price is not None
            out.append(
                Unbilled(
                    item.org_id, item.period, item.requests, item.compute_units, item.reason,
                    plan, priced,
                )
            )  # fmt: skip
        return out

    # --- rating ----------------------------------------------------------------------------------

    def _snapshot(
        self,
        org: str,
        period: str,
        bounds: tuple[datetime, datetime],
        parts: list[_Part],
        usage: _Counts,
        hourly: Mapping[int, _Counts],
        late: list[dict[str, Any]],
        now: datetime,
    ) -> tuple[dict[str, Any], list[Unbilled]]:
        """The snapshot row of one org, and its usage outside any contract."""
        if len(parts) > 2:
            shown = ", ".join(
                f"{p.contract.plan if p.contract else 'no contract'} from {p.start.isoformat()}"
                for p in parts
            )
            raise _OrgError(
                f"the period splits in {len(parts)} parts ({shown}); rating splits a period in "
                "two at most, so it is not closed"
            )
        per_part = [usage] if len(parts) == 1 else _split(parts, hourly)
        contracted = [part for part in parts if part.contract is not None]
        last = cast(Contract, contracted[-1].contract)
        outside = [
            _unbilled(org, period, counts, f"outside its contracts ({p.start:%Y-%m-%d %H:%M} to "
                      f"{p.end:%Y-%m-%d %H:%M} UTC)")
            for p, counts in zip(parts, per_part, strict=True)
            if p.contract is None and counts
        ]  # fmt: skip
        prices = [self._price(p.contract) if p.contract else None for p in parts]
        weighed = []
        for part, price, counts in zip(parts, prices, per_part, strict=True):
            if price is None:  # outside any contract: reported above, not billed
                weighed.append(Decimal(0))
                continue
            billed = counts
            if part is contracted[-1]:  # late usage is rated at the prices of the last contract
                billed = {key: list(value) for key, value in counts.items()}
                for item in late:
                    _add(billed, item)
            weighed.append(_weigh(billed, price))
        rated = self._rate(parts, prices, weighed, bounds, last)
        rule = self.config.taxes.get(last.country) if last.country else None
        usage_json = [
            {"contract": part.contract.id if part.contract else None, **item}
            for part, counts in zip(parts, per_part, strict=True)
            for item in _usage_json(counts)
        ]
        row: dict[str, Any] = {
            "id": new_id("snap"),
            "org_id": org,
            "period": period,
            "period_start": bounds[0],
            "period_end": bounds[1],
            "contract_id": last.id,
            "plan": last.plan,
            "currency": rated.currency,
            "usage": usage_json,
            "late_usage": late,
            "lines": [
                _line_json(line, rule.name if rule else None, rated.reverse_charge)
                for line in rated.lines
            ],
            "subtotal": rated.subtotal.amount,
            "tax": rated.tax.amount,
            "credits": Decimal(0),
            "total": rated.gross.amount,
            "closed_at": now,
        }
        row["content_hash"] = snapshot_hash(row)
        return row, outside

    def _price(self, contract: Contract) -> PriceConfig:
        plan = self.config.plan(contract.plan)
        if plan is None:
            raise _OrgError(
                f"contract {contract.id} is on plan {contract.plan!r}, which the config no "
                "longer has"
            )
        if plan.price is None:
            return _nothing(contract.currency)
        if plan.price.meter not in BUILTIN_METERS:
            raise _OrgError(
                f"plan {plan.name!r} prices the event meter {plan.price.meter!r}; the period "
                "close rates requests and compute_units only"
            )
        return plan.price

    def _rate(
        self,
        parts: list[_Part],
        prices: list[PriceConfig | None],
        weighed: list[Decimal],
        bounds: tuple[datetime, datetime],
        last: Contract,
    ) -> RatedPeriod:
        taxes = self.config.taxes
        if len(parts) == 1:
            price = cast(PriceConfig, prices[0])
            return rate_period(
                price, weighed[0], period_start=bounds[0], period_end=bounds[1],
                contract=last.terms, taxes=taxes,
            )  # fmt: skip
        # A part outside any contract is priced at nothing, under the other part's tax terms.
        terms = [p.contract.terms if p.contract else _outside_terms(last) for p in parts]
        priced = [price or _nothing(last.currency) for price in prices]
        return prorate(
            priced[0], priced[1], parts[1].start, bounds[0], bounds[1], weighed[0], weighed[1],
            contract=terms[0], new_contract=terms[1], taxes=taxes,
        )  # fmt: skip

    # --- writing ---------------------------------------------------------------------------------

    async def _write(
        self,
        rows: list[dict[str, Any]],
        period: str,
        now: datetime,
        actor: str,
        *,
        skipped: int,
        no_contract: int,
        errors: int,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Insert the rows and the close's audit row in one transaction. An org closed by another
        close meanwhile keeps its snapshot; returns the rows written and those orgs."""
        written: list[dict[str, Any]] = []
        async with self._store.transaction() as conn:
            for batch in _batches(rows, _INSERT_BATCH):
                stmt = (
                    self._store.insert(closing_snapshots)
                    .on_conflict_do_nothing(index_elements=["org_id", "period"])
                    .returning(closing_snapshots.c.id)
                )
                ids = set((await conn.execute(stmt, list(batch))).scalars().all())
                written += [row for row in batch if row["id"] in ids]
            raced = sorted({row["org_id"] for row in rows} - {row["org_id"] for row in written})
            totals: dict[str, list[Money]] = defaultdict(list)
            for row in written:
                totals[row["currency"]].append(Money(row["total"], row["currency"]))
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="billing.close",
                target_type="period",
                target_id=period,
                details={
                    "closed": len(written),
                    "skipped": skipped + len(raced),
                    "no_contract": no_contract,
                    "errors": errors,
                    "late_usage": sum(1 for row in written if row["late_usage"]),
                    "totals": {
                        cur: str(total(amounts, cur).rounded().amount)
                        for cur, amounts in sorted(totals.items())
                    },
                },
            )
        return written, raced
