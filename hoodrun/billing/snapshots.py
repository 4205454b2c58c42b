"""Closing snapshots: the row a period close writes per org, its content hash, and the close's
result.

``content_hash`` is the SHA-256 of the canonical JSON of every other column: UTF-8, keys sorted,
no spaces (``orjson.dumps`` with sorted keys), times in ISO 8601 UTC, amount columns as decimal
text without trailing zeros (so the 12.500000 a NUMERIC(20, 6) column returns hashes as the 12.50
written); the JSON columns hold their decimals as strings, hashed as written. ``verify_snapshot``
checks it.

How the snapshots are made and written: ``hoodrun.billing.close``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import orjson

from hoodrun.metering.money import Money, total
from hoodrun.metering.rating import Line
from hoodrun.store.tables import closing_snapshots

__all__ = [
    "CloseResult",
    "Snapshot",
    "Unbilled",
    "snapshot_hash",
    "verify_snapshot",
]

_PRECISION = 100

# --- snapshots -----------------------------------------------------------------------------------

_HASHED = tuple(
    column.name for column in closing_snapshots.columns if column.name != "content_hash"
)


def _decimal_text(value: Decimal) -> str:
    """A decimal as plain text without exponent or trailing zeros: 12.500000 -> "12.5"."""
    if value == 0:
        return "0"
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return format(value.normalize(), "f")


def _scalar(value: Any) -> str:
    """The canonical text of the values JSON has no type for."""
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} in a snapshot")
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"{type(value).__name__} has no canonical form in a snapshot")


_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def snapshot_hash(row: Mapping[str, Any] | Snapshot) -> str:
    """The SHA-256 (hex) of a snapshot's canonical JSON: every column but ``content_hash``."""
    columns = row.row() if isinstance(row, Snapshot) else row
    content = {name: columns[name] for name in _HASHED}
    return hashlib.sha256(orjson.dumps(content, default=_scalar, option=_JSON_OPTIONS)).hexdigest()


def verify_snapshot(row: Mapping[str, Any] | Snapshot) -> bool:
    """Whether the snapshot's content still matches its ``content_hash``."""
    columns = row.row() if isinstance(row, Snapshot) else row
    return hmac.compare_digest(snapshot_hash(columns), str(columns["content_hash"]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A row of ``closing_snapshots``: an org's month closed, amounts as ``Money``.

    ``usage`` rows: ``{contract, chain, kind, method, requests, compute_units}`` (``contract`` is
    None for usage outside any contract, not billed); ``late_usage`` rows the same with the
    ``period`` they belong to instead of ``contract``. ``lines`` are before credits.
    """

    id: str
    org_id: str
    period: str
    period_start: datetime
    period_end: datetime
    contract_id: str
    plan: str
    currency: str
    usage: tuple[Mapping[str, Any], ...]
    late_usage: tuple[Mapping[str, Any], ...]
    lines: tuple[Line, ...]
    subtotal: Money
    tax: Money
    credits: Money
    total: Money
    tax_name: str | None
    reverse_charge: bool
    content_hash: str
    closed_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Snapshot:
        currency = str(row["currency"])
        lines, tax_name, reverse = [], None, False
        for item in row["lines"]:
            lines.append(
                Line(
                    kind=item["kind"],
                    description=item["description"],
                    quantity=Decimal(item["quantity"]),
                    unit_price=Money(Decimal(item["unit_price"]), currency),
                    amount=Money(Decimal(item["amount"]), currency),
                    per=Decimal(item["per"]),
                )
            )
            if item["kind"] == "tax":
                tax_name, reverse = item.get("tax_name"), bool(item.get("reverse_charge"))
        return cls(
            id=row["id"],
            org_id=row["org_id"],
            period=row["period"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            contract_id=row["contract_id"],
            plan=row["plan"],
            currency=currency,
            usage=tuple(row["usage"]),
            late_usage=tuple(row["late_usage"]),
            lines=tuple(lines),
            subtotal=Money(row["subtotal"], currency),
            tax=Money(row["tax"], currency),
            credits=Money(row["credits"], currency),
            total=Money(row["total"], currency),
            tax_name=tax_name,
            reverse_charge=reverse,
            content_hash=row["content_hash"],
            closed_at=row["closed_at"],
        )

    def row(self) -> dict[str, Any]:
        """The snapshot as the table's columns."""
        return {
            "id": self.id,
            "org_id": self.org_id,
            "period": self.period,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "contract_id": self.contract_id,
            "plan": self.plan,
            "currency": self.currency,
            "usage": [dict(item) for item in self.usage],
            "late_usage": [dict(item) for item in self.late_usage],
            "lines": [_line_json(line, self.tax_name, self.reverse_charge) for line in self.lines],
            "subtotal": self.subtotal.amount,
            "tax": self.tax.amount,
            "credits": self.credits.amount,
            "total": self.total.amount,
            "content_hash": self.content_hash,
            "closed_at": self.closed_at,
        }

    def verify(self) -> bool:
        return verify_snapshot(self)


def _line_json(line: Line, tax_name: str | None, reverse_charge: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": line.kind,
        "description": line.description,
        "quantity": str(line.quantity),
        "unit_price": str(line.unit_price.amount),
        "amount": str(line.amount.amount),
        "per": str(line.per),
    }
    if line.kind == "tax":
        item["tax_name"] = tax_name
        item["reverse_charge"] = reverse_charge
    return item


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unbilled:
    """Billable usage no contract covered: reported by the close, not billed."""

    org_id: str
    period: str
    """The month the usage happened in."""
    requests: int
    compute_units: int
    reason: str
    plan: str | None = None
    """The org's plan (``orgs.plan``, else the default); None when no org has this id."""
    priced: bool = False
    """Whether that plan has a price, so the usage would be billable under it."""


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What a close did, org by org."""

    period: str
    closed: tuple[Snapshot, ...]
    """The snapshots written by this close."""
    skipped: tuple[str, ...]
    """Orgs that already had a snapshot for the period (left as they are)."""
    no_contract: tuple[str, ...]
    """Orgs with usage but no contract in the period: no snapshot (see ``unbilled``)."""
    unbilled: tuple[Unbilled, ...]
    errors: Mapping[str, str] = field(default_factory=dict)
    """Org id -> why its snapshot could not be made."""
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def totals(self) -> dict[str, Money]:
        """The closed snapshots' totals (before credits) by currency."""
        by_currency: dict[str, list[Money]] = defaultdict(list)
        for snapshot in self.closed:
            by_currency[snapshot.currency].append(snapshot.total)
        return {cur: total(amounts, cur) for cur, amounts in sorted(by_currency.items())}

    def summary(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        return {
            "period": self.period,
            "closed": len(self.closed),
            "skipped": len(self.skipped),
            "no_contract": len(self.no_contract),
            "errors": dict(self.errors),
            "totals": {cur: str(m.rounded().amount) for cur, m in self.totals.items()},
            "snapshots": [
                {
                    "id": s.id,
                    "org_id": s.org_id,
                    "plan": s.plan,
                    "currency": s.currency,
                    "total": str(s.total.rounded().amount),
                    "late_usage": bool(s.late_usage),
                    "content_hash": s.content_hash,
                }
                for s in self.closed
            ],
            "skipped_orgs": list(self.skipped),
            "unbilled": [
                {
                    "org_id": u.org_id,
                    "period": u.period,
                    "requests": u.requests,
                    "compute_units": u.compute_units,
                    "plan": u.plan,
                    "priced": u.priced,
                    "reason": u.reason,
                }
                for u in self.unbilled
            ],
            "warnings": list(self.warnings),
        }
