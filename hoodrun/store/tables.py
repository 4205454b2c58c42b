"""The business tables (SQLAlchemy Core). The schema itself is created by the migrations.

org → projects → api_keys; plans mirror the config; audit_log records every change; alerts holds
what Alertmanager last said of each alert (by its fingerprint). org → contracts (the plan and
terms in force, with their history); org → credit_grants → credit_ledger (every grant and spend).
Key material is never stored: ``api_keys.hash`` is base64(SHA-256(key)) and ``start`` is the
short prefix people use to tell keys apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from hoodrun.metering.money import ExactDecimal
from hoodrun.store.columns import JSONType, UTCDateTime

__all__ = [
    "alerts",
    "api_keys",
    "audit_log",
    "contracts",
    "credit_grants",
    "credit_ledger",
    "metadata",
    "orgs",
    "plans",
    "projects",
]

# Deterministic constraint names, so later migrations can refer to them on both backends.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("plan", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("org_id", "name"),
)

plans = Table(
    "plans",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", JSONType, nullable=False),
    Column("synced_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("project_id", String(32), ForeignKey("projects.id"), nullable=False),
    Column("name", String(128), nullable=True),
    Column("hash", String(64), nullable=False),
    Column("start", String(16), nullable=False),
    Column("plan", String(64), nullable=True),
    Column("chains", JSONType, nullable=True),
    Column("origins", JSONType, nullable=True),
    Column("methods_allow", JSONType, nullable=True),
    Column("methods_deny", JSONType, nullable=False),
    Column("rps", Float, nullable=True),
    Column("burst", Integer, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False, index=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("disabled", Boolean, nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("rotated_from", String(32), ForeignKey("api_keys.id"), nullable=True),
    Index("ix_api_keys_hash", "hash", unique=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    # SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT there would stay NULL.
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", String(64), nullable=False, index=True),
    Column("details", JSONType, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # firing | resolved
    Column("severity", String(32), nullable=False),
    Column("labels", JSONType, nullable=False),
    Column("annotations", JSONType, nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=True),
    Column("generator_url", String(512), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False, index=True),
    Index("ix_alerts_status", "status"),
)

# An org's contracts, oldest to newest: a plan change ends one at ``change_at`` and starts the next.
contracts = Table(
    "contracts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("plan", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("country", String(2), nullable=True),  # ISO 3166 alpha-2
    Column("tax_id", String(64), nullable=True),
    Column("business", Boolean, nullable=False),
    Column("discount_percent", ExactDecimal(), nullable=False),
    Column("minimum_override", ExactDecimal(), nullable=True),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=True),  # open-ended when NULL
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_contracts_org_id_starts_at", "org_id", "starts_at"),
)

credit_grants = Table(
    "credit_grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # prepaid | promotional
    Column("currency", String(3), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
    Column("remaining", ExactDecimal(), nullable=False),
    Column("granted_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("note", String(256), nullable=False),
)

# Append-only: + amount when granted, - amount when spent; per grant the sum is ``remaining``.
credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("grant_id", String(32), ForeignKey("credit_grants.id"), nullable=False, index=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("reference", String(128), nullable=True),
)
