"""The ledger: appending, reading, verifying and exporting.

Appending serializes: on PostgreSQL with a transaction-scoped advisory lock, on SQLite by its write
transaction (``BEGIN IMMEDIATE``). ``seq`` is the primary key and ``hash`` is unique, so a writer
that bypassed the lock could only fail, never fork the chain. An entry is never dated before the
entry before it, nor inside a day already exported (a clock a little behind is clamped): each day
is one run of consecutive entries, and an export stays the whole day.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
import secrets
from collections.abc import Callable, Mapping
from contextlib import aclosing
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.ledger._chain import (
    _DAY,
    _LINE_KEYS,
    GENESIS_HASH,
    KINDS,
    LedgerEntry,
    Verification,
    _amount_text,
    _anchor_problem,
    _bad,
    _day_start,
    _entry,
    _lock,
    _neighbour,
    _plain,
    _scan,
)
from hoodrun.billing.ledger._errors import DayNotOver, ExportConflict, InvalidEntry
from hoodrun.billing.ledger._export import (
    _read_export,
    _same_as_recorded,
    _sync_dir,
    _write_export,
    export_name,
    verify_export,
)
from hoodrun.metering.money import Money
from hoodrun.store import Store
from hoodrun.store.tables import ledger_entries, ledger_exports

__all__ = ["Ledger"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
