"""``hoodrun users ...``: people's accounts from the operator's shell: list, create (the first
operator of an install: ``hoodrun users create --email ... --platform-role admin``), verify an
address without its mail, give or take a platform role, disable and enable.

Passwords are read from a prompt (or stdin with ``--password-stdin``), never from the command
line. Every change is audited as ``cli:<user>``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from hoodrun.cli import config_of, fail, stderr
from hoodrun.identity import IdentityError, IdentityService, User
from hoodrun.notify.mail import Mailer
from hoodrun.store import Store, StoreError, upgrade

__all__ = ["app"]

app: typer.Typer = typer.Typer(no_args_is_help=True, help="People's accounts and operators.")

T = TypeVar("T")
Email = Annotated[str, typer.Argument(help="The account's address.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
RoleOption = Annotated[
    str | None,
    typer.Option(
        "--platform-role",
        help="viewer, ops, billing or admin over every org (an operator); none: a customer.",
    ),
]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _run(ctx: typer.Context, action: Callable[[IdentityService], Awaitable[T]]) -> T:
    config = config_of(ctx)

    async def go() -> T:
        await upgrade(config.database_url)
        async with Store(config.database_url) as store:
            return await action(IdentityService(store, config, Mailer(config.smtp)))

    try:
        return asyncio.run(go())
    except (IdentityError, StoreError) as exc:
        fail(str(exc))


async def _found(identity: IdentityService, email: str) -> User:
    user = await identity.user_by_email(email)
    if user is None:
        raise IdentityError(f"no account has the address {email!r}; see `hoodrun users list`")
    return user


def _state(user: User) -> str:
    return "disabled" if user.disabled else ("verified" if user.email_verified else "unverified")


def _show(user: User, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(user), default=str))
        return
    role = user.platform_role or "-"
    state = _state(user)
    stderr.print(f"{user.id}  {user.email}  platform role: {role}  {state}")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        fail("the passwords differ")
    return first


@app.command("list")
def list_users(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every account, the oldest first."""
    found = _run(ctx, lambda identity: identity.users())
    if as_json:
        print(json.dumps([asdict(u) for u in found], default=str))
        return
    table = Table("id", "email", "name", "platform role", "state", "created (UTC)")
    for user in found:
        state = (
            "disabled" if user.disabled else ("verified" if user.email_verified else "unverified")
        )
        created = user.created_at.strftime("%Y-%m-%d %H:%M")
        table.add_row(user.id, user.email, user.name, user.platform_role or "-", state, created)
    Console(highlight=False).print(table)


@app.command("create")
def create_user(
    ctx: typer.Context,
    email: Annotated[str, typer.Option("--email", help="The account's address.")],
    name: Annotated[str, typer.Option("--name")] = "",
    platform_role: RoleOption = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No password: the person sets it by a reset.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make an account (verified), e.g. the install's first operator."""
    password = None if no_password else _password(password_stdin)

    async def make(identity: IdentityService) -> User:
        return await identity.create_user(
            email, password=password, name=name, platform_role=platform_role, actor=_actor()
        )

    _show(_run(ctx, make), as_json)


@app.command("verify")
def verify(ctx: typer.Context, email: Email, as_json: JsonOption = False) -> None:
    """Count the address verified without its mail (e.g. while smtp.host is unset)."""

    async def confirm(identity: IdentityService) -> User:
        user = await _found(identity, email)
        return await identity.confirm_email(user.id, actor=_actor())

    _show(_run(ctx, confirm), as_json)


@app.command("role")
def role(
    ctx: typer.Context,
    email: Email,
    platform_role: Annotated[
        str, typer.Argument(help="viewer, ops, billing, admin, or none (a customer again).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Give (or take, with ``none``) an operator's role over every org."""
    wanted = None if platform_role == "none" else platform_role

    async def change(identity: IdentityService) -> User:
        user = await _found(identity, email)
        return await identity.set_platform_role(user.id, wanted, actor=_actor())

    _show(_run(ctx, change), as_json)


def _toggle(disabled: bool) -> Callable[..., Any]:
    def command(ctx: typer.Context, email: Email, as_json: JsonOption = False) -> None:
        async def change(identity: IdentityService) -> User:
            user = await _found(identity, email)
            return await identity.set_disabled(user.id, disabled, actor=_actor())

        _show(_run(ctx, change), as_json)

    return command


app.command("disable", help="Refuse the account's logins and end its sessions.")(_toggle(True))
app.command("enable", help="Let the account log in again.")(_toggle(False))
