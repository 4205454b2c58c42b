"""Checks on a new key's options, with messages that say what to fix."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from hoodrun.config import Config
from hoodrun.keys.errors import InvalidKeyOptions, UnknownChain, UnknownPlan

__all__ = ["DEFAULT_PROJECT", "KeyOptions", "check_label", "check_options", "check_org_name"]

DEFAULT_PROJECT = "default"

_ORIGIN = re.compile(r"^https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::\d{1,5})?$")
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """Validated and normalized options: lists are sorted and free of duplicates."""

    org: str
    project: str
    name: str | None
    plan: str | None
    chains: list[str] | None
    origins: list[str] | None
    methods_allow: list[str] | None
    methods_deny: list[str]
    rps: float | None
    burst: int | None
    expires_in: timedelta | None


def check_options(
    config: Config,
    *,
    org: str,
    project: str | None,
    plan: str | None,
    chains: Sequence[str] | None,
    origins: Sequence[str] | None,
    expires_in: timedelta | None,
    name: str | None,
    methods_allow: Sequence[str] | None,
    methods_deny: Sequence[str],
    rps: float | None,
    burst: int | None,
) -> KeyOptions:
    if plan is not None and config.plan(plan) is None:
        raise UnknownPlan(f"unknown plan {plan!r}: {_choices(p.name for p in config.plans)}")
    for chain in chains or ():
        if config.chain(chain) is None:
            raise UnknownChain(
                f"unknown chain {chain!r}: {_choices((c.name for c in config.chains), 'chains')}"
            )
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidKeyOptions("expires_in: must be positive, e.g. 30d")
    if rps is not None and not (math.isfinite(rps) and rps > 0):
        raise InvalidKeyOptions("rps: must be a number above 0")
    if burst is not None and burst < 1:
        raise InvalidKeyOptions("burst: must be at least 1")
    return KeyOptions(
        org=check_org_name("org", org),
        project=check_label("project", project if project is not None else DEFAULT_PROJECT),
        name=check_label("name", name, limit=128) if name is not None else None,
        plan=plan,
        chains=_non_empty("chains", chains, "for every chain"),
        origins=_non_empty("origins", [_origin(o) for o in origins], "for any origin")
        if origins is not None
        else None,
        methods_allow=_non_empty("methods_allow", _methods(methods_allow), "for the plan's rules")
        if methods_allow is not None
        else None,
        methods_deny=sorted(set(_methods(methods_deny))),
        rps=float(rps) if rps is not None else None,
        burst=burst,
        expires_in=expires_in,
    )


def _choices(names: Iterable[str], what: str = "plans") -> str:
    listed = ", ".join(names)
    if not listed:
        return f"no {what} are configured; declare them under '{what}:' in the config file"
    return f"choose one of {listed}"


def check_org_name(option: str, value: str) -> str:
    """An org's name: a label that cannot pass for an org's id (``org_...``), since the API
    takes either where it names an org."""
    value = check_label(option, value)
    if value.casefold().startswith("org_"):
        raise InvalidKeyOptions(f"{option}: 'org_' begins org ids; choose a name without it")
    return value


def check_label(option: str, value: str, *, limit: int = 64) -> str:
    """A name (org, project, key): trimmed, 1 to ``limit`` printable characters."""
    value = value.strip()
    if not value or len(value) > limit or not value.isprintable():
        raise InvalidKeyOptions(f"{option}: must be 1 to {limit} printable characters")
    return value


def _non_empty(option: str, values: Sequence[str] | None, leave_out: str) -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise InvalidKeyOptions(f"{option}: give at least one, or leave it out {leave_out}")
    return sorted(set(values))


def _origin(value: str) -> str:
    origin = value.strip().lower().rstrip("/")
    if not _ORIGIN.match(origin):
        raise InvalidKeyOptions(
            f"origins: {value!r} is not an origin; use scheme://host[:port], "
            "e.g. https://app.example.com"
        )
    return origin


def _methods(values: Sequence[str] | None) -> list[str]:
    methods = [m.strip() for m in values or ()]
    for method in methods:
        if not _METHOD.match(method):
            raise InvalidKeyOptions(f"methods: {method!r} is not a JSON-RPC method name")
    return methods
