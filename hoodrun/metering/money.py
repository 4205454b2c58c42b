"""Money: an exact ``Decimal`` amount with its ISO 4217 currency, and how amounts are rounded.

Arithmetic stays within one currency (``CurrencyMismatch`` otherwise); converting is the
invoice's business, at the day's rate. Rounding happens once, on each line of a bill
(``round_line``: half-even to the currency's minor unit); totals are sums of rounded lines and are
never rounded again.

``ExactDecimal`` is the column type for amounts: ``NUMERIC(20, 6)`` on PostgreSQL and text on
SQLite, whose NUMERIC goes through a float and loses digits beyond the fifteenth.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "MINOR_UNITS",
    "CurrencyMismatch",
    "ExactDecimal",
    "Money",
    "MoneyError",
    "minor_units",
    "round_line",
    "total",
]

# Digits after the decimal point (ISO 4217); a currency not listed has 2.
MINOR_UNITS: dict[str, int] = {
    "BHD": 3,
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "PYG": 0,
    "RWF": 0,
    "TND": 3,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # Common ones, listed for the reader: every other code has 2 as well.
    "CHF": 2,
    "EUR": 2,
    "GBP": 2,
    "TRY": 2,
    "USD": 2,
}
DEFAULT_MINOR_UNITS = 2

_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Enough digits that no product of a quantity and a price is rounded before ``round_line``.
_PRECISION = 60


class MoneyError(ValueError):
    """An amount of money is not valid."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class CurrencyMismatch(MoneyError):
    """Amounts in different currencies cannot be combined."""


def minor_units(currency: str) -> int:
    """Digits after the decimal point of ``currency`` (USD 2, JPY 0, KWD 3; unknown codes 2)."""
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNITS)


def round_line(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-even to the minor unit of ``currency`` (0.125 USD -> 0.12)."""
    exponent = Decimal(1).scaleb(-minor_units(currency))
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return amount.quantize(exponent, rounding=ROUND_HALF_EVEN)


def _check_currency(currency: str) -> str:
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise MoneyError(f"currency {currency!r}: an ISO 4217 code in capitals, like USD")
    return currency


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in a currency. Immutable; ``+``, ``-`` and comparisons need the same currency.

    The amount is kept exactly as given (``Money(Decimal("0.125"), "USD")`` stays 0.125):
    ``rounded()`` is a separate, explicit step.
    """

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        _check_currency(self.currency)
        if isinstance(self.amount, bool) or not isinstance(self.amount, Decimal | int):
            raise MoneyError(f"amount {self.amount!r}: use Decimal (never float)")
        if isinstance(self.amount, int):
            object.__setattr__(self, "amount", Decimal(self.amount))
        if not self.amount.is_finite():
            raise MoneyError(f"amount {self.amount!r} is not a finite number")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        """``Money.of("12.50", "EUR")``: the amount parsed exactly from text."""
        if isinstance(amount, float):
            raise MoneyError(f"amount {amount!r}: use a string or Decimal (never float)")
        return cls(Decimal(amount), currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def rounded(self) -> Money:
        """This amount rounded half-even to the currency's minor unit."""
        return Money(round_line(self.amount, self.currency), self.currency)

    def is_rounded(self) -> bool:
        """Whether the amount has no digits below the currency's minor unit."""
        return round_line(self.amount, self.currency) == self.amount

    def is_zero(self) -> bool:
        return self.amount == 0

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: Decimal | int) -> Money:
        if isinstance(factor, bool) or not isinstance(factor, Decimal | int):
            raise TypeError(f"Money is multiplied by a Decimal or int, not {type(factor).__name__}")
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: Money) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: Money) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: Money) -> bool:
        return self.amount >= self._same(other).amount


def total(amounts: Iterable[Money], currency: str) -> Money:
    """The exact sum of ``amounts``, all in ``currency`` (zero when there are none)."""
    result = Money.zero(currency)
    for amount in amounts:
        result = result + amount
    return result


class ExactDecimal(TypeDecorator[Decimal]):
    """An exact ``Decimal`` column with 6 digits after the point, the same on every backend.

    ``NUMERIC(20, 6)`` on PostgreSQL; on SQLite, text (``VARCHAR(32)``), because SQLite's NUMERIC
    stores a float. Values with more than 6 decimals are refused rather than silently rounded. On
    SQLite the column does not compare or sum as a number in SQL: do that in Python.
    """

    impl = Numeric(20, 6)
    cache_ok = True

    _SCALE = Decimal("0.000001")

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(Numeric(20, 6, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            raise MoneyError(f"amount {value!r}: use Decimal (never float)")
        exact = Decimal(value)
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            scaled = exact.quantize(self._SCALE)
        if scaled != exact:
            raise MoneyError(f"amount {value} has more than 6 digits after the point")
        return str(scaled) if dialect.name == "sqlite" else scaled

    def process_result_value(self, value: object, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        return Decimal(str(value))
