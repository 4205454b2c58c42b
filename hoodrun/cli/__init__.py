"""The ``hoodrun`` command line: ``hoodrun [-c CONFIG] keys|db|config|gateway|up ...``.

The config is loaded lazily, once, by the first command that needs it (so ``--help`` works even
with a broken config file). Error conventions: an invalid config exits 2, a user error (unknown
plan, no such key, database unreachable) prints one line and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hoodrun.config import Config, ConfigError, load_config

__all__ = ["CliState", "app", "config_of", "fail", "main", "state_of", "stderr", "stdout"]

DEFAULT_CONFIG = Path("hoodrun.yaml")

app = typer.Typer(
    no_args_is_help=True,
    help="HoodRun: a self-hostable multi-chain JSON-RPC provider platform.",
    pretty_exceptions_enable=False,
)

# Shared consoles. Messages on stderr are not wrapped by rich, so an error stays on one line.
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliState:
    """What the root command leaves for its subcommands in ``ctx.obj``."""

    config_path: Path | None
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = self.read()
            except ConfigError as exc:
                stderr.print(escape(str(exc)))
                raise typer.Exit(2) from None
        return self._config

    def read(self) -> Config:
        """The config as its file says now (a reload); raises ``ConfigError``."""
        path = self.config_path
        if path is None and DEFAULT_CONFIG.exists():
            path = DEFAULT_CONFIG
        return load_config(path)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="HOODRUN_CONFIG",
            help="Config file (default: ./hoodrun.yaml if present, else built-in defaults).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    ctx.obj = CliState(config)


def config_of(ctx: typer.Context) -> Config:
    """The loaded config (exits 2 with the config error's message if it is invalid)."""
    return state_of(ctx).config()


def state_of(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):  # a sub-app invoked on its own, e.g. in a test
        state = CliState(None)
        ctx.find_root().obj = state
    return state


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    stderr.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def main() -> None:
    """Console script entry point."""
    app()


from hoodrun.cli import config as _config  # noqa: E402
from hoodrun.cli import db as _db  # noqa: E402
from hoodrun.cli import keys as _keys  # noqa: E402

app.add_typer(_keys.app, name="keys")
app.add_typer(_db.app, name="db")
app.add_typer(_config.app, name="config")

from hoodrun.cli import run as _run  # noqa: E402

_run.register(app)

from hoodrun.cli import usage as _usage  # noqa: E402

app.command("usage")(_usage.usage_command)

from hoodrun.cli import billing as _billing  # noqa: E402
from hoodrun.cli import jobs as _jobs  # noqa: E402
from hoodrun.cli import ledger as _ledger  # noqa: E402
from hoodrun.cli import logs as _logs  # noqa: E402
from hoodrun.cli import users as _users  # noqa: E402

app.add_typer(_jobs.app, name="jobs")
app.add_typer(_billing.app, name="billing")
app.add_typer(_ledger.app, name="ledger")
app.add_typer(_logs.app, name="logs")
app.add_typer(_users.app, name="users")
