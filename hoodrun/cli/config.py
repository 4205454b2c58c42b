"""``hoodrun config validate|diff``: config as code, checked before it is deployed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hoodrun.config import Config, ConfigError, load_config
from hoodrun.configdiff import diff

__all__ = ["app"]

app: typer.Typer = typer.Typer(no_args_is_help=True, help="Validate and compare config files.")

_File = Annotated[Path, typer.Argument(dir_okay=False, help="A HoodRun config file (YAML).")]
_Env = Annotated[
    bool,
    typer.Option(
        "--env/--no-env", help="Apply HOODRUN_* environment variables, as a process would."
    ),
]


def _load(path: Path, env: bool) -> Config:
    from hoodrun.cli import stderr

    try:
        return load_config(path, env=os.environ if env else {})
    except ConfigError as exc:
        stderr.print(escape(str(exc)))
        raise typer.Exit(2) from None


@app.command("validate")
def validate_command(file: _File, env: _Env = True) -> None:
    """Check a config file the way the platform loads it; exit 2 with every problem (file:line:
    setting: what is wrong) if it would not start."""
    from hoodrun.cli import stdout

    config = _load(file, env)
    upstreams = sum(len(chain.upstreams) for chain in config.chains)
    stdout.print(
        f"{escape(str(file))}: valid: {len(config.chains)} chains ({upstreams} upstreams), "
        f"{len(config.plans)} plans",
        soft_wrap=True,
    )


@app.command("diff")
def diff_command(old: _File, new: _File, env: _Env = True) -> None:
    """What changes from OLD to NEW, setting by setting; each line says whether a running
    gateway adopts it on SIGHUP (reload) or needs a restart. Exit 0 when they are the same, 1
    when they differ, 2 when either is invalid. Secrets are never printed."""
    from hoodrun.cli import stdout

    changes = diff(_load(old, env), _load(new, env))
    if not changes:
        stdout.print("no changes")
        return
    for change in changes:
        when = "reload" if change.reloadable else "restart"
        stdout.print(f"{escape(str(change))}  [dim]({when})[/dim]", soft_wrap=True)
    restart = sum(not change.reloadable for change in changes)
    stdout.print(
        f"{len(changes)} changes; "
        + (f"{restart} need a restart" if restart else "all are applied by a reload (SIGHUP)")
    )
    raise typer.Exit(1)
