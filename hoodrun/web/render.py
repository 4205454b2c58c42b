"""Server-rendered pages: one Jinja2 environment for the portal and the control center, and the
headers every page carries.

Templates live in ``hoodrun/web/templates`` (``base.html`` is the shared layout: blocks
``title``, ``nav``, ``content`` and ``scripts``). Every value is escaped (autoescape); series
for charts go into the page through ``|tojson``, which escapes ``<``, ``>`` and ``&``.

Scripts run only with the page's nonce (``Content-Security-Policy``): a template's inline
``<script nonce="{{ nonce }}">`` runs, anything injected does not. Pages are never cached
(``no-store``): a key or a webhook secret is shown once and must not outlive the page.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from hoodrun.metering.money import Money, minor_units

__all__ = ["environment", "page_headers", "render"]


def _money(value: Money | None) -> str:
    """``1,234.56 USD`` (the currency's minor unit), as the invoice documents write it."""
    if value is None:
        return "-"
    return f"{value.amount:,.{minor_units(value.currency)}f} {value.currency}"


def _unit_price(value: Money | None) -> str:
    """A unit price: the currency's minor unit at least, more where the price has them
    (0.005 USD stays 0.005)."""
    if value is None:
        return "-"
    exact = value.amount.quantize(Decimal("0.000001")).normalize()
    places = max(minor_units(value.currency), -int(exact.as_tuple().exponent))
    return f"{value.amount:,.{places}f} {value.currency}"


def _number(value: float | int | Decimal | None, places: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{places}f}"


def _quantity(value: Decimal | int | None) -> str:
    """A line's quantity as exact as the invoice document prints it (up to 6 decimals)."""
    if value is None:
        return "-"
    shown = Decimal(value).quantize(Decimal("0.000001")).normalize()
    return f"{shown:,f}" if shown != shown.to_integral_value() else f"{int(shown):,}"


def _percent(value: float | None, places: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{places}f}%"


def _when(value: datetime | date | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


@cache
def environment() -> jinja2.Environment:
    """The templates of ``hoodrun.web`` (shared by the portal and the control center)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hoodrun.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=_money,
        unit_price=_unit_price,
        number=_number,
        quantity=_quantity,
        percent=_percent,
        when=_when,
    )
    return env


def page_headers(nonce: str) -> dict[str, str]:
    """What every page sends: scripts only from here or with the nonce, no framing, no cache."""
    policy = (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        # htmx adds a <style> for its indicators; the layout has one too.
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # Verification and reset links carry a token in the URL: never sent elsewhere.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def render(request: Request, name: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """The template ``name`` as a page. ``csrf`` and ``viewer`` default to what the request's
    session resolved (see ``hoodrun.web.session``)."""
    nonce = secrets.token_urlsafe(16)
    context.setdefault("csrf", getattr(request.state, "csrf", ""))
    context.setdefault("viewer", getattr(request.state, "viewer", None))
    context.setdefault("path", request.url.path)
    html = environment().get_template(name).render(nonce=nonce, **context)
    return HTMLResponse(html, status_code=status, headers=page_headers(nonce))
