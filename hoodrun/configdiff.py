"""Config as code: what changed between two configs, and what a reload may adopt.

``diff(old, new)`` compares two validated configs setting by setting. Lists of named things
(chains, upstreams, plans) are matched by name, so reordering them is no change and a renamed
upstream is one removed and one added. Secrets are never printed: the admin token shows as
``<hidden>``, passwords in URLs as ``***``, and so do a URL's user when it has no password (NATS
takes a token there), query strings and long token-like path segments (providers put API keys
there), in every URL of the config.

``reloadable(running, new)`` is the running config with only what a SIGHUP may change taken from
``new``: chains (with their upstreams), plans, the default plan, health checks and keyless public
access. The other changes are listed as needing a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from hoodrun.config import Config, ConfigError

__all__ = ["RELOADABLE", "Change", "diff", "reloadable"]

RELOADABLE = ("chains", "plans", "default_plan", "health", "public")
_SECRET_KEYS = frozenset({"admin_token"})
_TOKENISH = re.compile(r"^[A-Za-z0-9_\-]{20,}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # e.g. chains[eth].upstreams[eth-b].url
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None

    @property
    def section(self) -> str:
        return re.split(r"[.\[]", self.path, maxsplit=1)[0]

    @property
    def reloadable(self) -> bool:
        return self.section in RELOADABLE

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.path}: {_show(self.new)}"
        if self.kind == "removed":
            return f"- {self.path}: {_show(self.old)}"
        return f"~ {self.path}: {_show(self.old)} -> {_show(self.new)}"


def diff(old: Config, new: Config) -> list[Change]:
    """Every setting that differs, in the config's order."""
    changes: list[Change] = []
    _walk(_plain(old), _plain(new), "", changes)
    return changes


def reloadable(running: Config, new: Config) -> tuple[Config, list[Change]]:
    """(``running`` with the reloadable sections of ``new``, the changes a reload cannot make).

    The result is validated again as a whole, so a reload cannot produce a config that would
    not load (a plan removed while ``public.plan`` still names it, say)."""
    data = running.model_dump()
    fresh = new.model_dump()
    for section in RELOADABLE:
        data[section] = fresh[section]
    try:
        merged = Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise ConfigError(
            f"the reloadable part of the new config does not fit the running one ({problems}); "
            "restart to apply it"
        ) from None
    return merged, [change for change in diff(running, new) if not change.reloadable]


def _plain(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = config.model_dump(mode="json")
    return data


def _walk(old: Any, new: Any, path: str, out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key in _SECRET_KEYS:
                if old.get(key) != new.get(key):
                    out.append(Change(where, "changed", "<hidden>", "<hidden>"))
                continue
            if key not in new:
                out.append(Change(where, "removed", old=_mask(key, old[key])))
            elif key not in old:
                out.append(Change(where, "added", new=_mask(key, new[key])))
            else:
                _walk(old[key], new[key], where, out)
        return
    if _named(old, new):
        before = {item["name"]: item for item in old}
        after = {item["name"]: item for item in new}
        for name in list(before) + [n for n in after if n not in before]:
            where = f"{path}[{name}]"
            if name not in after:
                out.append(Change(where, "removed", old=_mask("", before[name])))
            elif name not in before:
                out.append(Change(where, "added", new=_mask("", after[name])))
            else:
                _walk(before[name], after[name], where, out)
        return
    if old != new:
        key = path.rsplit(".", 1)[-1]
        out.append(Change(path, "changed", _mask(key, old), _mask(key, new)))


def _named(old: Any, new: Any) -> bool:
    """Both are lists of named things (one may be empty)."""
    if not isinstance(old, list) or not isinstance(new, list) or not (old or new):
        return False
    return all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in old + new)


def _mask(key: str, value: Any) -> Any:
    """``value`` with secrets hidden (recursively)."""
    if isinstance(value, dict):
        return {
            k: "<hidden>" if k in _SECRET_KEYS and v is not None else _mask(k, v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(key, item) for item in value]
    # Every URL, whatever its key: credentials also sit in tracing.otlp_endpoint, say.
    if isinstance(value, str) and _URL.match(value):
        return _mask_url(value)
    return value


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    masked = url.split("#", 1)[0]
    if parts.query:
        masked = masked.split("?", 1)[0] + "?***"
    if parts.password:
        masked = masked.replace(f":{parts.password}@", ":***@", 1)
    elif parts.username and parts.password is None:  # a user alone is a token (nats://TOKEN@)
        masked = masked.replace(f"//{parts.username}@", "//***@", 1)
    for segment in parts.path.split("/"):
        if _TOKENISH.match(segment):
            masked = masked.replace(f"/{segment}", "/***")
    return masked


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return f"{{name: {value['name']}, ...}}"
    return str(value)
