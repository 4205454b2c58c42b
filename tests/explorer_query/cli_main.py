"""``hoodrun logs`` in a process of its own, registered as ``hoodrun.cli`` will register it:

python -m tests.explorer_query.cli_main -c CONFIG logs search --project ...
python -m tests.explorer_query.cli_main seed CONFIG PROJECT ORG   (the CLI tests' rows)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer

from hoodrun.cli import _root
from hoodrun.cli.logs import app as logs_app
from hoodrun.config import load_config
from hoodrun.telemetry.store import open_analytics
from tests.explorer_query.support import (
    cli_lines,
    cli_records,
    create_tables,
    insert_lines,
    insert_records,
)


async def seed(config_path: Path, project: str, org: str) -> None:
    store = open_analytics(load_config(config_path, env={}))
    try:
        await create_tables(store)
        await insert_lines(store, cli_lines(project, org))
        await insert_records(store, cli_records(project, org))
    finally:
        await store.aclose()


def main() -> None:
    if sys.argv[1:2] == ["seed"]:
        asyncio.run(seed(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
        return
    app = typer.Typer()
    app.callback()(_root)
    app.add_typer(logs_app, name="logs")
    app(prog_name="hoodrun")


if __name__ == "__main__":
    main()
