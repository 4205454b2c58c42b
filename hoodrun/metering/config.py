"""The metering part of the config: meters, prices of plans, and taxes per country.

Declared in the config file (config as code) and referred to by ``hoodrun.config``: ``meters``
and ``taxes`` at the top level, ``price``, ``quotas`` and ``spending_cap`` on each plan. Money is
``Decimal`` with an ISO 4217 currency; amounts in the file are strings or numbers ("49.00").
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BUILTIN_METERS",
    "MeterConfig",
    "PriceConfig",
    "TaxRule",
    "TierConfig",
]

# Meters every deployment has, read from the gateway's request records (requests_raw): the
# subject is the org id; group by chain, method, key_id, project_id.
BUILTIN_METERS = ("requests", "compute_units")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The JSONPaths meters can read: object keys only ($.a, $.a.b), as hoodrun.metering.meters does.
JSON_PATH = re.compile(r"^\$((?:\.[A-Za-z0-9_-]+)+)$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeterConfig(_Model):
    """A meter over external usage events (CloudEvents, ``POST /api/v1/events``)."""

    slug: str = Field(description="The meter's name in URLs: a-z, 0-9, - and _.")
    description: str = ""
    event_type: str = Field(min_length=1, description="CloudEvents `type` of the events counted.")
    aggregation: Literal["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"]
    value_property: str | None = Field(
        default=None,
        description="JSONPath into the event's data ($.tokens); not for COUNT.",
    )
    group_by: dict[str, str] = Field(
        default_factory=dict, description="Dimensions: name -> JSONPath into the data."
    )

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("use a-z, 0-9, - and _ (at most 64), starting with a letter or digit")
        if value in BUILTIN_METERS:
            raise ValueError(f"{value!r} is a built-in meter; choose another slug")
        return value

    @field_validator("value_property")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not JSON_PATH.match(value):
            raise ValueError(
                "a JSONPath of object keys into the event's data, like $.tokens or $.usage.input "
                "(no arrays, wildcards or filters)"
            )
        return value

    @field_validator("group_by")
    @classmethod
    def _group_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
                raise ValueError(f"group_by name {name!r}: letters, digits and _")
            if not JSON_PATH.match(path):
                raise ValueError(
                    f"group_by {name}: a JSONPath of object keys into the event's data, like "
                    "$.model (no arrays, wildcards or filters)"
                )
        return value

    @model_validator(mode="after")
    def _value(self) -> MeterConfig:
        if self.aggregation == "COUNT" and self.value_property is not None:
            raise ValueError("a COUNT meter counts events: leave value_property out")
        if self.aggregation != "COUNT" and self.value_property is None:
            raise ValueError(f"a {self.aggregation} meter needs value_property")
        return self


class TierConfig(_Model):
    """One tier of a METERED or HYBRID price: units up to ``up_to`` (None: no end)."""

    up_to: Decimal | None = Field(default=None, gt=0)
    unit_price: Decimal = Field(default=Decimal(0), ge=0, description="Per `PriceConfig.per`.")
    flat_price: Decimal = Field(default=Decimal(0), ge=0, description="Once, when reached.")


class PriceConfig(_Model):
    """What a plan costs per period (a calendar month, UTC).

    - FIXED: ``fee`` per period.
    - METERED: usage of ``meter`` at ``tiers`` (``graduated``: each tier prices the units in it;
      ``volume``: the tier the total reaches prices every unit), after ``included`` free units.
    - HYBRID: ``fee`` with ``included`` units, then ``tiers`` for the overage.

    Unit prices are per ``per`` units (e.g. per 1,000,000 compute units). ``multipliers`` weigh
    the usage of a chain (``chain:eth``) or a kind of method (``archive``, ``trace``) before
    pricing. ``minimum`` is the minimum commitment: a period never costs less.
    """

    type: Literal["FIXED", "METERED", "HYBRID"]
    currency: str = "USD"
    fee: Decimal = Field(default=Decimal(0), ge=0)
    meter: str = Field(default="compute_units", description="The meter priced.")
    included: Decimal = Field(default=Decimal(0), ge=0)
    tiers: tuple[TierConfig, ...] = ()
    tier_mode: Literal["graduated", "volume"] = "graduated"
    per: Decimal = Field(default=Decimal(1), gt=0)
    multipliers: dict[str, Decimal] = Field(default_factory=dict)
    minimum: Decimal = Field(default=Decimal(0), ge=0)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not _CURRENCY.match(value):
            raise ValueError("an ISO 4217 code in capitals, like USD, EUR or TRY")
        return value

    @field_validator("multipliers")
    @classmethod
    def _multipliers(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, factor in value.items():
            if not (name in ("archive", "trace") or name.startswith("chain:")):
                raise ValueError(f"multiplier {name!r}: use archive, trace or chain:<name>")
            if factor < 0:
                raise ValueError(f"multiplier {name!r} must not be negative")
        return value

    @model_validator(mode="after")
    def _shape(self) -> PriceConfig:
        if self.type == "FIXED" and (self.tiers or self.included):
            raise ValueError("a FIXED price has a fee only (no tiers, no included units)")
        if self.type == "METERED" and self.fee:
            raise ValueError("a METERED price has no fee (a fee with included units is HYBRID)")
        if self.type != "FIXED" and not self.tiers:
            raise ValueError(f"a {self.type} price needs tiers (one tier: a single unit price)")
        bounds = [tier.up_to for tier in self.tiers]
        if any(bound is None for bound in bounds[:-1]):
            raise ValueError("only the last tier may have no up_to")
        finite = [bound for bound in bounds if bound is not None]
        if finite != sorted(set(finite)):
            raise ValueError("tiers' up_to must increase")
        return self


class TaxRule(_Model):
    """Tax of a customer country (``taxes`` is keyed by ISO 3166 alpha-2 code)."""

    name: str = Field(default="VAT", description="As printed on invoices: KDV, VAT, ...")
    rate: Decimal = Field(ge=0, lt=1, description="0.20 for 20%.")
    reverse_charge_b2b: bool = Field(
        default=False, description="Business customers with a tax id pay none (reverse charge)."
    )
