"""The chain of entries.

Entries. Entry ``seq`` (1, 2, 3, ... without gaps) records one event of a ``kind`` below for an
org, with a ``reference`` (the invoice, payment, refund, credit note or grant id) and an amount.
Amounts are never negative: the kind says which way the money goes (a refund is a positive
``refund.issued``), so a sign can never be read the wrong way round.

Chain. Each entry carries ``prev_hash``, the hash of entry ``seq - 1`` (64 zeros for the first),
and ``hash``: SHA-256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of ``seq, at,
kind, org_id, reference, amount, currency, details, prev_hash``. ``at`` is ISO 8601 UTC with
microseconds and ``amount`` has exactly 6 decimals (what ``NUMERIC(20, 6)`` holds), so an entry
hashes the same read from SQLite (text) or PostgreSQL (``Decimal('12.500000')``). An edited row no
longer matches its hash, a deleted one leaves a gap in ``seq``, and rows swapped carry another
``seq`` in their hash. Rows rewritten with fresh hashes, or deleted at the tail, are seen only
against what was exported: the last hash of each day in ``ledger_exports`` and the signed files.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any, Final, NamedTuple

import orjson
from sqlalchemy import ColumnElement, RowMapping, Select, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.ledger._errors import InvalidEntry
from hoodrun.metering.money import Money
from hoodrun.store.tables import ledger_entries

INVOICE_ISSUED: Final = "invoice.issued"
INVOICE_VOIDED: Final = "invoice.voided"
PAYMENT_RECEIVED: Final = "payment.received"
REFUND_ISSUED: Final = "refund.issued"
CREDIT_NOTE_ISSUED: Final = "credit_note.issued"
CREDITS_GRANTED: Final = "credits.granted"
CREDITS_CONSUMED: Final = "credits.consumed"
CREDITS_EXPIRED: Final = "credits.expired"
KINDS: Final = frozenset(
    {
        INVOICE_ISSUED,
        INVOICE_VOIDED,
        PAYMENT_RECEIVED,
        REFUND_ISSUED,
        CREDIT_NOTE_ISSUED,
        CREDITS_GRANTED,
        CREDITS_CONSUMED,
        CREDITS_EXPIRED,
    }
)

GENESIS_HASH: Final = "0" * 64
_DAY: Final = timedelta(days=1)

# pg_advisory_xact_lock key of the appenders ("hoodrunL"); held until the transaction ends.
_APPEND_LOCK: Final = 0x686F6F6472756E4C
_CHUNK: Final = 1000
_SCALE: Final = Decimal("0.000001")
_ZERO: Final = Decimal("0.000000")
_CONTENT: Final = (
    "seq",
    "at",
    "kind",
    "org_id",
    "reference",
    "amount",
    "currency",
    "details",
    "prev_hash",
)
_LINE_KEYS: Final = frozenset((*_CONTENT, "hash"))
# What a tampered row can make reading it raise (bad text in a SQLite column, a bad currency).
_UNREADABLE = (ValueError, TypeError, KeyError, ArithmeticError)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A row of ``ledger_entries``; ``amount`` is never negative (the kind gives the direction)."""

    seq: int
    at: datetime
    kind: str
    org_id: str
    reference: str
    amount: Money
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """The fields the hash covers, in their canonical form."""
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "kind": self.kind,
            "org_id": self.org_id,
            "reference": self.reference,
            "amount": _amount_text(self.amount.amount),
            "currency": self.amount.currency,
            "details": self.details,
            "prev_hash": self.prev_hash,
        }

    def computed_hash(self) -> str:
        """The hash of the content as it is now (differs from ``hash`` if the row was changed)."""
        return _digest(self.content())

    def line(self) -> dict[str, Any]:
        """The entry as an export line holds it: the content and its hash."""
        return {**self.content(), "hash": self.hash}


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking the ledger or an export.

    ``first_bad`` is the seq of the first entry found wrong (``None`` when the problem is not an
    entry's, such as a bad signature); ``reason`` says what is wrong, or what was checked.
    """

    ok: bool
    checked: int
    first_bad: int | None
    reason: str
    last_seq: int | None = None
    last_hash: str | None = None


def _bad(checked: int, first_bad: int | None, reason: str) -> Verification:
    return Verification(ok=False, checked=checked, first_bad=first_bad, reason=reason)


# --- canonical form ------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _digest(content: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(content)).hexdigest()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _amount_text(amount: Decimal) -> str:
    with localcontext() as ctx:
        ctx.prec = 60
        scaled = amount.quantize(_SCALE)
    if scaled != amount:
        raise InvalidEntry(f"amount {amount} has more than 6 digits after the point")
    return f"{_ZERO if scaled.is_zero() else scaled:f}"  # never "-0.000000"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON that reads back the same from either backend (no floats: they round)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidEntry(f"details{where}: {value} does not fit in 64 bits; use a string")
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Money):
        return {"amount": str(value.amount), "currency": value.currency}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidEntry(f"details{where}: naive datetime; use timezone-aware UTC")
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEntry(f"details{where}: key {key!r} is not a string")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float):
        raise InvalidEntry(f"details{where}: {value!r} is a float; use Decimal or a string")
    raise InvalidEntry(f"details{where}: {type(value).__name__} is not JSON")


def _entry(row: RowMapping) -> LedgerEntry:
    details = row["details"]
    if not isinstance(details, dict):
        raise TypeError(f"details is a {type(details).__name__}, not an object")
    return LedgerEntry(
        seq=row["seq"],
        at=row["at"],
        kind=row["kind"],
        org_id=row["org_id"],
        reference=row["reference"],
        amount=Money(row["amount"], row["currency"]),
        details=details,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


async def _lock(conn: AsyncConnection) -> None:
    # SQLite needs nothing: the write transaction (BEGIN IMMEDIATE) holds the database's lock.
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})


async def _scan(
    conn: AsyncConnection, *, after: int | None = None, until: int | None = None
) -> AsyncGenerator[tuple[int, LedgerEntry | None, str], None]:
    """``(seq, entry, "")`` in seq order after ``after``, chunk by chunk; a row that cannot be
    read gives ``(seq, None, why)`` instead of stopping the scan."""
    while True:
        stmt: Select[Any] = select(ledger_entries).order_by(ledger_entries.c.seq).limit(_CHUNK)
        if after is not None:
            stmt = stmt.where(ledger_entries.c.seq > after)
        if until is not None:
            stmt = stmt.where(ledger_entries.c.seq <= until)
        items: list[tuple[int, LedgerEntry | None, str]]
        try:
            rows = (await conn.execute(stmt)).mappings().all()
            items = [(row["seq"], _entry(row), "") for row in rows]
        except _UNREADABLE:
            # Find the rows at fault one by one; the others are read as usual.
            seqs = (await conn.execute(stmt.with_only_columns(ledger_entries.c.seq))).scalars()
            items = [await _read_one(conn, seq) for seq in seqs.all()]
        if not items:
            return
        for item in items:
            yield item
        after = items[-1][0]


async def _read_one(conn: AsyncConnection, seq: int) -> tuple[int, LedgerEntry | None, str]:
    stmt = select(ledger_entries).where(ledger_entries.c.seq == seq)
    try:
        row = (await conn.execute(stmt)).mappings().one()
        return seq, _entry(row), ""
    except _UNREADABLE as exc:
        return seq, None, f"it cannot be read ({type(exc).__name__}: {exc})"


class _Link(NamedTuple):
    seq: int
    hash: str
    at: datetime


async def _neighbour(
    conn: AsyncConnection, *where: ColumnElement[bool], last: bool
) -> _Link | None:
    """The last (or first) entry matching ``where``: its seq, hash and time."""
    order = ledger_entries.c.seq.desc() if last else ledger_entries.c.seq
    stmt = select(ledger_entries.c.seq, ledger_entries.c.hash, ledger_entries.c.at)
    row = (await conn.execute(stmt.where(*where).order_by(order).limit(1))).first()
    return None if row is None else _Link(row.seq, row.hash, row.at)


def _anchor_problem(
    anchor: RowMapping, last_seq: int, last_hash: str
) -> tuple[int | None, str] | None:
    """What is wrong if the ledger, read up to the end of an exported day, ends at ``last_seq``
    with ``last_hash`` where the export recorded otherwise."""
    day, seq, recorded = anchor["day"], anchor["last_seq"], anchor["last_hash"]
    if seq is not None and seq > last_seq:
        return last_seq + 1, f"it is missing (the export of {day} ends at entry #{seq})"
    if (seq is not None and seq != last_seq) or recorded != last_hash:
        return (
            seq if seq is not None else (last_seq or None),
            f"the ledger no longer ends {day} with the hash its export recorded: entries up to"
            " here were rewritten; `hoodrun ledger verify --export FILE` names the first",
        )
    return None
