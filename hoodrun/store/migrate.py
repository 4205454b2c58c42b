"""Schema migrations (Alembic, shipped inside the package)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text
from sqlalchemy.engine import Connection

from hoodrun.store.engine import async_url
from hoodrun.store.store import Store

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

# Any constant will do; it only has to be the same in every process that migrates.
_PG_MIGRATION_LOCK = 0x686F6F6472756E  # "hoodrun"


def alembic_config(url: str | None = None) -> AlembicConfig:
    """An Alembic config for the packaged migrations (``url`` goes to ``env.py`` untouched)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Not set_main_option: configparser would choke on the '%' of an encoded password.
        cfg.attributes["url"] = url
    return cfg


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (idempotent, safe from several processes at once).

    Creates the SQLite file's directory if needed. The whole upgrade is one transaction taken
    under a lock (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so a gateway and
    a CLI starting together do not both try to create the tables.
    """
    target = async_url(url)
    if target.get_backend_name() == "sqlite" and target.database not in (None, "", ":memory:"):
        Path(target.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    async with Store(url) as store, store.transaction() as conn:
        if store.dialect == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        await conn.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
