"""The money ledger: every money event as an append-only entry in one SHA-256 chain, and its
signed daily exports.

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

Appending serializes: on PostgreSQL with a transaction-scoped advisory lock, on SQLite by its write
transaction (``BEGIN IMMEDIATE``). ``seq`` is the primary key and ``hash`` is unique, so a writer
that bypassed the lock could only fail, never fork the chain. An entry is never dated before the
entry before it, nor inside a day already exported (a clock a little behind is clamped): each day
is one run of consecutive entries, and an export stays the whole day.

Exports. ``ledger-YYYY-MM-DD.jsonl`` holds a header line (format, day, count, first and last seq,
``prev_hash``: the hash the day chains to, ``last_hash``), one line per entry (the hashed fields
plus ``hash``, canonical JSON), and a last line with the Ed25519 signature (base64) of the 32-byte
SHA-256 of every byte before it. Every line is canonical JSON, so any changed byte is found. To
check one without HoodRun (OpenSSL 3)::

    head -n -1 ledger-D.jsonl | openssl dgst -sha256 -binary > digest
    tail -n 1 ledger-D.jsonl | jq -r .signature | base64 -d > signature
    openssl pkeyutl -verify -pubin -inkey ledger.pub -rawin -in digest -sigfile signature

Errors::

    LedgerError          root of what this module raises
    ├── InvalidEntry     an entry to append is not valid (kind, lengths, amount, details)
    ├── LedgerBroken     the chain is broken where an export reads it
    ├── DayNotOver       the day to export can still get entries
    ├── ExportConflict   an export of that day exists and differs
    └── SigningKeyError  the signing key cannot be read or made
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import filecmp
import hashlib
import os
import secrets
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import ColumnElement, RowMapping, Select, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.config import Config
from hoodrun.metering.money import Money
from hoodrun.store import Store
from hoodrun.store.tables import ledger_entries, ledger_exports

__all__ = [
    "CREDITS_CONSUMED",
    "CREDITS_EXPIRED",
    "CREDITS_GRANTED",
    "CREDIT_NOTE_ISSUED",
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "INVOICE_ISSUED",
    "INVOICE_VOIDED",
    "KINDS",
    "PAYMENT_RECEIVED",
    "REFUND_ISSUED",
    "DayNotOver",
    "ExportConflict",
    "InvalidEntry",
    "Ledger",
    "LedgerBroken",
    "LedgerEntry",
    "LedgerError",
    "SigningKeyError",
    "Verification",
    "default_archive_dir",
    "default_signing_key_path",
    "export_name",
    "key_fingerprint",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "verify_export",
]

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
EXPORT_FORMAT: Final = "hoodrun-ledger-export/1"

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
_HEADER_KEYS: Final = frozenset(
    ("format", "day", "count", "first_seq", "last_seq", "prev_hash", "last_hash")
)
_TRAILER_KEYS: Final = frozenset(("algorithm", "sha256", "public_key_sha256", "signature"))
# What a tampered row can make reading it raise (bad text in a SQLite column, a bad currency).
_UNREADABLE = (ValueError, TypeError, KeyError, ArithmeticError)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerError(Exception):
    """The ledger refused the operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidEntry(LedgerError):
    """The entry cannot be written to the ledger."""


class LedgerBroken(LedgerError):
    """The ledger's chain is broken: run `hoodrun ledger verify`."""


class DayNotOver(LedgerError):
    """The day is not over yet (UTC): it can still get entries."""


class ExportConflict(LedgerError):
    """An export of that day exists and differs from what the ledger holds now."""


class SigningKeyError(LedgerError):
    """The ledger's signing key cannot be read or made."""


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


# --- the ledger ----------------------------------------------------------------------------------


class Ledger:
    """Append entries, read them, verify the chain, export and check days.

    ``clock`` gives aware UTC times (tests decide what "now" is).
    """

    def __init__(self, store: Store, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._clock = clock

    async def append(
        self,
        kind: str,
        org_id: str,
        reference: str,
        amount: Money,
        details: Mapping[str, Any] | None = None,
        *,
        conn: AsyncConnection | None = None,
    ) -> LedgerEntry:
        """Append one entry and return it.

        With ``conn`` (a connection from ``Store.transaction()``) the entry commits or rolls back
        with the caller's other writes, so an event never exists without its entry. The append
        holds a ledger-wide lock until that transaction ends: make it the transaction's last step.
        """
        if kind not in KINDS:
            raise InvalidEntry(f"kind {kind!r}: use one of {', '.join(sorted(KINDS))}")
        if not org_id or len(org_id) > 32:
            raise InvalidEntry(f"org id {org_id!r}: 1 to 32 characters")
        if not reference or len(reference) > 64:
            raise InvalidEntry(f"reference {reference!r}: 1 to 64 characters")
        if amount.amount < 0:
            raise InvalidEntry(f"amount {amount} is negative; the kind says the direction")
        exact = Decimal(_amount_text(amount.amount))
        plain = _plain(dict(details or {}), "")
        if conn is not None:
            return await self._append(conn, kind, org_id, reference, exact, amount.currency, plain)
        async with self._store.transaction() as own:
            return await self._append(own, kind, org_id, reference, exact, amount.currency, plain)

    async def _append(
        self,
        conn: AsyncConnection,
        kind: str,
        org_id: str,
        reference: str,
        amount: Decimal,
        currency: str,
        details: dict[str, Any],
    ) -> LedgerEntry:
        await _lock(conn)
        last = (
            await conn.execute(
                select(ledger_entries.c.seq, ledger_entries.c.hash, ledger_entries.c.at)
                .order_by(ledger_entries.c.seq.desc())
                .limit(1)
            )
        ).first()
        exported = await conn.scalar(select(func.max(ledger_exports.c.day)))
        now = self._clock()
        if now.tzinfo is None:
            raise InvalidEntry("the clock gave a naive datetime; it must give aware UTC times")
        at = now.astimezone(UTC)
        if last is not None:
            at = max(at, last.at)
        if exported is not None:
            at = max(at, _day_start(exported + _DAY))
        entry = LedgerEntry(
            seq=1 if last is None else last.seq + 1,
            at=at,
            kind=kind,
            org_id=org_id,
            reference=reference,
            amount=Money(amount, currency),
            details=details,
            prev_hash=GENESIS_HASH if last is None else last.hash,
            hash="",
        )
        entry = dataclasses.replace(entry, hash=entry.computed_hash())
        await conn.execute(
            insert(ledger_entries).values(
                seq=entry.seq,
                at=at,
                kind=kind,
                org_id=org_id,
                reference=reference,
                amount=amount,
                currency=currency,
                details=details,
                prev_hash=entry.prev_hash,
                hash=entry.hash,
            )
        )
        return entry

    async def entries(
        self,
        *,
        org_id: str | None = None,
        since_seq: int | None = None,
        day: date | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[LedgerEntry]:
        """Entries in seq order (``newest_first``: the reverse), optionally of one org, after
        entry ``since_seq`` (exclusive: pass the last seq seen to read on), or dated ``day``."""
        stmt = select(ledger_entries)
        if org_id is not None:
            stmt = stmt.where(ledger_entries.c.org_id == org_id)
        if since_seq is not None:
            stmt = stmt.where(ledger_entries.c.seq > since_seq)
        if day is not None:
            stmt = stmt.where(
                ledger_entries.c.at >= _day_start(day),
                ledger_entries.c.at < _day_start(day + _DAY),
            )
        order = ledger_entries.c.seq.desc() if newest_first else ledger_entries.c.seq
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_entry(row) for row in rows]

    async def verify(self) -> Verification:
        """Recompute every hash in seq order, check each link and that no seq is missing, and
        check that each exported day still ends with the entry and hash its export recorded.

        Reads in chunks, so the ledger's size does not matter to memory.
        """
        async with self._store.connect() as conn:
            exports = await conn.execute(select(ledger_exports).order_by(ledger_exports.c.day))
            pending = list(exports.mappings().all())
            expected, prev_hash = 1, GENESIS_HASH
            async with aclosing(_scan(conn)) as scan:
                async for seq, entry, problem in scan:
                    checked = expected - 1
                    if seq > expected:
                        return _bad(checked, expected, f"it is missing (the next is #{seq})")
                    if seq < expected:
                        return _bad(checked, seq, "it comes before the first entry (#1)")
                    if entry is None:
                        return _bad(checked, seq, problem)
                    if entry.computed_hash() != entry.hash:
                        return _bad(checked, seq, "its content does not match its hash (changed)")
                    if entry.prev_hash != prev_hash:
                        before = "64 zeros" if seq == 1 else f"the hash of entry #{seq - 1}"
                        return _bad(checked, seq, f"its prev_hash is not {before}")
                    # Exported days that ended before this entry must end where it starts.
                    while pending and _day_start(pending[0]["day"] + _DAY) <= entry.at:
                        found = _anchor_problem(pending.pop(0), checked, prev_hash)
                        if found is not None:
                            return _bad(checked, *found)
                    expected, prev_hash = seq + 1, entry.hash
            checked = expected - 1
            for anchor in pending:
                found = _anchor_problem(anchor, checked, prev_hash)
                if found is not None:
                    return _bad(checked, *found)
        return Verification(
            ok=True,
            checked=checked,
            first_bad=None,
            reason=f"{checked} entries",
            last_seq=checked or None,
            last_hash=prev_hash if checked else None,
        )

    # --- exports ---------------------------------------------------------------------------------

    async def export_day(self, day: date, archive_dir: Path, key: Ed25519PrivateKey) -> Path:
        """Write the signed export of ``day`` (UTC) into ``archive_dir`` and record it.

        A day without entries gets an export too (chained to the hash before it), so a missing
        file in the archive is a visible gap. Exporting a day again gives the same file (Ed25519
        signatures are deterministic); if the file there or the recorded export differs from what
        the ledger holds now, ``ExportConflict`` is raised and nothing is overwritten.
        """
        today = self._clock().astimezone(UTC).date()
        if day >= today:
            raise DayNotOver(f"{day} is not over yet (UTC): it can be exported from {day + _DAY}")
        archive_dir.mkdir(parents=True, exist_ok=True)
        target = archive_dir / export_name(day)
        temp = archive_dir / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            async with self._store.transaction() as conn:
                # Appenders wait meanwhile; once the export is recorded, they date their entries
                # after the day, so it stays whole.
                await _lock(conn)
                header, signature = await _write_export(conn, day, temp, key)
                recorded = (
                    (await conn.execute(select(ledger_exports).where(ledger_exports.c.day == day)))
                    .mappings()
                    .first()
                )
                if recorded is not None:
                    _same_as_recorded(recorded, header, signature, day)
                if not target.exists():
                    os.replace(temp, target)
                    _sync_dir(archive_dir)
                elif not filecmp.cmp(target, temp, shallow=False):
                    raise ExportConflict(
                        f"{target} exists and differs from the export of {day} the ledger gives"
                        f" now; check it with `hoodrun ledger verify --export {target}`"
                    )
                if recorded is None:
                    await conn.execute(
                        insert(ledger_exports).values(
                            day=day,
                            path=str(target.resolve()),
                            first_seq=header["first_seq"],
                            last_seq=header["last_seq"],
                            last_hash=header["last_hash"],
                            signature=signature,
                            created_at=self._clock(),
                        )
                    )
        finally:
            temp.unlink(missing_ok=True)
        return target

    async def export_missing(
        self, archive_dir: Path, key: Ed25519PrivateKey, *, through: date | None = None
    ) -> list[Path]:
        """Export every day after the last exported one (or from the first entry's day) through
        ``through`` (default: yesterday, UTC), so a worker that was down catches up."""
        last_day = through or self._clock().astimezone(UTC).date() - _DAY
        async with self._store.connect() as conn:
            exported = await conn.scalar(select(func.max(ledger_exports.c.day)))
            first = await _neighbour(conn, last=False)
        if exported is not None:
            day = exported + _DAY
        elif first is not None:
            day = first.at.date()
        else:
            return []
        paths = []
        while day <= last_day:
            paths.append(await self.export_day(day, archive_dir, key))
            day += _DAY
        return paths

    async def verify_against_export(self, path: Path, public_key: Ed25519PublicKey) -> Verification:
        """Check the export on its own (``verify_export``), then that the ledger still holds
        exactly its entries, chained to the same hash, with no other entry dated that day."""
        result = verify_export(path, public_key)
        if not result.ok:
            return result
        header, lines = _read_export(path)
        day = date.fromisoformat(header["day"])
        start, end = _day_start(day), _day_start(day + _DAY)
        count, first, last = header["count"], header["first_seq"], header["last_seq"]
        async with self._store.connect() as conn:
            if count:
                async with aclosing(_scan(conn, after=first - 1, until=last)) as scan:
                    for n, line in enumerate(lines):
                        seq = line["seq"]
                        item = await anext(scan, None)
                        if item is None or item[0] > seq:
                            return _bad(n, seq, f"it is missing (the export of {day} holds it)")
                        if item[1] is None:
                            return _bad(n, seq, item[2])
                        held = item[1].line()
                        changed = [key for key in sorted(_LINE_KEYS) if held[key] != line[key]]
                        if changed:
                            return _bad(
                                n, seq, f"it differs from the export in {', '.join(changed)}"
                            )
                before = await _neighbour(conn, ledger_entries.c.seq < first, last=True)
                if first > 1 and (before is None or before.seq != first - 1):
                    return _bad(
                        count, first - 1, f"it is missing (the export of {day} chains to it)"
                    )
                after = await _neighbour(conn, ledger_entries.c.seq > last, last=False)
            else:
                before = await _neighbour(conn, ledger_entries.c.at < end, last=True)
                after = None
        for other in (before, after):
            if other is not None and start <= other.at < end:
                return _bad(count, other.seq, f"it is dated {day} but not in its export")
        if (GENESIS_HASH if before is None else before.hash) != header["prev_hash"]:
            seq = 1 if before is None else before.seq
            return _bad(count, seq, f"it is not the entry the export of {day} chains to")
        return Verification(
            ok=True,
            checked=count,
            first_bad=None,
            reason=f"{day}: {count} entries, as in the ledger",
            last_seq=last,
            last_hash=header["last_hash"],
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


async def _write_export(
    conn: AsyncConnection, day: date, temp: Path, key: Ed25519PrivateKey
) -> tuple[dict[str, Any], str]:
    """Write the export of ``day`` to ``temp``; return its header and signature. Refuses to sign
    a day whose entries do not chain."""
    start, end = _day_start(day), _day_start(day + _DAY)
    first, last, count = (
        await conn.execute(
            select(
                func.min(ledger_entries.c.seq), func.max(ledger_entries.c.seq), func.count()
            ).where(ledger_entries.c.at >= start, ledger_entries.c.at < end)
        )
    ).one()
    before = await _neighbour(conn, ledger_entries.c.at < start, last=True)
    prev_hash = GENESIS_HASH if before is None else before.hash
    if first is not None and (
        last - first + 1 != count or first != (1 if before is None else before.seq + 1)
    ):
        raise LedgerBroken(
            f"the entries of {day} do not follow each other: run `hoodrun ledger verify`"
        )
    final = (
        None if last is None else await _neighbour(conn, ledger_entries.c.seq == last, last=True)
    )
    last_hash = prev_hash if final is None else final.hash
    header = {
        "format": EXPORT_FORMAT,
        "day": day.isoformat(),
        "count": count,
        "first_seq": first,
        "last_seq": last,
        "prev_hash": prev_hash,
        "last_hash": last_hash,
    }
    digest = hashlib.sha256()
    with temp.open("wb") as out:

        def put(line: bytes) -> None:
            digest.update(line)
            out.write(line)

        put(_canonical(header) + b"\n")
        if first is not None:
            expected, link = first, prev_hash
            async with aclosing(_scan(conn, after=first - 1, until=last)) as scan:
                async for seq, entry, problem in scan:
                    if entry is None or seq != expected:
                        raise LedgerBroken(f"entry #{expected}: {problem or 'it is missing'}")
                    if entry.computed_hash() != entry.hash or entry.prev_hash != link:
                        raise LedgerBroken(
                            f"entry #{seq} does not chain: run `hoodrun ledger verify`"
                        )
                    put(_canonical(entry.line()) + b"\n")
                    expected, link = seq + 1, entry.hash
        signature = base64.b64encode(key.sign(digest.digest())).decode()
        trailer = {
            "algorithm": "ed25519",
            "sha256": digest.hexdigest(),
            "public_key_sha256": key_fingerprint(key.public_key()),
            "signature": signature,
        }
        out.write(_canonical(trailer) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    return header, signature


def _same_as_recorded(
    recorded: RowMapping, header: Mapping[str, Any], signature: str, day: date
) -> None:
    same = (
        recorded["first_seq"] == header["first_seq"]
        and recorded["last_seq"] == header["last_seq"]
        and recorded["last_hash"] == header["last_hash"]
    )
    if not same:
        raise ExportConflict(
            f"the ledger's entries of {day} differ from those exported on "
            f"{recorded['created_at']:%Y-%m-%d %H:%M} UTC: run `hoodrun ledger verify`"
        )
    if recorded["signature"] != signature:
        raise ExportConflict(
            f"{day} was exported signed with another key; restore {recorded['path']} from a copy"
        )


def _sync_dir(path: Path) -> None:
    # The rename is durable once the directory is flushed (POSIX; a no-op where unsupported).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def export_name(day: date) -> str:
    """The file name of the export of ``day``: ``ledger-YYYY-MM-DD.jsonl``."""
    return f"ledger-{day.isoformat()}.jsonl"


# --- checking an export --------------------------------------------------------------------------


class _ExportInvalid(Exception):
    def __init__(self, first_bad: int | None, reason: str) -> None:
        super().__init__(reason)
        self.first_bad = first_bad
        self.reason = reason


def _parse(line: bytes, number: int, keys: frozenset[str], what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise _ExportInvalid(None, f"line {number} ({what}) is not JSON") from None
    if not isinstance(value, dict) or set(value) != keys:
        raise _ExportInvalid(None, f"line {number} ({what}) does not have the fields it should")
    if _canonical(value) + b"\n" != line:
        raise _ExportInvalid(None, f"line {number} ({what}) was changed (not canonical JSON)")
    return value


def _header(line: bytes) -> dict[str, Any]:
    header = _parse(line, 1, _HEADER_KEYS, "header")
    if header["format"] != EXPORT_FORMAT:
        raise _ExportInvalid(None, f"format {header['format']!r}, not {EXPORT_FORMAT}")
    seqs = (header["first_seq"], header["last_seq"])
    typed = (
        isinstance(header["day"], str)
        and type(header["count"]) is int
        and all(s is None or type(s) is int for s in seqs)
        and isinstance(header["prev_hash"], str)
        and isinstance(header["last_hash"], str)
    )
    if not typed:
        raise _ExportInvalid(None, "the header's fields do not have their types")
    if (header["count"] == 0) != (seqs == (None, None)):
        raise _ExportInvalid(None, "the header's count and seqs disagree")
    if header["first_seq"] is not None and (header["first_seq"] == 1) != (
        header["prev_hash"] == GENESIS_HASH
    ):
        raise _ExportInvalid(None, "the header's prev_hash and first seq disagree")
    return header


def _check_line(
    line: bytes, number: int, expected: int, link: str, day: str
) -> tuple[dict[str, Any], str]:
    """Check one entry line against the chain so far; return it and its hash."""
    try:
        value = orjson.loads(line)
        seq = value["seq"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        raise _ExportInvalid(expected, f"line {number} is not an entry") from None
    if seq != expected:
        raise _ExportInvalid(expected, f"it is missing (line {number} holds entry #{seq})")
    if set(value) != _LINE_KEYS or _canonical(value) + b"\n" != line:
        raise _ExportInvalid(seq, f"line {number} was changed (not canonical JSON)")
    if _digest({key: value[key] for key in _CONTENT}) != value["hash"]:
        raise _ExportInvalid(seq, "its content does not match its hash (changed)")
    if value["prev_hash"] != link:
        raise _ExportInvalid(seq, "its prev_hash is not the hash of the entry before it")
    if not isinstance(value["at"], str) or value["at"][:10] != day:
        raise _ExportInvalid(seq, f"it is not dated {day}, the export's day")
    return value, value["hash"]


def verify_export(path: Path, public_key: Ed25519PublicKey) -> Verification:
    """Check an export file alone: every line canonical, each entry's hash and link, the header's
    count and hashes, and the Ed25519 signature by ``public_key``. Reads the file as a stream."""
    checked = 0
    try:
        with path.open("rb") as file:
            lines = iter(file)
            first_line = next(lines, b"")
            header = _header(first_line)
            day, digest = header["day"], hashlib.sha256(first_line)
            expected, link = header["first_seq"] or 1, header["prev_hash"]
            # The last line is the signature: each line is checked once the next one is read.
            previous: bytes | None = None
            for number, line in enumerate(lines, start=2):
                if previous is not None:
                    if header["count"] == 0:
                        raise _ExportInvalid(None, f"line {number - 1}: the day has no entries")
                    _, link = _check_line(previous, number - 1, expected, link, day)
                    digest.update(previous)
                    expected, checked = expected + 1, checked + 1
                previous = line
            if previous is None:
                raise _ExportInvalid(None, "the signature line is missing")
            _check_count(header, checked, expected - 1, link)
            _check_signature(previous, digest.digest(), public_key, checked + 2)
    except _ExportInvalid as exc:
        return _bad(checked, exc.first_bad, exc.reason)
    except OSError as exc:
        return _bad(checked, None, f"cannot read {path}: {exc.strerror}")
    return Verification(
        ok=True,
        checked=checked,
        first_bad=None,
        reason=f"{day}: {checked} entries, signed by key {key_fingerprint(public_key)[:16]}",
        last_seq=header["last_seq"],
        last_hash=header["last_hash"],
    )


def _check_count(header: Mapping[str, Any], count: int, last: int, last_hash: str) -> None:
    if header["count"] != count:
        raise _ExportInvalid(
            last + 1 if count < header["count"] else None,
            f"the header counts {header['count']} entries but the file holds {count}",
        )
    if count and header["last_seq"] != last:
        raise _ExportInvalid(None, f"the header says the last entry is #{header['last_seq']}")
    if header["last_hash"] != last_hash:
        raise _ExportInvalid(None, "the header's last_hash is not the last entry's hash")


def _check_signature(line: bytes, digest: bytes, public_key: Ed25519PublicKey, number: int) -> None:
    trailer = _parse(line, number, _TRAILER_KEYS, "signature")
    if trailer["algorithm"] != "ed25519":
        raise _ExportInvalid(None, f"algorithm {trailer['algorithm']!r}, not ed25519")
    if trailer["sha256"] != digest.hex():
        raise _ExportInvalid(None, "the file's SHA-256 is not the one signed: it was changed")
    expected = key_fingerprint(public_key)
    if trailer["public_key_sha256"] != expected:
        signer = str(trailer["public_key_sha256"])[:16]
        raise _ExportInvalid(None, f"signed by key {signer}, not {expected[:16]}")
    try:
        public_key.verify(base64.b64decode(trailer["signature"], validate=True), digest)
    except (InvalidSignature, binascii.Error, TypeError, ValueError):
        raise _ExportInvalid(None, "the signature is not valid") from None


def _read_export(path: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header and the entry lines of an export already checked by ``verify_export``."""
    with path.open("rb") as file:
        header: dict[str, Any] = orjson.loads(file.readline())

    def lines() -> Iterator[dict[str, Any]]:
        with path.open("rb") as file:
            file.readline()
            for _ in range(header["count"]):
                yield orjson.loads(file.readline())

    return header, lines()


# --- signing key ---------------------------------------------------------------------------------


def default_signing_key_path(config: Config) -> Path:
    """``billing.ledger.signing_key_file``, or ``data_dir/ledger-signing.pem``."""
    return config.billing.ledger.signing_key_file or config.data_dir / "ledger-signing.pem"


def default_archive_dir(config: Config) -> Path:
    """``billing.ledger.archive_dir``, or ``data_dir/ledger``."""
    return config.billing.ledger.archive_dir or config.data_dir / "ledger"


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PEM, unencrypted PKCS8)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"no ledger signing key at {path}") from None
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read the ledger signing key {path}: {exc.strerror}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({exc}); move it away to get a new one"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key"
        )
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``; made once (mode 0600) if the file does not exist.

    The new key is written to a temporary file and linked into place, so two processes starting
    at once end up with the same, complete key.
    """
    if path.exists():
        return load_signing_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    except OSError as exc:
        raise SigningKeyError(f"cannot write the ledger signing key {path}: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return load_signing_key(path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file holding the public key (or the private key)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_signing_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), for auditors to verify exports offline."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: which key signed an export."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()
