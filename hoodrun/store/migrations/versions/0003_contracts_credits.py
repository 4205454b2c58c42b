"""Contracts (an org's plan and terms over time), credit grants and the credit ledger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
# Exact amounts: NUMERIC on PostgreSQL; text on SQLite, whose NUMERIC is a float.
AMOUNT = sa.Numeric(20, 6).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "contracts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("tax_id", sa.String(64), nullable=True),
        sa.Column("business", sa.Boolean(), nullable=False),
        sa.Column("discount_percent", AMOUNT, nullable=False),
        sa.Column("minimum_override", AMOUNT, nullable=True),
        sa.Column("starts_at", TIME, nullable=False),
        sa.Column("ends_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_contracts"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_contracts_org_id_orgs"),
    )
    op.create_index("ix_contracts_org_id_starts_at", "contracts", ["org_id", "starts_at"])
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("remaining", AMOUNT, nullable=False),
        sa.Column("granted_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("note", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credit_grants"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_credit_grants_org_id_orgs"),
    )
    op.create_index("ix_credit_grants_org_id", "credit_grants", ["org_id"])
    op.create_table(
        "credit_ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("grant_id", sa.String(32), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_credit_ledger"),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["credit_grants.id"], name="fk_credit_ledger_grant_id_credit_grants"
        ),
    )
    op.create_index("ix_credit_ledger_grant_id", "credit_ledger", ["grant_id"])


def downgrade() -> None:
    op.drop_index("ix_credit_ledger_grant_id", table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_index("ix_credit_grants_org_id", table_name="credit_grants")
    op.drop_table("credit_grants")
    op.drop_index("ix_contracts_org_id_starts_at", table_name="contracts")
    op.drop_table("contracts")
