"""The control center's tests: the fleet, cordons (down to a running gateway with real anvil
nodes), the platform API's routes, service levels from known telemetry rows, the pages over
httpx (both store backends), and one headless Chromium test (Debian's chromium; see
../shared/reference/tooling.md)."""

from __future__ import annotations

import os
import shutil

from tests._stores import (  # noqa: F401 (fixtures)
    clock,
    database_url,
    pg_clean,
    pg_migrated,
    sqlite_template,
    store,
)
from tests.control.support import control  # noqa: F401 (fixture)

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
