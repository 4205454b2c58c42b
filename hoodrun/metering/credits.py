"""Credit pools: prepaid and promotional grants an org spends before it pays.

A grant has an amount, a currency, a ``granted_at`` and, optionally, an ``expires_at`` (usable
while ``granted_at <= at < expires_at``). ``apply_credits`` spends grants in a fixed order:

1. promotional grants before prepaid ones (a promotion is a gift; prepaid money is the
   customer's own and is kept longest),
2. then the one that expires soonest (grants without an expiry last),
3. then the oldest, and last the id, so that the order is total.

Expired and not-yet-granted grants are skipped. A balance never goes below zero: what the
grants cannot cover is returned as the remaining amount. Everything here is pure; the business
database's version is ``hoodrun.metering.store.CreditBook``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, NamedTuple

from hoodrun.metering.money import CurrencyMismatch, Money, MoneyError, total

__all__ = [
    "GRANT_KINDS",
    "AppliedCredit",
    "CreditApplication",
    "CreditGrant",
    "LowBalance",
    "apply_credits",
    "balance",
    "consumption_order",
    "low_balance",
]

GrantKind = Literal["prepaid", "promotional"]
GRANT_KINDS: tuple[GrantKind, ...] = ("prepaid", "promotional")


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Credit granted to an org: ``amount`` at first, ``remaining`` after what was spent."""

    id: str
    org_id: str
    kind: GrantKind
    amount: Money
    remaining: Money
    granted_at: datetime
    expires_at: datetime | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRANT_KINDS:
            raise ValueError(f"grant kind {self.kind!r}: use prepaid or promotional")
        if self.remaining.currency != self.amount.currency:
            raise CurrencyMismatch(f"grant {self.id}: amount and remaining in different currencies")
        if self.amount.amount < 0 or self.remaining.amount < 0:
            raise MoneyError(f"grant {self.id}: amounts must not be negative")
        if self.remaining > self.amount:
            raise MoneyError(f"grant {self.id}: remaining exceeds the amount granted")
        for name, when in (("granted_at", self.granted_at), ("expires_at", self.expires_at)):
            if when is not None and when.utcoffset() is None:
                raise ValueError(f"grant {self.id}: {name} must be timezone-aware")
        if self.expires_at is not None and self.expires_at <= self.granted_at:
            raise ValueError(f"grant {self.id}: expires_at must be after granted_at")

    @property
    def currency(self) -> str:
        return self.amount.currency

    def usable(self, at: datetime) -> bool:
        """Granted, not expired (``at < expires_at``) and not spent."""
        if at < self.granted_at or (self.expires_at is not None and at >= self.expires_at):
            return False
        return self.remaining.amount > 0


@dataclass(frozen=True, slots=True)
class AppliedCredit:
    """What one grant paid of an amount."""

    grant_id: str
    kind: GrantKind
    amount: Money


class CreditApplication(NamedTuple):
    """The result of ``apply_credits``: ``applied, remaining, balances = apply_credits(...)``."""

    applied: tuple[AppliedCredit, ...]
    """One entry per grant that paid something, in the order they were spent."""
    remaining: Money
    """What the grants did not cover."""
    balances: tuple[CreditGrant, ...]
    """Every grant given, in the order given, with its new ``remaining``."""


@dataclass(frozen=True, slots=True)
class LowBalance:
    """An org's credit balance fell below its threshold."""

    org_id: str
    balance: Money
    threshold: Money


def _order_key(grant: CreditGrant) -> tuple[int, int, datetime, datetime, str]:
    no_expiry = grant.expires_at is None
    return (
        0 if grant.kind == "promotional" else 1,
        1 if no_expiry else 0,
        grant.expires_at if grant.expires_at is not None else grant.granted_at,
        grant.granted_at,
        grant.id,
    )


def _check_currency(grants: Iterable[CreditGrant], currency: str) -> None:
    for grant in grants:
        if grant.currency != currency:
            raise CurrencyMismatch(
                f"grant {grant.id} is in {grant.currency}, the amount in {currency}"
            )


def consumption_order(grants: Iterable[CreditGrant], at: datetime) -> list[CreditGrant]:
    """The grants usable at ``at``, in the order they are spent."""
    return sorted((g for g in grants if g.usable(at)), key=_order_key)


def apply_credits(grants: Sequence[CreditGrant], amount: Money, at: datetime) -> CreditApplication:
    """Pay ``amount`` from ``grants`` (all in its currency) in the order of ``consumption_order``.

    Each grant pays ``min(its remaining, what is left)``: the applied amounts plus the remaining
    amount equal ``amount`` exactly, and no grant's remaining goes below zero.
    """
    if amount.amount < 0:
        raise MoneyError(f"cannot apply credits to a negative amount ({amount})")
    _check_currency(grants, amount.currency)
    left = amount
    applied: list[AppliedCredit] = []
    spent: dict[str, Money] = {}
    for grant in consumption_order(grants, at):
        if left.is_zero():
            break
        take = min(grant.remaining, left)
        applied.append(AppliedCredit(grant.id, grant.kind, take))
        spent[grant.id] = take
        left = left - take
    balances = tuple(
        replace(g, remaining=g.remaining - spent[g.id]) if g.id in spent else g for g in grants
    )
    return CreditApplication(tuple(applied), left, balances)


def balance(grants: Iterable[CreditGrant], at: datetime, currency: str | None = None) -> Money:
    """What the usable grants still hold at ``at``.

    ``currency`` defaults to the grants' own; with no grants it must be given.
    """
    grants = list(grants)
    if currency is None:
        if not grants:
            raise ValueError("no grants: name the currency of the balance")
        currency = grants[0].currency
    _check_currency(grants, currency)
    return total((g.remaining for g in grants if g.usable(at)), currency)


def low_balance(
    org_id: str, before: Money, after: Money, threshold: Money | None
) -> LowBalance | None:
    """The signal when a balance crosses below ``threshold`` (from at or above it to below).

    A balance already below the threshold does not signal again, so one spend sends one event.
    """
    if threshold is None:
        return None
    if before >= threshold > after:
        return LowBalance(org_id, after, threshold)
    return None
