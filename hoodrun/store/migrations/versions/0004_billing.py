"""Billing: the job queue, exchange rates, billing accounts, closing snapshots, invoices (one per
snapshot), credit notes, refunds, reconciliations and the hash-chained ledger with its signed
exports; credit spends indexed by reference.

On PostgreSQL a trigger refuses UPDATE and DELETE (and TRUNCATE) of ledger entries and closing
snapshots; on SQLite the store layer never issues them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)
# Exact amounts: NUMERIC on PostgreSQL; text on SQLite, whose NUMERIC is a float.
AMOUNT = sa.Numeric(20, 6).with_variant(sa.String(32), "sqlite")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_IMMUTABLE = ("ledger_entries", "closing_snapshots")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("run_at", TIME, nullable=False),
        sa.Column("locked_by", sa.String(64), nullable=True),
        sa.Column("locked_until", TIME, nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("last_error", sa.String(2000), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
    )
    op.create_index("ix_jobs_status_priority_run_at", "jobs", ["status", "priority", "run_at"])
    op.create_table(
        "fx_rates",
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("quote", sa.String(3), nullable=False),
        sa.Column("rate", AMOUNT, nullable=False),
        sa.Column("fetched_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("source", "currency", "day", name="pk_fx_rates"),
    )
    op.create_table(
        "billing_accounts",
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("legal_name", sa.String(256), nullable=False),
        sa.Column("email", sa.String(256), nullable=False),
        sa.Column("address", sa.String(512), nullable=False),
        sa.Column("city", sa.String(64), nullable=False),
        sa.Column("district", sa.String(64), nullable=False),
        sa.Column("tax_office", sa.String(64), nullable=False),
        sa.Column("stripe_customer_id", sa.String(64), nullable=True),
        sa.Column("parasut_contact_id", sa.String(64), nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("org_id", name="pk_billing_accounts"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_billing_accounts_org_id_orgs"),
    )
    op.create_table(
        "closing_snapshots",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("period_start", TIME, nullable=False),
        sa.Column("period_end", TIME, nullable=False),
        sa.Column("contract_id", sa.String(32), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("late_usage", JSON, nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("subtotal", AMOUNT, nullable=False),
        sa.Column("tax", AMOUNT, nullable=False),
        sa.Column("credits", AMOUNT, nullable=False),
        sa.Column("total", AMOUNT, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("closed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_closing_snapshots"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_closing_snapshots_org_id_orgs"),
        sa.UniqueConstraint("org_id", "period", name="uq_closing_snapshots_org_id_period"),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("snapshot_id", sa.String(32), nullable=True),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("subtotal", AMOUNT, nullable=False),
        sa.Column("tax", AMOUNT, nullable=False),
        sa.Column("credits", AMOUNT, nullable=False),
        sa.Column("total", AMOUNT, nullable=False),
        sa.Column("original_currency", sa.String(3), nullable=True),
        sa.Column("original_total", AMOUNT, nullable=True),
        sa.Column("fx_rate", AMOUNT, nullable=True),
        sa.Column("fx_source", sa.String(8), nullable=True),
        sa.Column("fx_date", sa.Date(), nullable=True),
        sa.Column("issue_date", sa.Date(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=True),
        sa.Column("provider_status", sa.String(32), nullable=True),
        sa.Column("provider_total", AMOUNT, nullable=True),
        sa.Column("provider_document", sa.String(64), nullable=True),
        sa.Column("last_error", sa.String(2000), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("sent_at", TIME, nullable=True),
        sa.Column("paid_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_invoices"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_invoices_org_id_orgs"),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["closing_snapshots.id"],
            name="fk_invoices_snapshot_id_closing_snapshots",
        ),
        sa.UniqueConstraint("number", name="uq_invoices_number"),
        sa.UniqueConstraint("snapshot_id", name="uq_invoices_snapshot_id"),
    )
    op.create_index("ix_invoices_org_id", "invoices", ["org_id"])
    # Credit spends are found by their reference (an invoice number) when a retry completes one.
    op.create_index("ix_credit_ledger_reference", "credit_ledger", ["reference"])
    corrections: tuple[tuple[str, list[sa.Column[Any]]], ...] = (
        (
            "credit_notes",
            [
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("provider_id", sa.String(64), nullable=True),
                sa.Column("created_at", TIME, nullable=False),
                sa.Column("issued_at", TIME, nullable=True),
            ],
        ),
        (
            "refunds",
            [
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("provider_id", sa.String(64), nullable=True),
                sa.Column("created_at", TIME, nullable=False),
                sa.Column("done_at", TIME, nullable=True),
            ],
        ),
    )
    for table, extra in corrections:
        op.create_table(
            table,
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("invoice_id", sa.String(32), nullable=False),
            sa.Column("amount", AMOUNT, nullable=False),
            sa.Column("currency", sa.String(3), nullable=False),
            sa.Column("reason", sa.String(256), nullable=False),
            *extra,
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.ForeignKeyConstraint(
                ["invoice_id"], ["invoices.id"], name=f"fk_{table}_invoice_id_invoices"
            ),
        )
        op.create_index(f"ix_{table}_invoice_id", table, ["invoice_id"])
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("invoice_id", sa.String(32), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("expected", AMOUNT, nullable=False),
        sa.Column("reported", AMOUNT, nullable=True),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reconciliations"),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name="fk_reconciliations_invoice_id_invoices"
        ),
    )
    op.create_index("ix_reconciliations_invoice_id", "reconciliations", ["invoice_id"])
    op.create_table(
        "ledger_entries",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_entries"),
        sa.UniqueConstraint("hash", name="uq_ledger_entries_hash"),
    )
    op.create_index("ix_ledger_entries_org_id", "ledger_entries", ["org_id"])
    op.create_table(
        "ledger_exports",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_ledger_exports"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION hoodrun_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        for table in _IMMUTABLE:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION hoodrun_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION hoodrun_refuse_change()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _IMMUTABLE:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS hoodrun_refuse_change()")
    op.drop_table("ledger_exports")
    op.drop_index("ix_ledger_entries_org_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_reconciliations_invoice_id", table_name="reconciliations")
    op.drop_table("reconciliations")
    for table in ("refunds", "credit_notes"):
        op.drop_index(f"ix_{table}_invoice_id", table_name=table)
        op.drop_table(table)
    op.drop_index("ix_credit_ledger_reference", table_name="credit_ledger")
    op.drop_index("ix_invoices_org_id", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("closing_snapshots")
    op.drop_table("billing_accounts")
    op.drop_table("fx_rates")
    op.drop_index("ix_jobs_status_priority_run_at", table_name="jobs")
    op.drop_table("jobs")
