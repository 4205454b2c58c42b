"""The money ledger: every money event as an append-only entry in one SHA-256 chain, and its
signed daily exports.

The package's modules, each with the part of the design it implements:

- ``_chain``: the entries, their canonical form and hash, and reading the chain;
- ``_ledger``: ``Ledger``, which appends (serialized), reads, verifies and exports;
- ``_export``: the signed daily export files, and checking one without the ledger;
- ``_keys``: the Ed25519 signing key;
- ``_errors``: the exceptions, ``LedgerError`` and its subclasses.

Import from ``hoodrun.billing.ledger``: the modules are internal.
"""

from __future__ import annotations

from hoodrun.billing.ledger._chain import (
    CREDIT_NOTE_ISSUED,
    CREDITS_CONSUMED,
    CREDITS_EXPIRED,
    CREDITS_GRANTED,
    GENESIS_HASH,
    INVOICE_ISSUED,
    INVOICE_VOIDED,
    KINDS,
    PAYMENT_RECEIVED,
    REFUND_ISSUED,
    LedgerEntry,
    Verification,
)
from hoodrun.billing.ledger._errors import (
    DayNotOver,
    ExportConflict,
    InvalidEntry,
    LedgerBroken,
    LedgerError,
    SigningKeyError,
)
from hoodrun.billing.ledger._export import (
    EXPORT_FORMAT,
    default_archive_dir,
    export_name,
    verify_export,
)
from hoodrun.billing.ledger._keys import (
    default_signing_key_path,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
)
from hoodrun.billing.ledger._ledger import Ledger

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
