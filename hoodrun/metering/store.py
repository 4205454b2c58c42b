"""Contracts and credit pools in the business database (SQLite or PostgreSQL).

``ContractBook``: an org's contract says which plan it is on and on what terms (currency,
country, tax id, discount, minimum). At most one is in force at a time: the newest with
``starts_at <= at < ends_at`` (or no end). Changing plan ends the current contract at
``change_at`` and starts a new one with the same terms, so history stays for proration.

``CreditBook``: grants of prepaid and promotional credit and their spending. Spending locks the
org's grants (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transactions already hold
the database's write lock) and writes one ledger row per grant touched, in one transaction, so
two spenders at once never spend a credit twice. Every grant and spend is in ``credit_ledger``:
per grant, the ledger sums to what remains.

Both take a clock (``Callable[[], datetime]``, aware UTC) so tests decide what "now" is; every
change writes its audit row in the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import RowMapping, Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.ledger import CREDITS_CONSUMED, CREDITS_GRANTED, Ledger
from hoodrun.config import Config
from hoodrun.metering.credits import (
    GRANT_KINDS,
    AppliedCredit,
    CreditGrant,
    GrantKind,
    LowBalance,
    apply_credits,
    balance,
    low_balance,
)
from hoodrun.metering.money import CurrencyMismatch, Money, MoneyError, total
from hoodrun.metering.rating import ContractTerms
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import contracts, credit_grants, credit_ledger, orgs
from hoodrun.webhooks import WebhookBook

__all__ = [
    "Consumption",
    "Contract",
    "ContractBook",
    "ContractError",
    "ContractOverlap",
    "CreditBook",
    "LedgerEntry",
    "NoContractInForce",
    "OrgNotFound",
    "UnknownPlan",
]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ContractError(Exception):
    """The contract cannot be made or changed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class OrgNotFound(ContractError):
    """No such org."""


class UnknownPlan(ContractError):
    """No such plan in the config."""


class NoContractInForce(ContractError):
    """The org has no contract in force at that time."""


class ContractOverlap(ContractError):
    """Another contract of the org is in force during that time."""


@dataclass(frozen=True, slots=True)
class Contract:
    """A row of ``contracts``: a plan and its terms from ``starts_at`` until ``ends_at``."""

    id: str
    org_id: str
    plan: str
    currency: str
    country: str | None
    tax_id: str | None
    business: bool
    discount_percent: Decimal
    minimum_override: Decimal | None
    starts_at: datetime
    ends_at: datetime | None
    created_at: datetime

    def in_force(self, at: datetime) -> bool:
        return self.starts_at <= at and (self.ends_at is None or at < self.ends_at)

    @property
    def terms(self) -> ContractTerms:
        """What rating needs of the contract."""
        return ContractTerms(
            currency=self.currency,
            plan=self.plan,
            country=self.country,
            tax_id=self.tax_id,
            business=self.business,
            discount_percent=self.discount_percent,
            minimum_override=self.minimum_override,
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A row of ``credit_ledger``: + when granted, - when spent."""

    id: int
    grant_id: str
    at: datetime
    amount: Money
    reason: str
    reference: str | None


@dataclass(frozen=True, slots=True)
class Consumption:
    """What ``CreditBook.consume`` spent."""

    applied: tuple[AppliedCredit, ...]
    remaining: Money
    """The part of the amount the credits did not cover (to be paid otherwise)."""
    balance_before: Money
    balance_after: Money
    low_balance: LowBalance | None

    @property
    def spent(self) -> Money:
        return self.balance_before - self.balance_after


# --- contracts -----------------------------------------------------------------------------------


class ContractBook:
    """An org's contracts: create one, change its plan, find the one in force, read history."""

    def __init__(
        self, store: Store, config: Config, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self._store = store
        self.config = config
        self._clock = clock

    async def create(
        self,
        org_id: str,
        plan: str,
        *,
        currency: str | None = None,
        country: str | None = None,
        tax_id: str | None = None,
        business: bool = False,
        discount_percent: Decimal = Decimal(0),
        minimum_override: Decimal | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
        actor: str = "cli",
    ) -> Contract:
        """A new contract; refused if another of the org's contracts overlaps its time."""
        now = self._clock()
        start = starts_at if starts_at is not None else now
        if ends_at is not None and ends_at <= start:
            raise ContractError("a contract ends after it starts")
        terms = ContractTerms(
            currency=self._currency(plan, currency),
            plan=plan,
            country=country,
            tax_id=tax_id,
            business=business,
            discount_percent=discount_percent,
            minimum_override=minimum_override,
        )
        async with self._store.transaction() as conn:
            existing = await self._locked_history(conn, org_id)
            for other in existing:
                if _overlaps(other, start, ends_at):
                    raise ContractOverlap(
                        f"contract {other.id} of org {org_id} overlaps; change its plan instead"
                    )
            contract = await self._insert(conn, org_id, terms, start, ends_at, now)
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="contract.create",
                target_type="org",
                target_id=org_id,
                details=_audit_details(contract),
            )
        return contract

    async def change_plan(
        self,
        org_id: str,
        plan: str,
        *,
        change_at: datetime | None = None,
        actor: str = "cli",
    ) -> Contract:
        """End the contract in force at ``change_at`` (default: now) and start one on ``plan``.

        The new contract keeps the old one's terms (and its end, if it had one); its currency is
        the new plan's.
        """
        now = self._clock()
        at = change_at if change_at is not None else now
        async with self._store.transaction() as conn:
            history = await self._locked_history(conn, org_id)
            current = _in_force(history, at)
            if current is None:
                raise NoContractInForce(f"org {org_id} has no contract in force at {at}")
            if any(other.starts_at > at for other in history):
                raise ContractOverlap(f"org {org_id} has a contract starting after {at}")
            old = current.terms
            terms = ContractTerms(
                currency=self._currency(plan, None),
                plan=plan,
                country=old.country,
                tax_id=old.tax_id,
                business=old.business,
                discount_percent=old.discount_percent,
                minimum_override=old.minimum_override,
            )
            await conn.execute(
                update(contracts).where(contracts.c.id == current.id).values(ends_at=at)
            )
            contract = await self._insert(conn, org_id, terms, at, current.ends_at, now)
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="contract.change",
                target_type="org",
                target_id=org_id,
                details={
                    "ended": current.id,
                    "from_plan": current.plan,
                    **_audit_details(contract),
                },
            )
        return contract

    async def in_force(self, org_id: str, at: datetime | None = None) -> Contract | None:
        """The org's contract in force at ``at`` (default: now), if any."""
        return _in_force(await self.history(org_id), at if at is not None else self._clock())

    async def history(self, org_id: str) -> list[Contract]:
        """Every contract of the org, the earliest first."""
        async with self._store.connect() as conn:
            rows = (await conn.execute(_history_query(org_id))).mappings().all()
        return [_contract(row) for row in rows]

    def _currency(self, plan: str, currency: str | None) -> str:
        configured = self.config.plan(plan)
        if configured is None:
            raise UnknownPlan(f"no plan {plan!r} in the config")
        priced = configured.price.currency if configured.price is not None else None
        if currency is not None and priced is not None and currency != priced:
            raise CurrencyMismatch(f"plan {plan!r} is priced in {priced}, not {currency}")
        return currency or priced or "USD"

    async def _locked_history(self, conn: AsyncConnection, org_id: str) -> list[Contract]:
        # Locking the org row serializes contract changes of one org on PostgreSQL (SQLite's
        # write transaction already holds the database's write lock).
        found = await conn.scalar(select(orgs.c.id).where(orgs.c.id == org_id).with_for_update())
        if found is None:
            raise OrgNotFound(f"no org {org_id!r}")
        rows = (await conn.execute(_history_query(org_id))).mappings().all()
        return [_contract(row) for row in rows]

    async def _insert(
        self,
        conn: AsyncConnection,
        org_id: str,
        terms: ContractTerms,
        starts_at: datetime,
        ends_at: datetime | None,
        now: datetime,
    ) -> Contract:
        contract = Contract(
            id=new_id("ctr"),
            org_id=org_id,
            plan=terms.plan,
            currency=terms.currency,
            country=terms.country,
            tax_id=terms.tax_id,
            business=terms.business,
            discount_percent=terms.discount_percent,
            minimum_override=terms.minimum_override,
            starts_at=starts_at,
            ends_at=ends_at,
            created_at=now,
        )
        # The dataclass's fields are the table's columns.
        await conn.execute(insert(contracts).values(**dataclasses.asdict(contract)))
        return contract


def _history_query(org_id: str) -> Select[Any]:
    return (
        select(contracts)
        .where(contracts.c.org_id == org_id)
        .order_by(contracts.c.starts_at, contracts.c.created_at, contracts.c.id)
    )


def _contract(row: RowMapping) -> Contract:
    return Contract(**row)


def _in_force(history: Sequence[Contract], at: datetime) -> Contract | None:
    # The newest that covers ``at``: history is in start order, so the last match.
    found = [c for c in history if c.in_force(at)]
    return found[-1] if found else None


def _overlaps(contract: Contract, start: datetime, end: datetime | None) -> bool:
    if contract.ends_at is not None and contract.ends_at <= contract.starts_at:
        return False  # replaced the moment it started: never in force
    ends_before = contract.ends_at is not None and contract.ends_at <= start
    starts_after = end is not None and contract.starts_at >= end
    return not (ends_before or starts_after)


def _audit_details(contract: Contract) -> dict[str, Any]:
    return {
        "contract": contract.id,
        "plan": contract.plan,
        "currency": contract.currency,
        "country": contract.country,
        "business": contract.business,
        "discount_percent": str(contract.discount_percent),
        "minimum_override": (
            None if contract.minimum_override is None else str(contract.minimum_override)
        ),
        "starts_at": contract.starts_at.isoformat(),
        "ends_at": None if contract.ends_at is None else contract.ends_at.isoformat(),
    }


# --- credits -------------------------------------------------------------------------------------


class CreditBook:
    """Credit grants of orgs: grant, read balances and grants, spend, read the ledger.

    Each grant and each spend also appends its entry to the money ledger
    (``hoodrun.billing.ledger``) in the same transaction: the ledger holds every money event.
    A spend that takes the balance below ``low_balance_below`` emits the ``credits.low``
    webhook in its transaction.
    """

    def __init__(self, store: Store, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._clock = clock
        self._ledger = Ledger(store, clock)
        self._webhooks = WebhookBook(store, clock=clock)

    async def grant(
        self,
        org_id: str,
        kind: GrantKind,
        amount: Money,
        *,
        expires_at: datetime | None = None,
        note: str = "",
        actor: str = "cli",
    ) -> CreditGrant:
        """Grant ``amount`` of credit now; it can be spent until ``expires_at`` (if given)."""
        if kind not in GRANT_KINDS:
            raise ValueError(f"grant kind {kind!r}: use prepaid or promotional")
        if amount.amount <= 0:
            raise MoneyError(f"a grant must be positive, not {amount}")
        if not amount.is_rounded():
            raise MoneyError(f"{amount} is finer than the smallest unit of {amount.currency}")
        now = self._clock()
        grant = CreditGrant(
            id=new_id("cg"),
            org_id=org_id,
            kind=kind,
            amount=amount,
            remaining=amount,
            granted_at=now,
            expires_at=expires_at,
            note=note[:256],
        )
        async with self._store.transaction() as conn:
            if await conn.scalar(select(orgs.c.id).where(orgs.c.id == org_id)) is None:
                raise OrgNotFound(f"no org {org_id!r}")
            await conn.execute(
                insert(credit_grants).values(
                    id=grant.id,
                    org_id=org_id,
                    kind=kind,
                    currency=amount.currency,
                    amount=amount.amount,
                    remaining=amount.amount,
                    granted_at=now,
                    expires_at=expires_at,
                    note=grant.note,
                )
            )
            await _ledger_row(conn, grant.id, now, amount.amount, "grant", None)
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="credits.grant",
                target_type="org",
                target_id=org_id,
                details={
                    "grant": grant.id,
                    "kind": kind,
                    "amount": str(amount.amount),
                    "currency": amount.currency,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                },
            )
            # Last: the ledger's lock is held until the commit.
            await self._ledger.append(
                CREDITS_GRANTED,
                org_id,
                grant.id,
                amount,
                {"kind": kind, "expires_at": expires_at, "note": grant.note},
                conn=conn,
            )
        return grant

    async def grants(self, org_id: str, *, currency: str | None = None) -> list[CreditGrant]:
        """Every grant of the org (spent and expired ones too), the oldest first."""
        async with self._store.connect() as conn:
            return await _select_grants(conn, org_id, currency, lock=False)

    async def balance(self, org_id: str, currency: str, at: datetime | None = None) -> Money:
        """What the org's usable grants in ``currency`` hold at ``at`` (default: now)."""
        grants = await self.grants(org_id, currency=currency)
        return balance(grants, at if at is not None else self._clock(), currency)

    async def consume(
        self,
        org_id: str,
        amount: Money,
        *,
        reason: str = "charge",
        reference: str | None = None,
        low_balance_below: Money | None = None,
    ) -> Consumption:
        """Spend credit on ``amount`` now, in ``apply_credits``' order, in one transaction.

        Returns what each grant paid and what is left to pay; ``low_balance`` is set when this
        spend took the balance below ``low_balance_below``.
        """
        if amount.amount < 0:
            raise MoneyError(f"cannot spend a negative amount ({amount})")
        if not amount.is_rounded():
            raise MoneyError(f"{amount} is finer than the smallest unit of {amount.currency}")
        if low_balance_below is not None and low_balance_below.currency != amount.currency:
            raise CurrencyMismatch("the low-balance threshold is in another currency")
        async with self._store.transaction() as conn:
            now = self._clock()
            grants = await _select_grants(conn, org_id, amount.currency, lock=True)
            before = balance(grants, now, amount.currency)
            applied, remaining, balances = apply_credits(grants, amount, now)
            by_id = {g.id: g for g in balances}
            for credit in applied:
                await conn.execute(
                    update(credit_grants)
                    .where(credit_grants.c.id == credit.grant_id)
                    .values(remaining=by_id[credit.grant_id].remaining.amount)
                )
                await _ledger_row(
                    conn, credit.grant_id, now, -credit.amount.amount, reason, reference
                )
            after = balance(balances, now, amount.currency)
            low = low_balance(org_id, before, after, low_balance_below)
            if low is not None:  # before the ledger's entry: that holds the ledger's lock
                await self._webhooks.emit(
                    conn,
                    "credits.low",
                    org_id,
                    {
                        "balance": {"amount": str(after.amount), "currency": after.currency},
                        "threshold": {
                            "amount": str(low.threshold.amount),
                            "currency": low.threshold.currency,
                        },
                    },
                )
            if applied:
                # One entry per spend, the grants it drew on in its details. The ledger's
                # reference holds 64 characters: a longer one (or none) is only in the details.
                short = reference if reference and len(reference) <= 64 else new_id("spend")
                await self._ledger.append(
                    CREDITS_CONSUMED,
                    org_id,
                    short,
                    total((credit.amount for credit in applied), amount.currency),
                    {
                        "reason": reason,
                        "reference": reference,
                        "grants": [
                            {
                                "grant": credit.grant_id,
                                "amount": str(credit.amount.rounded().amount),
                            }
                            for credit in applied
                        ],
                    },
                    conn=conn,
                )
        return Consumption(
            applied=applied,
            remaining=remaining,
            balance_before=before,
            balance_after=after,
            low_balance=low,
        )

    async def ledger(self, org_id: str) -> list[LedgerEntry]:
        """Every ledger row of the org's grants, in the order written."""
        stmt = (
            select(credit_ledger, credit_grants.c.currency)
            .join(credit_grants, credit_grants.c.id == credit_ledger.c.grant_id)
            .where(credit_grants.c.org_id == org_id)
            .order_by(credit_ledger.c.id)
        )
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            LedgerEntry(
                id=row["id"],
                grant_id=row["grant_id"],
                at=row["at"],
                amount=Money(row["amount"], row["currency"]),
                reason=row["reason"],
                reference=row["reference"],
            )
            for row in rows
        ]


async def _select_grants(
    conn: AsyncConnection, org_id: str, currency: str | None, *, lock: bool
) -> list[CreditGrant]:
    stmt = select(credit_grants).where(credit_grants.c.org_id == org_id)
    if currency is not None:
        stmt = stmt.where(credit_grants.c.currency == currency)
    if lock:
        # In id order, so that two spenders lock the same rows in the same order (no deadlock).
        stmt = stmt.order_by(credit_grants.c.id).with_for_update()
    else:
        stmt = stmt.order_by(credit_grants.c.granted_at, credit_grants.c.id)
    rows = (await conn.execute(stmt)).mappings().all()
    return [
        CreditGrant(
            id=row["id"],
            org_id=row["org_id"],
            kind=row["kind"],
            amount=Money(row["amount"], row["currency"]),
            remaining=Money(row["remaining"], row["currency"]),
            granted_at=row["granted_at"],
            expires_at=row["expires_at"],
            note=row["note"],
        )
        for row in rows
    ]


async def _ledger_row(
    conn: AsyncConnection,
    grant_id: str,
    at: datetime,
    amount: Decimal,
    reason: str,
    reference: str | None,
) -> None:
    await conn.execute(
        insert(credit_ledger).values(
            grant_id=grant_id, at=at, amount=amount, reason=reason[:32], reference=reference
        )
    )
