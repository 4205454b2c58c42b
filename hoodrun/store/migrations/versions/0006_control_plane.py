"""The control plane: users, their org memberships and roles, sessions (refresh tokens),
emailed tokens, failed logins for the throttle, notification preferences and sent notices,
cordoned upstreams, the fleet's service instances; the audit log gains the client's address
and the object before and after each change; projects gain their payload capture setting (off,
2,048 bytes, for the projects that exist).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("ip", sa.String(64), nullable=True))
        batch.add_column(sa.Column("before", JSON, nullable=True))
        batch.add_column(sa.Column("after", JSON, nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("capture_payloads", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("capture_bytes", sa.Integer(), nullable=False, server_default=sa.text("2048"))
        )
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("email_verified_at", TIME, nullable=True),
        sa.Column("platform_role", sa.String(16), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "org_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_memberships_user_id_users"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_memberships_org_id_orgs"),
    )
    op.create_index("ix_memberships_org_id", "memberships", ["org_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=True),
        sa.Column("refresh_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_sessions_user_id_users"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_sessions_org_id_orgs"),
        sa.UniqueConstraint("refresh_hash", name="uq_sessions_refresh_hash"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "email_tokens",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("used_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("hash", name="pk_email_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_email_tokens_user_id_users"),
    )
    op.create_index("ix_email_tokens_user_id", "email_tokens", ["user_id"])
    op.create_table(
        "login_failures",
        sa.Column("id", BIGID, nullable=False, autoincrement=True),
        sa.Column("subject", sa.String(400), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_login_failures"),
    )
    op.create_index("ix_login_failures_subject_at", "login_failures", ["subject", "at"])
    op.create_table(
        "notification_prefs",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("email", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "org_id", "event", name="pk_notification_prefs"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_notification_prefs_user_id_users"
        ),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_notification_prefs_org_id_orgs"),
    )
    op.create_table(
        "notices",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_notices"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_notices_org_id_orgs"),
    )
    op.create_index("ix_notices_org_id", "notices", ["org_id"])
    op.create_table(
        "upstream_cordons",
        sa.Column("chain", sa.String(64), nullable=False),
        sa.Column("upstream", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("chain", "upstream", name="pk_upstream_cordons"),
    )
    op.create_table(
        "service_instances",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("seen_at", TIME, nullable=False),
        sa.Column("status", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_service_instances"),
    )
    op.create_index("ix_service_instances_seen_at", "service_instances", ["seen_at"])


def downgrade() -> None:
    for index, table in (
        ("ix_service_instances_seen_at", "service_instances"),
        ("ix_notices_org_id", "notices"),
        ("ix_login_failures_subject_at", "login_failures"),
        ("ix_email_tokens_user_id", "email_tokens"),
        ("ix_sessions_user_id", "sessions"),
        ("ix_memberships_org_id", "memberships"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "service_instances",
        "upstream_cordons",
        "notices",
        "notification_prefs",
        "login_failures",
        "email_tokens",
        "sessions",
        "memberships",
        "users",
    ):
        op.drop_table(table)
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("capture_bytes")
        batch.drop_column("capture_payloads")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("after")
        batch.drop_column("before")
        batch.drop_column("ip")
