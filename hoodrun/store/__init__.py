"""The business store: orgs, projects, plans, API keys' hashes and the audit log.

SQLite for one machine, PostgreSQL beyond; chosen by ``database_url``. The schema is managed by
the Alembic migrations shipped in ``hoodrun/store/migrations`` (``upgrade(url)``).
"""

from __future__ import annotations

from hoodrun.store.audit import AuditEntry, read_audit, write_audit
from hoodrun.store.engine import async_url, safe_url
from hoodrun.store.exceptions import StoreClosed, StoreError, StoreUnavailable
from hoodrun.store.ids import new_id
from hoodrun.store.migrate import upgrade
from hoodrun.store.store import Store

__all__ = [
    "AuditEntry",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "async_url",
    "new_id",
    "read_audit",
    "safe_url",
    "upgrade",
    "write_audit",
]
