"""The mail of each notified event: a subject saying what happened to which org, a few lines of
text, and the same as HTML.

A mail is made from the event's ``data`` alone (what its webhook carries: ids, counts, amounts,
dates), so it holds nothing secret: no API key, no token, no signing secret.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Mail", "render"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_METER_NAMES = {"requests": "requests", "compute_units": "compute units"}


@dataclass(frozen=True, slots=True)
class Mail:
    subject: str
    text: str
    html: str


def _clean(value: object) -> str:
    """A value as one line of text (a name or id never breaks a header or a line)."""
    return _CONTROL.sub(" ", str(value)).strip()


def _money(value: object) -> str:
    if isinstance(value, Mapping):
        return f"{_clean(value.get('amount', '?'))} {_clean(value.get('currency', ''))}".strip()
    return _clean(value)


def _when(value: object) -> str:
    """An ISO time as ``2026-12-01 00:00 UTC`` (as given when it does not parse)."""
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return _clean(value)
    return at.strftime("%Y-%m-%d %H:%M UTC") if at.tzinfo is not None else _clean(value)


def _amount_of(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return _money(value) if isinstance(value, Mapping) else _clean(value)


def _usage(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    meter = str(data.get("meter", ""))
    percent = _clean(data.get("percent", "?"))
    resets = _when(data.get("resets_at", ""))
    if meter == "spending_cap":
        subject = f"{org} reached {percent}% of its spending cap"
        lines = [
            f"The org {org} has spent {_amount_of(data, 'used')} of its spending cap of "
            f"{_amount_of(data, 'limit')} in {_clean(data.get('period', 'this period'))}.",
            f"At 100% calls are refused until the cap resets at {resets}.",
        ]
        return subject, lines
    name = _METER_NAMES.get(meter, _clean(meter))
    subject = f"{org} used {percent}% of its monthly {name} quota"
    lines = [
        f"The org {org} has used {_clean(data.get('used'))} of its {_clean(data.get('limit'))} "
        f"{name} in {_clean(data.get('period', 'this period'))}.",
        f"At 100% calls are refused (HTTP 429) until the quota resets at {resets}.",
    ]
    return subject, lines


def _exhausted(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    meter = str(data.get("meter", ""))
    resets = _when(data.get("resets_at", ""))
    if meter == "spending_cap":
        subject = f"{org} reached its spending cap: calls are refused"
        used = f"spent {_amount_of(data, 'used')} of {_amount_of(data, 'limit')}"
    else:
        name = _METER_NAMES.get(meter, _clean(meter))
        subject = f"{org} used up its monthly {name} quota: calls are refused"
        used = f"used {_clean(data.get('used'))} of {_clean(data.get('limit'))} {name}"
    lines = [
        f"The org {org} has {used} in {_clean(data.get('period', 'this period'))}.",
        f"Calls with its keys are refused (HTTP 429) until {resets}, or until its plan changes.",
    ]
    return subject, lines


def _spike(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    try:
        rate = f"{float(data.get('rate', 0)) * 100:.0f}%"
    except (TypeError, ValueError):
        rate = "?"
    key = _clean(data.get("key_id", "?"))
    try:
        minutes = f"{int(data.get('window', 0)) // 60} minutes"
    except (TypeError, ValueError):
        minutes = "the last minutes"
    subject = f"{org}: {rate} of the calls with key {key} failed"
    lines = [
        f"{_clean(data.get('errors'))} of the {_clean(data.get('requests'))} calls made with the "
        f"key {key} (project {_clean(data.get('project_id', '?'))}) of the org {org} in the last "
        f"{minutes} did not succeed ({rate}).",
        "The usage page of the portal shows them by method and error.",
    ]
    return subject, lines


def _invoice_created(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    number = _clean(data.get("number", "?"))
    total = _amount_of(data, "total")
    subject = f"Invoice {number} for {org}: {total}"
    lines = [
        f"A new invoice, {number}, for the org {org}: {total} for "
        f"{_clean(data.get('period', '?'))}, due on {_clean(data.get('due_date', '?'))}.",
        "Credits are applied to it before it is charged; the portal's billing page has it.",
    ]
    return subject, lines


def _invoice_paid(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    number = _clean(data.get("number", "?"))
    total = _amount_of(data, "total")
    subject = f"Invoice {number} of {org} is paid"
    lines = [f"The invoice {number} of the org {org} ({total}) is paid. Thank you."]
    return subject, lines


def _credits_low(org: str, data: Mapping[str, Any]) -> tuple[str, list[str]]:
    balance = _amount_of(data, "balance")
    subject = f"{org}'s credit balance is low: {balance}"
    lines = [
        f"The credit balance of the org {org} is {balance}, below {_amount_of(data, 'threshold')}.",
        "Once it runs out, usage is invoiced.",
    ]
    return subject, lines


_RENDERERS: dict[str, Callable[[str, Mapping[str, Any]], tuple[str, list[str]]]] = {
    "usage.threshold": _usage,
    "quota.exhausted": _exhausted,
    "error_rate.spike": _spike,
    "invoice.created": _invoice_created,
    "invoice.paid": _invoice_paid,
    "credits.low": _credits_low,
}


def render(event: Mapping[str, Any], org_name: str, *, public_url: str | None = None) -> Mail:
    """The mail of ``event`` (a webhook payload: ``type``, ``data``, ...) for the org called
    ``org_name``; ``public_url``: the portal, linked for the member's choices. ``KeyError`` for an
    event that is not mailed."""
    kind = str(event["type"])
    org = _clean(org_name) or "your org"
    data = event.get("data") or {}
    subject, lines = _RENDERERS[kind](org, data)
    footer = f"You get this mail as a member of {org} on HoodRun."
    link = f"{public_url.rstrip('/')}/portal/notifications" if public_url else None
    text_footer = [footer, f"Choose the mail you get: {link}" if link else ""]
    text = "\n\n".join([*lines, "--", *[line for line in text_footer if line]]) + "\n"
    paragraphs = "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
    choose = (
        f' <a href="{html.escape(link, quote=True)}">Choose the mail you get</a>.' if link else ""
    )
    body = (
        "<!doctype html>\n<html><body>\n"
        f"{paragraphs}"
        f'<p style="color:#666;font-size:small">{html.escape(footer)}{choose}</p>\n'
        "</body></html>\n"
    )
    return Mail(subject=f"HoodRun: {subject}", text=text, html=body)
