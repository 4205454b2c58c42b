"""Contracts and credits of an org (``/admin/v1/orgs/{org}/...``), behind the admin token.

A contract binds an org to a plan with its terms (currency, country and tax id for taxes,
discount, minimum commitment); changing its plan ends the contract in force and starts another,
so the period can be prorated, and the org's keys take the new plan at their next request.
Credits are prepaid or promotional grants, spent by invoices in a fixed order; the balance and
every grant are readable here.

Errors follow the admin API: 400 invalid terms or amount, 401 no or wrong token, 404 no such org,
409 overlapping contracts or no contract in force, 422 a malformed body.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, actor, org_in_path
from hoodrun.keys.service import KeyService
from hoodrun.metering.credits import CreditGrant
from hoodrun.metering.money import Money, MoneyError
from hoodrun.metering.store import (
    Contract,
    ContractBook,
    ContractError,
    ContractOverlap,
    CreditBook,
    NoContractInForce,
    OrgNotFound,
)

__all__ = ["accounts_router"]

Org = Annotated[str, Path(description="The org id (org_...).")]
# What the database's amount columns hold (NUMERIC(20, 6)): more is a malformed body (422),
# not a failed statement.
Amount = Annotated[Decimal, Field(max_digits=20, decimal_places=6)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContractRequest(_Body):
    plan: str
    currency: str | None = Field(default=None, description="Default: the plan price's.")
    country: str | None = Field(default=None, description="ISO 3166 alpha-2, for taxes.")
    tax_id: str | None = Field(default=None, max_length=64)
    business: bool = False
    discount_percent: Amount = Decimal(0)
    minimum_override: Amount | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None


class PlanChangeRequest(_Body):
    plan: str
    change_at: AwareDatetime | None = Field(default=None, description="Default: now.")


class ContractOut(BaseModel):
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


class ContractsOut(BaseModel):
    contracts: list[ContractOut]


class GrantRequest(_Body):
    kind: Literal["prepaid", "promotional"]
    amount: Amount = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    expires_at: AwareDatetime | None = None
    note: str = Field(default="", max_length=500)


class GrantOut(BaseModel):
    id: str
    kind: str
    amount: Decimal
    remaining: Decimal
    currency: str
    granted_at: datetime
    expires_at: datetime | None
    note: str


class CreditsOut(BaseModel):
    org_id: str
    balance: dict[str, Decimal] = Field(description="Spendable now, per currency.")
    grants: list[GrantOut]


def _contract(contract: Contract) -> ContractOut:
    return ContractOut.model_validate(contract, from_attributes=True)


def accounts_router(
    contracts: ContractBook, credits: CreditBook, keys: KeyService, auth: Auth
) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 404, 409, 422)
    }
    router = APIRouter(
        prefix="/admin/v1/orgs/{org}",
        tags=["accounts"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    async def apply(contract: Contract) -> None:
        """The org's keys take the contract's plan when it is in force now. (One that starts
        later is applied by whoever starts it then: the billing scheduler.)"""
        if contract.in_force(keys.now()):
            await keys.change_org_plan(contract.org_id, contract.plan, actor=actor())

    async def known(org: str) -> None:
        try:
            await keys.org_plan(org)
        except LookupError as exc:
            raise ApiError(404, "org_not_found", str(exc)) from None

    async def guarded(call: Any) -> Any:
        try:
            return await call
        except OrgNotFound as exc:
            raise ApiError(404, "org_not_found", str(exc)) from None
        except (ContractOverlap, NoContractInForce) as exc:
            raise ApiError(409, "contract_conflict", str(exc)) from None
        except (ContractError, MoneyError, ValueError) as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None

    org = org_in_path()
    reads, writes = [auth.require("billing:read", org)], [auth.require("billing:write", org)]

    # The terms of a contract (discount, minimum, currency) and credit grants are an operator's:
    # a customer changes plan within its contract, and pays for it.
    terms = [auth.require("billing:write")]

    @router.post("/contract", status_code=status.HTTP_201_CREATED, dependencies=terms)
    async def create_contract(org: Org, body: ContractRequest) -> ContractOut:
        """Start a contract; the org's keys take its plan."""
        made = await guarded(contracts.create(org, **body.model_dump(), actor=actor()))
        await apply(made)
        return _contract(made)

    @router.post("/contract/plan", dependencies=writes)
    async def change_plan(org: Org, body: PlanChangeRequest) -> ContractOut:
        """End the contract in force and start one on another plan (prorated when billed)."""
        made = await guarded(
            contracts.change_plan(org, body.plan, change_at=body.change_at, actor=actor())
        )
        await apply(made)
        return _contract(made)

    @router.get("/contracts", dependencies=reads)
    async def list_contracts(org: Org) -> ContractsOut:
        """The org's contracts, oldest first."""
        await known(org)
        return ContractsOut(contracts=[_contract(c) for c in await contracts.history(org)])

    @router.post("/credits", status_code=status.HTTP_201_CREATED, dependencies=terms)
    async def grant_credit(org: Org, body: GrantRequest) -> GrantOut:
        """Grant credit to the org."""
        grant = await guarded(
            credits.grant(
                org,
                body.kind,
                Money(body.amount, body.currency),
                expires_at=body.expires_at,
                note=body.note,
                actor=actor(),
            )
        )
        return _grant(grant)

    @router.get("/credits", dependencies=reads)
    async def list_credits(
        org: Org,
        currency: Annotated[str | None, Query(description="Only this currency.")] = None,
    ) -> CreditsOut:
        """The org's grants and what it can spend now."""
        await known(org)
        grants = await credits.grants(org, currency=currency)
        balance: dict[str, Decimal] = {}
        for code in sorted({g.amount.currency for g in grants}):
            balance[code] = (await credits.balance(org, code)).amount
        return CreditsOut(org_id=org, balance=balance, grants=[_grant(g) for g in grants])

    return router


def _grant(grant: CreditGrant) -> GrantOut:
    return GrantOut(
        id=grant.id,
        kind=grant.kind,
        amount=grant.amount.amount,
        remaining=grant.remaining.amount,
        currency=grant.amount.currency,
        granted_at=grant.granted_at,
        expires_at=grant.expires_at,
        note=grant.note,
    )
