"""The mails of the identity service: verify an address, reset a password, an invitation.

Each link carries a one-time token; the portal's pages (``/portal/verify``, ``/portal/reset``)
take it from the query string.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

__all__ = ["Mail", "invitation", "password_reset", "verification"]


@dataclass(frozen=True, slots=True)
class Mail:
    subject: str
    text: str
    html: str


def _link(public_url: str, page: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/portal/{page}?{urlencode({'token': token})}"


def _hours(seconds: int) -> str:
    hours = max(1, round(seconds / 3600))
    return "1 hour" if hours == 1 else f"{hours} hours"


def _mail(subject: str, lead: str, link: str, action: str, tail: str) -> Mail:
    text = f"{lead}\n\n{action}:\n{link}\n\n{tail}\n"
    html = (
        f"<p>{escape(lead)}</p>"
        f'<p><a href="{escape(link, quote=True)}">{escape(action)}</a></p>'
        f"<p>{escape(tail)}</p>"
    )
    return Mail(subject, text, html)


def verification(public_url: str, token: str, ttl: int) -> Mail:
    return _mail(
        "Verify your HoodRun email address",
        "Welcome to HoodRun. Please confirm that this address is yours.",
        _link(public_url, "verify", token),
        "Verify your address",
        f"The link works once and expires in {_hours(ttl)}. "
        "If you did not sign up, ignore this mail.",
    )


def password_reset(public_url: str, token: str, ttl: int) -> Mail:
    return _mail(
        "Reset your HoodRun password",
        "Someone (hopefully you) asked to reset the password of your HoodRun account.",
        _link(public_url, "reset", token),
        "Choose a new password",
        f"The link works once and expires in {_hours(ttl)}; using it logs out every session. "
        "If you did not ask for it, ignore this mail: your password stays as it is.",
    )


def invitation(public_url: str, token: str, ttl: int, org_name: str) -> Mail:
    return _mail(
        f"You are invited to {org_name} on HoodRun",
        f"You were added to the org {org_name} on HoodRun.",
        _link(public_url, "reset", token),
        "Choose your password",
        f"The link works once and expires in {_hours(ttl)}.",
    )
