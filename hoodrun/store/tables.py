"""The business tables (SQLAlchemy Core). The schema itself is created by the migrations.

org → projects → api_keys; plans mirror the config; audit_log records every change; alerts holds
what Alertmanager last said of each alert (by its fingerprint). org → contracts (the plan and
terms in force, with their history); org → credit_grants → credit_ledger (every grant and spend);
org → webhook_endpoints → webhook_deliveries (each event sent, or being sent, to an endpoint).
Key material is never stored: ``api_keys.hash`` is base64(SHA-256(key)) and ``start`` is the
short prefix people use to tell keys apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
    text,
)

from hoodrun.metering.money import ExactDecimal
from hoodrun.store.columns import JSONType, UTCDateTime

__all__ = [
    "alerts",
    "api_keys",
    "audit_log",
    "billing_accounts",
    "closing_snapshots",
    "contracts",
    "credit_grants",
    "credit_ledger",
    "credit_notes",
    "email_tokens",
    "fx_rates",
    "invoices",
    "jobs",
    "ledger_entries",
    "ledger_exports",
    "login_failures",
    "memberships",
    "metadata",
    "notices",
    "notification_prefs",
    "orgs",
    "plans",
    "projects",
    "reconciliations",
    "refunds",
    "service_instances",
    "sessions",
    "upstream_cordons",
    "users",
    "webhook_deliveries",
    "webhook_endpoints",
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
    # Payload capture (the request explorer): params and answers kept, cut at capture_bytes.
    Column("capture_payloads", Boolean, nullable=False, server_default=false()),
    Column("capture_bytes", Integer, nullable=False, server_default=text("2048")),
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
    # Where the change came from (the client's address) and the object before and after it.
    Column("ip", String(64), nullable=True),
    Column("before", JSONType, nullable=True),
    Column("after", JSONType, nullable=True),
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
    Column("reference", String(128), nullable=True, index=True),
)

# --- billing -------------------------------------------------------------------------------------

# The durable job queue (``hoodrun.jobs``): one row per job. ``status``: queued | running | done |
# dead (retries exhausted: the dead letters) | cancelled. A running job holds a lease
# (``locked_until``); a worker that dies mid-job leaves it to expire, and the job runs again.
# ``idempotency_key`` makes enqueueing the same work twice (a scheduled slot, a retry of the
# caller) one job.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("priority", Integer, nullable=False),  # higher runs first
    Column("payload", JSONType, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_seconds", Float, nullable=False),
    Column("run_at", UTCDateTime(), nullable=False),
    Column("locked_by", String(64), nullable=True),
    Column("locked_until", UTCDateTime(), nullable=True),
    Column("idempotency_key", String(128), nullable=True, unique=True),
    Column("last_error", String(2000), nullable=True),
    Column("result", JSONType, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Index("ix_jobs_status_priority_run_at", "status", "priority", "run_at"),
)

# Exchange rates as published on ``day`` (the bulletin's date) by ``source``: tcmb: 1 ``currency``
# = ``rate`` TRY (ForexBuying / Unit, ``quote`` TRY); ecb: 1 EUR = ``rate`` ``currency`` (``quote``
# EUR), as the ECB publishes them.
fx_rates = Table(
    "fx_rates",
    metadata,
    Column("source", String(8), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("quote", String(3), nullable=False),
    Column("rate", ExactDecimal(), nullable=False),
    Column("fetched_at", UTCDateTime(), nullable=False),
)

# What the providers need to know of an org beyond its contract, and their ids for it.
billing_accounts = Table(
    "billing_accounts",
    metadata,
    Column("org_id", String(32), ForeignKey("orgs.id"), primary_key=True),
    Column("legal_name", String(256), nullable=False),
    Column("email", String(256), nullable=False),
    Column("address", String(512), nullable=False),
    Column("city", String(64), nullable=False),
    Column("district", String(64), nullable=False),
    Column("tax_office", String(64), nullable=False),
    Column("stripe_customer_id", String(64), nullable=True),
    Column("parasut_contact_id", String(64), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# A period closed for an org: the usage counted and the lines rated, frozen (never updated);
# ``content_hash`` is SHA-256 over the canonical JSON of the rest. Usage counted late for an
# earlier period is in ``late_usage`` (and rated here).
closing_snapshots = Table(
    "closing_snapshots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("period", String(7), nullable=False),  # YYYY-MM
    Column("period_start", UTCDateTime(), nullable=False),
    Column("period_end", UTCDateTime(), nullable=False),
    Column("contract_id", String(32), nullable=False),
    Column("plan", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("usage", JSONType, nullable=False),
    Column("late_usage", JSONType, nullable=False),
    Column("lines", JSONType, nullable=False),
    Column("subtotal", ExactDecimal(), nullable=False),
    Column("tax", ExactDecimal(), nullable=False),
    Column("credits", ExactDecimal(), nullable=False),
    Column("total", ExactDecimal(), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("closed_at", UTCDateTime(), nullable=False),
    UniqueConstraint("org_id", "period"),
)

# Invoices: draft -> open -> paid | void | uncollectible; ``pending`` while the provider cannot
# be reached (retried by the job queue). Amounts are in ``currency``; when it differs from the
# snapshot's (TL in Turkey), ``original_*`` and ``fx_*`` say how it was converted.
invoices = Table(
    "invoices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False, index=True),
    Column(
        "snapshot_id", String(32), ForeignKey("closing_snapshots.id"), nullable=True, unique=True
    ),
    Column("period", String(7), nullable=False),
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("lines", JSONType, nullable=False),
    Column("subtotal", ExactDecimal(), nullable=False),
    Column("tax", ExactDecimal(), nullable=False),
    Column("credits", ExactDecimal(), nullable=False),
    Column("total", ExactDecimal(), nullable=False),
    Column("original_currency", String(3), nullable=True),
    Column("original_total", ExactDecimal(), nullable=True),
    Column("fx_rate", ExactDecimal(), nullable=True),
    Column("fx_source", String(8), nullable=True),
    Column("fx_date", Date, nullable=True),
    Column("issue_date", Date, nullable=False),
    Column("due_date", Date, nullable=False),
    Column("provider", String(16), nullable=False),  # stripe | parasut | none
    Column("provider_id", String(64), nullable=True),
    Column("provider_status", String(32), nullable=True),
    Column("provider_total", ExactDecimal(), nullable=True),
    Column("provider_document", String(64), nullable=True),  # e-Fatura / e-Arşiv id
    Column("last_error", String(2000), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("paid_at", UTCDateTime(), nullable=True),
)

# Credit notes (a correction of an issued invoice) and refunds (money paid back).
credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("invoice_id", String(32), ForeignKey("invoices.id"), nullable=False, index=True),
    Column("amount", ExactDecimal(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(256), nullable=False),
    Column("status", String(16), nullable=False),  # pending | issued
    Column("provider_id", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("issued_at", UTCDateTime(), nullable=True),
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("invoice_id", String(32), ForeignKey("invoices.id"), nullable=False, index=True),
    Column("amount", ExactDecimal(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(256), nullable=False),
    Column("status", String(16), nullable=False),  # pending | succeeded | failed
    Column("provider_id", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("done_at", UTCDateTime(), nullable=True),
)

# Each run of reconciliation per invoice: what the provider says against the snapshot.
reconciliations = Table(
    "reconciliations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("invoice_id", String(32), ForeignKey("invoices.id"), nullable=False, index=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("expected", ExactDecimal(), nullable=False),
    Column("reported", ExactDecimal(), nullable=True),
    Column("matched", Boolean, nullable=False),
    Column("detail", String(512), nullable=False),
)

# The money ledger: append-only, each entry carrying the SHA-256 of the one before (``prev_hash``)
# and its own (``hash``, over its content and ``prev_hash``). Updates and deletes are refused: by a
# trigger on PostgreSQL, by the store layer on SQLite.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("org_id", String(32), nullable=False, index=True),
    Column("reference", String(64), nullable=False),
    Column("amount", ExactDecimal(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("details", JSONType, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

# The signed daily exports of the ledger.
ledger_exports = Table(
    "ledger_exports",
    metadata,
    Column("day", Date, primary_key=True),
    Column("path", String(512), nullable=False),
    Column("first_seq", BigInteger, nullable=True),
    Column("last_seq", BigInteger, nullable=True),
    Column("last_hash", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Webhooks: an org's endpoints and the delivery log. ``secret`` signs the deliveries (HMAC), so
# it is stored as given to the org, not hashed. One delivery per endpoint and event.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("url", String(2048), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("events", JSONType, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("disabled_at", UTCDateTime(), nullable=True),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("endpoint_id", String(32), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String(2000), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    UniqueConstraint("endpoint_id", "event_id"),
)

# --- the control plane: people, their sessions, what they want to hear of, the fleet ----------

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),  # lower-cased
    Column("name", String(128), nullable=False),
    Column("password_hash", String(256), nullable=True),  # argon2id; NULL: single sign-on only
    Column("email_verified_at", UTCDateTime(), nullable=True),
    # An operator's role across every org and over the platform (NULL: a customer).
    Column("platform_role", String(16), nullable=True),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), primary_key=True, index=True),
    Column("role", String(16), nullable=False),  # viewer | ops | billing | admin
    Column("created_at", UTCDateTime(), nullable=False),
)

# Refresh tokens (one row per login, rotated on use): only their SHA-256 is stored.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=True),
    Column("refresh_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("ip", String(64), nullable=True),
)

# Emailed one-time tokens (verify an address, reset a password): only their SHA-256 is stored.
email_tokens = Table(
    "email_tokens",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("purpose", String(16), nullable=False),  # verify | reset
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime(), nullable=True),
)

# Failed logins, by account and by address: the throttle counts the recent ones.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("subject", String(400), nullable=False),  # "email:<address>" | "ip:<address>"
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_login_failures_subject_at", "subject", "at"),
)

# What a member of an org wants to hear of, and how (email; webhooks are per org).
notification_prefs = Table(
    "notification_prefs",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), primary_key=True),
    Column("event", String(32), primary_key=True),
    Column("email", Boolean, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Notices already sent (an org's 80% of its quota this month, ...): each is sent once.
notices = Table(
    "notices",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("event", String(32), nullable=False),
    Column("data", JSONType, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
)

# Upstreams an operator took out of rotation, by chain and upstream name; gateways poll it.
upstream_cordons = Table(
    "upstream_cordons",
    metadata,
    Column("chain", String(64), primary_key=True),
    Column("upstream", String(128), primary_key=True),
    Column("reason", String(500), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
)

# Each running process: its role, version and start, and (gateways) what it sees of its
# upstreams; written every few seconds, so the control center reads the whole fleet.
service_instances = Table(
    "service_instances",
    metadata,
    Column("id", String(64), primary_key=True),  # host:pid:start
    Column("role", String(16), nullable=False),  # gateway | api | worker
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False, index=True),
    Column("status", JSONType, nullable=False),
)
