"""Initial business schema: orgs, projects, plans, api_keys, audit_log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from hoodrun.store: a migration must not change when the
# application's types do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("plan", sa.String(64), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orgs"),
        sa.UniqueConstraint("name", name="uq_orgs_name"),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_projects_org_id_orgs"),
        sa.UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),
    )
    op.create_table(
        "plans",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("synced_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_plans"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("start", sa.String(16), nullable=False),
        sa.Column("plan", sa.String(64), nullable=True),
        sa.Column("chains", JSON, nullable=True),
        sa.Column("origins", JSON, nullable=True),
        sa.Column("methods_allow", JSON, nullable=True),
        sa.Column("methods_deny", JSON, nullable=False),
        sa.Column("rps", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.Column("rotated_from", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_api_keys_org_id_orgs"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_api_keys_project_id_projects"
        ),
        sa.ForeignKeyConstraint(
            ["rotated_from"], ["api_keys.id"], name="fk_api_keys_rotated_from_api_keys"
        ),
    )
    op.create_index("ix_api_keys_hash", "api_keys", ["hash"], unique=True)
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_index("ix_api_keys_updated_at", "api_keys", ["updated_at"])
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_target_id", "audit_log", ["target_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_target_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_api_keys_updated_at", table_name="api_keys")
    op.drop_index("ix_api_keys_org_id", table_name="api_keys")
    op.drop_index("ix_api_keys_hash", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("plans")
    op.drop_table("projects")
    op.drop_table("orgs")
