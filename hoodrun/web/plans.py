"""A plan change as the portal offers it: what the month costs if the plan stays and if it
changes now (``hoodrun.metering.rating.preview_change``), and the change itself.

The month's usage so far comes from the usage reports; what is to come is assumed at the same
pace. A plan without a price costs nothing; a price on an event meter (``meters:``) cannot be
previewed from the gateway's usage, nor can two prices in different currencies be compared.

The change goes through the contract book (ending the contract in force now and starting one on
the new plan, so the month is prorated when it is billed; an org without a contract gets one from
now) and the key service (the org's keys take the plan at their next request), each writing its
audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

from hoodrun.config import Config, PlanConfig
from hoodrun.keys.service import KeyService
from hoodrun.metering.config import PriceConfig, TierConfig
from hoodrun.metering.entitlements import METERS, month_bounds
from hoodrun.metering.money import MoneyError
from hoodrun.metering.rating import ChangePreview, ContractTerms, preview_change, weigh
from hoodrun.metering.store import Contract, ContractBook
from hoodrun.web.usage_data import MonthUsage

__all__ = ["CurrentPlan", "PlanPreview", "change_plan", "current_plan", "preview"]


@dataclass(frozen=True, slots=True)
class CurrentPlan:
    name: str
    plan: PlanConfig
    contract: Contract | None


@dataclass(frozen=True, slots=True)
class PlanPreview:
    """The month with the plan kept and changed at ``change_at``; ``problem`` when there is no
    preview to show (and why)."""

    current: str
    target: str
    change_at: datetime
    period_start: datetime
    period_end: datetime
    result: ChangePreview | None
    problem: str | None = None


def _plan(config: Config, name: str | None) -> PlanConfig:
    found = config.plan(name) if name is not None else None
    return found or config.plan(config.default_plan) or config.plans[0]


async def current_plan(
    config: Config, keys: KeyService, contracts: ContractBook | None, org_id: str, now: datetime
) -> CurrentPlan:
    """The plan of the contract in force, else the org's own, else the default plan."""
    contract = await contracts.in_force(org_id, now) if contracts is not None else None
    name = contract.plan if contract is not None else await keys.org_plan(org_id)
    plan = _plan(config, name)
    return CurrentPlan(plan.name, plan, contract)


def _free(currency: str) -> PriceConfig:
    """A price that charges nothing (a plan without one)."""
    return PriceConfig(type="METERED", currency=currency, tiers=(TierConfig(),))


def _scaled(
    rows: list[tuple[str, str, Decimal]], factor: Decimal
) -> list[tuple[str, str, Decimal]]:
    with localcontext() as ctx:
        ctx.prec = 60
        return [(chain, kind, quantity * factor) for chain, kind, quantity in rows]


def preview(
    config: Config,
    current: CurrentPlan,
    target: PlanConfig,
    usage: MonthUsage,
    now: datetime,
) -> PlanPreview:
    """What changing to ``target`` at ``now`` does to the month's charges (before credits)."""
    start, end = month_bounds(now)

    def answer(result: ChangePreview | None, problem: str | None = None) -> PlanPreview:
        return PlanPreview(current.name, target.name, now, start, end, result, problem)

    old, new = current.plan.price, target.price
    currency = (
        current.contract.currency
        if current.contract is not None
        else (old or new or _free("USD")).currency
    )
    old = old or _free(new.currency if new else currency)
    new = new or _free(old.currency)
    for price in (old, new):
        if price.meter not in METERS:
            return answer(None, f"{target.name} or {current.name} is priced by events "
                          f"({price.meter}): its cost cannot be previewed here.")  # fmt: skip
    if old.currency != new.currency:
        return answer(None, f"{current.name} is priced in {old.currency} and {target.name} in "
                      f"{new.currency}: a change of currency goes through support.")  # fmt: skip
    terms = (
        current.contract.terms
        if current.contract is not None
        else ContractTerms(currency=old.currency, plan=current.name)
    )
    new_terms = replace(terms, currency=new.currency, plan=target.name)
    so_far = usage.rating_rows(old.meter)

    def run(
        price: PriceConfig, after: list[tuple[str, str, Decimal]] | None = None
    ) -> ChangePreview:
        return preview_change(
            old,
            price,
            change_at=now,
            period_start=start,
            period_end=end,
            usage_so_far=so_far,
            contract=terms,
            new_contract=new_terms if price is new else None,
            taxes=config.taxes,
            expected_usage_after=after,
        )

    try:
        if old.meter == new.meter:
            result = run(new)
        else:  # the usage to come is counted by each price's own meter
            stay = run(old).stay
            elapsed = (now - start) / timedelta(microseconds=1)
            rest = (end - now) / timedelta(microseconds=1)
            pace = Decimal(rest) / Decimal(elapsed) if elapsed else Decimal(0)
            after = _scaled(usage.rating_rows(new.meter), pace)
            change = run(new, after).change
            result = ChangePreview(stay, change, change.gross - stay.gross, weigh(after, new))
    except (MoneyError, ValueError) as exc:
        return answer(None, f"No preview: {exc}")
    return answer(result)


async def change_plan(
    keys: KeyService,
    contracts: ContractBook,
    org_id: str,
    target: str,
    *,
    now: datetime,
    actor: str,
) -> Contract:
    """End the contract in force at ``now`` and start one on ``target`` (or start the org's
    first contract), then give the org's keys the plan."""
    contract = await contracts.in_force(org_id, now)
    if contract is None:
        made = await contracts.create(org_id, target, starts_at=now, actor=actor)
    else:
        made = await contracts.change_plan(org_id, target, change_at=now, actor=actor)
    await keys.change_org_plan(org_id, target, actor=actor)
    return made
