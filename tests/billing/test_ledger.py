"""The hash-chained money ledger and its signed exports, on SQLite and PostgreSQL; the
``hoodrun ledger`` command in real subprocesses."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from hoodrun.billing.ledger import (
    CREDITS_CONSUMED,
    CREDITS_GRANTED,
    GENESIS_HASH,
    INVOICE_ISSUED,
    PAYMENT_RECEIVED,
    REFUND_ISSUED,
    DayNotOver,
    ExportConflict,
    InvalidEntry,
    Ledger,
    LedgerBroken,
    LedgerEntry,
    SigningKeyError,
    export_name,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
    public_key_pem,
    verify_export,
)
from hoodrun.metering.money import Money
from hoodrun.metering.store import CreditBook
from hoodrun.store import Store, upgrade
from hoodrun.store.tables import ledger_entries, ledger_exports, orgs
from tests._stores import FakeClock

HOODRUN = Path(sys.executable).with_name("hoodrun")
DAY1 = date(2030, 1, 1)  # the FakeClock's day
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def usd(amount: str | int) -> Money:
    return Money.of(amount, "USD")


async def _fill(ledger: Ledger, clock: FakeClock, n: int = 4) -> list[LedgerEntry]:
    """``n`` entries of several kinds, an hour apart."""
    kinds = (INVOICE_ISSUED, PAYMENT_RECEIVED, REFUND_ISSUED, CREDITS_GRANTED)
    entries = []
    for i in range(n):
        entries.append(
            await ledger.append(
                kinds[i % len(kinds)],
                f"org_{i % 2}",
                f"ref_{i}",
                usd(f"{10 + i}.50"),
                {"n": i, "note": "ünïcode ok"},
            )
        )
        clock.advance(timedelta(hours=1))
    return entries


async def _tamper(store: Store, *statements: str) -> None:
    """Change rows as someone with the database's superuser would: on PostgreSQL, with the
    append-only trigger skipped for the transaction."""
    async with store.transaction() as conn:
        if store.dialect == "postgresql":
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            await conn.execute(text(statement))


async def _rewrite_from(store: Store, ledger: Ledger, seq: int, amount: str) -> None:
    """The careful attack: change entry ``seq``'s amount and recompute every hash after it."""
    entries = await ledger.entries(since_seq=seq - 1)
    prev = entries[0].prev_hash
    async with store.transaction() as conn:
        if store.dialect == "postgresql":
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for entry in entries:
            changed = dataclasses.replace(entry, prev_hash=prev)
            if entry.seq == seq:
                changed = dataclasses.replace(changed, amount=usd(amount))
            changed = dataclasses.replace(changed, hash=changed.computed_hash())
            await conn.execute(
                update(ledger_entries)
                .where(ledger_entries.c.seq == entry.seq)
                .values(
                    amount=changed.amount.amount,
                    prev_hash=changed.prev_hash,
                    hash=changed.hash,
                )
            )
            prev = changed.hash


# --- the chain -----------------------------------------------------------------------------------


async def test_a_chain_verifies_and_hashes_the_same_on_both_backends(
    store: Store, clock: FakeClock
) -> None:
    ledger = Ledger(store, clock)
    empty = await ledger.verify()
    assert (empty.ok, empty.checked, empty.last_hash) == (True, 0, None)

    first = await ledger.append(INVOICE_ISSUED, "org_a", "inv_1", usd("12.5"), {"lines": 2})
    # The documented canonical form, written out independently of the module.
    content = {
        "seq": 1,
        "at": "2030-01-01T12:00:00.000000+00:00",
        "kind": "invoice.issued",
        "org_id": "org_a",
        "reference": "inv_1",
        "amount": "12.500000",
        "currency": "USD",
        "details": {"lines": 2},
        "prev_hash": GENESIS_HASH,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    assert first.hash == hashlib.sha256(canonical).hexdigest()

    entries = [first, *await _fill(ledger, clock, 5)]
    stored = await ledger.entries()
    assert stored == entries  # read back (text on SQLite, NUMERIC on PostgreSQL): same hashes
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5, 6]
    assert all(b.prev_hash == a.hash for a, b in pairwise(stored))
    assert stored[2].details == {"n": 1, "note": "ünïcode ok"}
    result = await ledger.verify()
    assert (result.ok, result.checked, result.first_bad) == (True, 6, None)
    assert (result.last_seq, result.last_hash) == (6, entries[-1].hash)

    assert [e.seq for e in await ledger.entries(org_id="org_1")] == [3, 5]
    assert [e.seq for e in await ledger.entries(since_seq=4)] == [5, 6]
    assert [e.seq for e in await ledger.entries(limit=2, newest_first=True)] == [6, 5]
    assert len(await ledger.entries(day=DAY1)) == 6
    assert await ledger.entries(day=DAY1 + timedelta(days=1)) == []


async def test_entries_are_checked(store: Store, clock: FakeClock) -> None:
    ledger = Ledger(store, clock)
    with pytest.raises(InvalidEntry, match=r"kind 'invoice\.paid'"):
        await ledger.append("invoice.paid", "org_a", "inv_1", usd(1))
    with pytest.raises(InvalidEntry, match="negative"):
        await ledger.append(REFUND_ISSUED, "org_a", "re_1", usd(-1))
    with pytest.raises(InvalidEntry, match="more than 6 digits"):
        await ledger.append(PAYMENT_RECEIVED, "org_a", "pay_1", usd("0.0000001"))
    with pytest.raises(InvalidEntry, match="float"):
        await ledger.append(PAYMENT_RECEIVED, "org_a", "pay_1", usd(1), {"fx": {"rate": 1.5}})
    with pytest.raises(InvalidEntry, match="reference"):
        await ledger.append(PAYMENT_RECEIVED, "org_a", "x" * 65, usd(1))
    assert await ledger.entries() == []
    # Decimal, Money and times in details are kept as text; a zero never hashes as "-0".
    entry = await ledger.append(
        INVOICE_ISSUED,
        "org_a",
        "inv_0",
        Money.of("-0", "USD"),
        {"rate": Money.of("1.25", "EUR"), "on": DAY1},
    )
    assert entry.content()["amount"] == "0.000000"
    assert entry.details == {"rate": {"amount": "1.25", "currency": "EUR"}, "on": "2030-01-01"}
    assert (await ledger.verify()).ok


async def test_an_entry_commits_with_the_callers_transaction(
    store: Store, clock: FakeClock
) -> None:
    ledger = Ledger(store, clock)
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await conn.execute(insert(orgs).values(id="org_x", name="x", created_at=clock.now))
            await ledger.append(INVOICE_ISSUED, "org_x", "inv_1", usd(5), conn=conn)
            raise RuntimeError("the invoice failed after its entry was written")
    assert await ledger.entries() == []
    async with store.transaction() as conn:
        await conn.execute(insert(orgs).values(id="org_x", name="x", created_at=clock.now))
        entry = await ledger.append(INVOICE_ISSUED, "org_x", "inv_1", usd(5), conn=conn)
    assert entry.seq == 1  # the rolled-back entry left no gap
    assert await ledger.entries() == [entry]


async def test_time_never_runs_backwards_in_the_ledger(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    ledger = Ledger(store, clock)
    first = await ledger.append(INVOICE_ISSUED, "org_a", "inv_1", usd(5))
    clock.now -= timedelta(seconds=3)  # another process, its clock a little behind
    second = await ledger.append(PAYMENT_RECEIVED, "org_a", "pay_1", usd(5))
    assert second.at == first.at

    clock.now = datetime(2030, 1, 3, 0, 0, 1, tzinfo=UTC)
    assert (await ledger.export_day(DAY1, tmp_path, KEY)).name == export_name(DAY1)
    clock.now = datetime(2030, 1, 1, 23, 0, tzinfo=UTC)  # behind, into the exported day
    third = await ledger.append(REFUND_ISSUED, "org_a", "re_1", usd(1))
    assert third.at == datetime(2030, 1, 2, tzinfo=UTC)
    assert (await ledger.verify()).ok


async def test_concurrent_appends_make_one_chain(
    store: Store, database_url: str, clock: FakeClock
) -> None:
    async with Store(database_url) as other:  # a second pool, as another process would have
        ledgers = (Ledger(store, clock), Ledger(other, clock))
        await asyncio.gather(
            *(
                ledgers[i % 2].append(PAYMENT_RECEIVED, "org_a", f"pay_{i}", usd(i))
                for i in range(24)
            )
        )
    entries = await ledgers[0].entries()
    assert [e.seq for e in entries] == list(range(1, 25))
    assert {e.reference for e in entries} == {f"pay_{i}" for i in range(24)}
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in pairwise(entries))
    assert (await ledgers[0].verify()).checked == 24


# --- tampering -----------------------------------------------------------------------------------

CHANGED = "its content does not match its hash (changed)"
# Raw SQL against 5 entries: the first bad seq and what verify says of it.
TAMPERING: dict[str, tuple[list[str], int, str]] = {
    "amount edited": (["UPDATE ledger_entries SET amount = '99.500000' WHERE seq = 3"], 3, CHANGED),
    "details edited": (
        ["""UPDATE ledger_entries SET details = '{"n": 7, "note": "x"}' WHERE seq = 2"""],
        2,
        CHANGED,
    ),
    "kind edited": (["UPDATE ledger_entries SET kind = 'refund.issued' WHERE seq = 1"], 1, CHANGED),
    "middle row deleted": (
        ["DELETE FROM ledger_entries WHERE seq = 3"],
        3,
        "it is missing (the next is #4)",
    ),
    "first row deleted": (
        ["DELETE FROM ledger_entries WHERE seq = 1"],
        1,
        "it is missing (the next is #2)",
    ),
    "rows swapped": (
        [
            "UPDATE ledger_entries SET seq = -2 WHERE seq = 2",
            "UPDATE ledger_entries SET seq = 2 WHERE seq = 3",
            "UPDATE ledger_entries SET seq = 3 WHERE seq = -2",
        ],
        2,
        CHANGED,
    ),
    "row unreadable": (
        ["UPDATE ledger_entries SET currency = 'usd' WHERE seq = 4"],
        4,
        "it cannot be read (MoneyError: currency 'usd': an ISO 4217 code in capitals, like USD)",
    ),
    "row inserted before the first": (
        [
            "INSERT INTO ledger_entries (seq, at, kind, org_id, reference, amount, currency,"
            " details, prev_hash, hash) SELECT 0, at, kind, org_id, reference, amount, currency,"
            " details, prev_hash, 'x' FROM ledger_entries WHERE seq = 1"
        ],
        0,
        "it comes before the first entry (#1)",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_tampering_is_found_at_the_first_bad_entry(
    store: Store, clock: FakeClock, case: str
) -> None:
    ledger = Ledger(store, clock)
    await _fill(ledger, clock, 5)
    statements, first_bad, reason = TAMPERING[case]
    await _tamper(store, *statements)
    result = await ledger.verify()
    assert (result.ok, result.first_bad, result.reason) == (False, first_bad, reason)
    assert result.checked == max(first_bad - 1, 0)


async def test_deleting_the_tail_or_rewriting_hashes_is_found_against_the_exports(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    ledger = Ledger(store, clock)
    await _fill(ledger, clock, 4)
    clock.now = datetime(2030, 1, 2, 1, tzinfo=UTC)
    path = await ledger.export_day(DAY1, tmp_path, KEY)
    await _fill(ledger, clock, 1)  # entry #5, on the next day, not exported yet

    # Hashes recomputed from #2 on: the chain itself is consistent again...
    await _rewrite_from(store, ledger, 2, "1000.000000")
    result = await ledger.verify()
    # ...but day 1 no longer ends with the hash recorded when it was exported,
    assert not result.ok and result.first_bad == 4 and "rewritten" in result.reason
    # and the signed file names the first entry that differs.
    against = await ledger.verify_against_export(path, KEY.public_key())
    assert (against.ok, against.first_bad) == (False, 2)
    assert "amount" in against.reason
    with pytest.raises(ExportConflict, match="differ"):
        await ledger.export_day(DAY1, tmp_path, KEY)

    await _tamper(store, "DELETE FROM ledger_entries WHERE seq >= 4")
    result = await ledger.verify()
    assert (result.ok, result.first_bad) == (False, 4)
    assert "export of 2030-01-01 ends at entry #4" in result.reason


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = 0",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries",
    ],
)
async def test_postgresql_refuses_changes_to_entries(
    pg_clean: str, clock: FakeClock, statement: str
) -> None:
    async with Store(pg_clean) as store:
        ledger = Ledger(store, clock)
        await _fill(ledger, clock, 2)
        with pytest.raises(DBAPIError, match="append-only"):
            async with store.transaction() as conn:
                await conn.execute(text(statement))
        assert (await ledger.verify()).checked == 2


# --- exports -------------------------------------------------------------------------------------


async def test_exports_are_signed_chained_and_idempotent(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    ledger = Ledger(store, clock)
    day1 = await _fill(ledger, clock, 3)
    clock.now = datetime(2030, 1, 2, 9, tzinfo=UTC)
    day2 = await _fill(ledger, clock, 1)

    with pytest.raises(DayNotOver):
        await ledger.export_day(date(2030, 1, 2), tmp_path, KEY)
    clock.now = datetime(2030, 1, 5, 1, tzinfo=UTC)
    path = await ledger.export_day(DAY1, tmp_path, KEY)
    assert path == tmp_path / "ledger-2030-01-01.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header, trailer = lines[0], lines[-1]
    assert header == {
        "format": "hoodrun-ledger-export/1",
        "day": "2030-01-01",
        "count": 3,
        "first_seq": 1,
        "last_seq": 3,
        "prev_hash": GENESIS_HASH,
        "last_hash": day1[-1].hash,
    }
    assert lines[1:-1] == [entry.line() for entry in day1]
    assert trailer["public_key_sha256"] == key_fingerprint(KEY)
    result = verify_export(path, KEY.public_key())
    assert (result.ok, result.checked, result.last_hash) == (True, 3, day1[-1].hash)
    assert (await ledger.verify_against_export(path, KEY.public_key())).ok

    # Again: the same bytes (Ed25519 is deterministic), one record.
    original = path.read_bytes()
    assert await ledger.export_day(DAY1, tmp_path, KEY) == path
    assert path.read_bytes() == original
    # A lost file is written again, identical.
    path.unlink()
    await ledger.export_day(DAY1, tmp_path, KEY)
    assert path.read_bytes() == original
    with pytest.raises(ExportConflict, match="another key"):
        path.unlink()
        await ledger.export_day(DAY1, tmp_path, Ed25519PrivateKey.generate())

    # The next day chains to the first; a day without entries still gets its export.
    await ledger.export_day(DAY1, tmp_path, KEY)
    paths = await ledger.export_missing(tmp_path, KEY)
    assert [p.name for p in paths] == [
        "ledger-2030-01-02.jsonl",
        "ledger-2030-01-03.jsonl",
        "ledger-2030-01-04.jsonl",
    ]
    second = json.loads(paths[0].read_text().splitlines()[0])
    assert (second["prev_hash"], second["first_seq"], second["last_hash"]) == (
        day1[-1].hash,
        4,
        day2[0].hash,
    )
    empty = json.loads(paths[1].read_text().splitlines()[0])
    assert (empty["count"], empty["first_seq"], empty["prev_hash"], empty["last_hash"]) == (
        0,
        None,
        day2[0].hash,
        day2[0].hash,
    )
    for exported in paths:
        assert (await ledger.verify_against_export(exported, KEY.public_key())).ok
    assert await ledger.export_missing(tmp_path, KEY) == []
    async with store.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ledger_exports)) == 4
    assert (await ledger.verify()).ok


def _swap_lines(data: bytes, a: int, b: int) -> bytes:
    lines = data.splitlines(keepends=True)
    lines[a], lines[b] = lines[b], lines[a]
    return b"".join(lines)


def _drop_line(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:n] + lines[n + 1 :])


def _flip_after(data: bytes, marker: bytes) -> bytes:
    """One character changed: the first one after ``marker``."""
    at = data.index(marker) + len(marker)
    flipped = b"0" if data[at : at + 1] != b"0" else b"1"
    return data[:at] + flipped + data[at + 1 :]


def _resign(data: bytes) -> bytes:
    """The last line replaced by a valid signature of someone else's key."""
    other = Ed25519PrivateKey.generate()
    body = b"".join(data.splitlines(keepends=True)[:-1])
    digest = hashlib.sha256(body).digest()
    trailer = {
        "algorithm": "ed25519",
        "public_key_sha256": key_fingerprint(other),
        "sha256": digest.hex(),
        "signature": base64.b64encode(other.sign(digest)).decode(),
    }
    return body + json.dumps(trailer, sort_keys=True, separators=(",", ":")).encode() + b"\n"


ALTERATIONS: dict[str, tuple[Callable[[bytes], bytes], int | None, str]] = {
    "one byte of an amount": (lambda d: d.replace(b'"11.500000"', b'"11.600000"'), 2, "hash"),
    "one byte of a hash": (lambda d: _flip_after(d, b'"hash":"'), 1, "hash"),
    "an entry line dropped": (lambda d: _drop_line(d, 2), 2, "missing"),
    "the last entry dropped": (lambda d: _drop_line(d, 3), 3, "header counts"),
    "two entries swapped": (lambda d: _swap_lines(d, 1, 2), 1, "missing"),
    "the header's day": (
        lambda d: d.replace(b'"day":"2030-01-01"', b'"day":"2030-01-02"'),
        1,
        "dated",
    ),
    "the header's count": (lambda d: d.replace(b'"count":3', b'"count":2'), None, "header counts"),
    "a space added": (lambda d: d.replace(b'"org_0"', b'"org_0" ', 1), 1, "changed"),
    "the signature": (lambda d: d.replace(b'"signature":"', b'"signature":"AA'), None, "signature"),
    "another key's signature": (_resign, None, "signed by key"),
    "the signature line dropped": (lambda d: _drop_line(d, 4), 3, "header counts"),
}


async def test_any_change_to_an_export_is_found(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    ledger = Ledger(store, clock)
    await _fill(ledger, clock, 3)
    clock.now = datetime(2030, 1, 2, 1, tzinfo=UTC)
    path = await ledger.export_day(DAY1, tmp_path, KEY)
    original = path.read_bytes()
    for case, (alter, first_bad, words) in ALTERATIONS.items():
        altered = tmp_path / f"altered-{case.replace(' ', '-')}.jsonl"
        altered.write_bytes(alter(original))
        assert altered.read_bytes() != original, case
        result = verify_export(altered, KEY.public_key())
        assert not result.ok, case
        assert result.first_bad == first_bad, (case, result.reason)
        assert words in result.reason, (case, result.reason)
        against = await ledger.verify_against_export(altered, KEY.public_key())
        assert not against.ok, case
    other = verify_export(path, Ed25519PrivateKey.generate().public_key())
    assert not other.ok and "signed by key" in other.reason

    # An altered file in the archive is not overwritten by exporting again.
    altered_bytes = ALTERATIONS["one byte of an amount"][0](original)
    path.write_bytes(altered_bytes)
    with pytest.raises(ExportConflict, match="exists and differs"):
        await ledger.export_day(DAY1, tmp_path, KEY)
    assert path.read_bytes() == altered_bytes


async def test_an_export_is_compared_with_the_ledger(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    ledger = Ledger(store, clock)
    await _fill(ledger, clock, 3)
    clock.now = datetime(2030, 1, 2, 1, tzinfo=UTC)
    await _fill(ledger, clock, 1)
    clock.now = datetime(2030, 1, 3, 1, tzinfo=UTC)
    path = await ledger.export_day(DAY1, tmp_path, KEY)
    await _tamper(store, """UPDATE ledger_entries SET details = '{"n": 9}' WHERE seq = 2""")
    result = await ledger.verify_against_export(path, KEY.public_key())
    assert (result.ok, result.first_bad) == (False, 2)
    assert result.reason == "it differs from the export in details"
    await _tamper(store, "UPDATE ledger_entries SET amount = '1.000000' WHERE seq = 4")
    with pytest.raises(LedgerBroken, match="entry #4"):  # a broken day is never signed
        await ledger.export_day(date(2030, 1, 2), tmp_path, KEY)
    assert not (tmp_path / export_name(date(2030, 1, 2))).exists()
    await _tamper(store, "DELETE FROM ledger_entries WHERE seq = 3")
    assert (await ledger.verify_against_export(path, KEY.public_key())).first_bad == 2
    await _tamper(store, "DELETE FROM ledger_entries WHERE seq = 2")
    missing = await ledger.verify_against_export(path, KEY.public_key())
    assert (missing.first_bad, missing.reason) == (
        2,
        "it is missing (the export of 2030-01-01 holds it)",
    )


# --- signing key ---------------------------------------------------------------------------------


def test_the_signing_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger-signing.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert key_fingerprint(again) == key_fingerprint(key)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left

    pem = public_key_pem(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    public = tmp_path / "ledger.pub"
    public.write_text(pem)
    assert key_fingerprint(load_public_key(public)) == key_fingerprint(key)
    assert key_fingerprint(load_public_key(path)) == key_fingerprint(key)

    other = tmp_path / "ec.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_or_create_signing_key(other)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_or_create_signing_key(garbage)


# --- credits -------------------------------------------------------------------------------------


async def test_credit_grants_and_spends_are_in_the_ledger(store: Store, clock: FakeClock) -> None:
    async with store.transaction() as conn:
        await conn.execute(insert(orgs).values(id="org_c", name="c", created_at=clock.now))
    credits = CreditBook(store, clock)
    prepaid = await credits.grant("org_c", "prepaid", usd(100), note="invoice 7")
    promo = await credits.grant("org_c", "promotional", usd(20))
    await credits.consume("org_c", usd("30.25"), reference="inv_1")
    await credits.consume("org_c", usd(5), reference="r" * 100)
    await credits.consume("org_c", Money.of(5, "EUR"))  # no EUR credit: nothing spent
    with pytest.raises(Exception, match="no org"):
        await credits.grant("org_missing", "prepaid", usd(1))

    ledger = Ledger(store, clock)
    entries = await ledger.entries()
    assert [(e.kind, e.reference, e.amount) for e in entries[:3]] == [
        (CREDITS_GRANTED, prepaid.id, usd(100)),
        (CREDITS_GRANTED, promo.id, usd(20)),
        (CREDITS_CONSUMED, "inv_1", usd("30.25")),
    ]
    assert entries[0].details == {"kind": "prepaid", "expires_at": None, "note": "invoice 7"}
    assert entries[2].details["grants"] == [
        {"grant": promo.id, "amount": "20.00"},
        {"grant": prepaid.id, "amount": "10.25"},
    ]
    long_reference = entries[3]
    assert long_reference.details["reference"] == "r" * 100
    assert long_reference.reference.startswith("spend_")
    assert len(entries) == 4 and {e.org_id for e in entries} == {"org_c"}
    assert (await ledger.verify()).ok


# --- the command line ----------------------------------------------------------------------------


async def _hoodrun(config: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOODRUN_")}
    process = await asyncio.create_subprocess_exec(
        str(HOODRUN),
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "COLUMNS": "200"},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "hoodrun.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{tmp_path / 'hoodrun.db'}",
                "data_dir": str(tmp_path / "data"),
            }
        )
    )
    return path


async def test_cli_verifies_exports_and_lists(cli_config: Path, tmp_path: Path) -> None:
    code, _, err = await _hoodrun(cli_config, "ledger", "verify")
    assert (code, err.split(";")[-1].strip()) == (1, "run `hoodrun db upgrade`")
    await upgrade(f"sqlite:///{tmp_path / 'hoodrun.db'}")
    clock = FakeClock(datetime(2020, 3, 1, 10, tzinfo=UTC))
    async with Store(f"sqlite:///{tmp_path / 'hoodrun.db'}") as store:
        ledger = Ledger(store, clock)
        entries = await _fill(ledger, clock, 3)

        code, out, err = await _hoodrun(cli_config, "ledger", "verify")
        assert (code, out) == (0, f"ledger ok: 3 entries, last hash {entries[-1].hash}\n"), err

        code, out, err = await _hoodrun(cli_config, "ledger", "export", "--day", "2020-03-01")
        assert code == 0, err
        path = Path(out.strip())
        assert path == tmp_path / "data" / "ledger" / "ledger-2020-03-01.jsonl"
        key_file = tmp_path / "data" / "ledger-signing.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        code, out, err = await _hoodrun(cli_config, "ledger", "verify", "--export", str(path))
        assert code == 0, err
        assert out.splitlines()[1].startswith(f"export {path} ok: 2020-03-01: 3 entries")

        code, out, err = await _hoodrun(cli_config, "ledger", "list", "--org", "org_0", "--json")
        assert code == 0, err
        assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 3]

        await _tamper(store, "UPDATE ledger_entries SET amount = '99.000000' WHERE seq = 2")
        code, out, err = await _hoodrun(cli_config, "ledger", "verify", "--export", str(path))
        assert code == 1, err
        assert out.splitlines() == [
            "ledger broken at entry #2: its content does not match its hash (changed)",
            f"export {path} broken at entry #2: it differs from the export in amount",
        ]


async def test_cli_checks_exports_offline_with_the_public_key(
    cli_config: Path, tmp_path: Path
) -> None:
    code, pem, err = await _hoodrun(cli_config, "ledger", "public-key")
    assert code == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----"), err
    public = tmp_path / "ledger.pub"
    public.write_text(pem)
    key = load_or_create_signing_key(tmp_path / "data" / "ledger-signing.pem")
    assert key_fingerprint(load_public_key(public)) == key_fingerprint(key)

    clock = FakeClock(datetime(2020, 3, 1, 10, tzinfo=UTC))
    await upgrade(f"sqlite:///{tmp_path / 'hoodrun.db'}")
    async with Store(f"sqlite:///{tmp_path / 'hoodrun.db'}") as store:
        ledger = Ledger(store, clock)
        await _fill(ledger, clock, 2)
        clock.now = datetime(2020, 3, 2, tzinfo=UTC)
        path = await ledger.export_day(date(2020, 3, 1), tmp_path / "archive", key)
    path.write_bytes(path.read_bytes().replace(b'"10.500000"', b'"10.000000"'))
    args = ("ledger", "verify", "--offline", "--public-key", str(public), "--export", str(path))
    code, out, err = await _hoodrun(cli_config, *args)
    assert code == 1, err
    assert (
        out == f"export {path} broken at entry #1: its content does not match its hash (changed)\n"
    )
