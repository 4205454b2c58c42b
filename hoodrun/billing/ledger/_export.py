"""The signed daily exports.

Exports. ``ledger-YYYY-MM-DD.jsonl`` holds a header line (format, day, count, first and last seq,
``prev_hash``: the hash the day chains to, ``last_hash``), one line per entry (the hashed fields
plus ``hash``, canonical JSON), and a last line with the Ed25519 signature (base64) of the 32-byte
SHA-256 of every byte before it. Every line is canonical JSON, so any changed byte is found. To
check one without HoodRun (OpenSSL 3)::

    head -n -1 ledger-D.jsonl | openssl dgst -sha256 -binary > digest
    tail -n 1 ledger-D.jsonl | jq -r .signature | base64 -d > signature
    openssl pkeyutl -verify -pubin -inkey ledger.pub -rawin -in digest -sigfile signature

"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import aclosing
from datetime import date
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import RowMapping, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.ledger._chain import (
    _CONTENT,
    _DAY,
    _LINE_KEYS,
    GENESIS_HASH,
    Verification,
    _bad,
    _canonical,
    _day_start,
    _digest,
    _neighbour,
    _scan,
)
from hoodrun.billing.ledger._errors import ExportConflict, LedgerBroken
from hoodrun.billing.ledger._keys import key_fingerprint
from hoodrun.config import Config
from hoodrun.store.tables import ledger_entries

__all__ = ["EXPORT_FORMAT", "default_archive_dir", "export_name", "verify_export"]

EXPORT_FORMAT: Final = "hoodrun-ledger-export/1"

_HEADER_KEYS: Final = frozenset(
    ("format", "day", "count", "first_seq", "last_seq", "prev_hash", "last_hash")
)
_TRAILER_KEYS: Final = frozenset(("algorithm", "sha256", "public_key_sha256", "signature"))


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


def default_archive_dir(config: Config) -> Path:
    """``billing.ledger.archive_dir``, or ``data_dir/ledger``."""
    return config.billing.ledger.archive_dir or config.data_dir / "ledger"
