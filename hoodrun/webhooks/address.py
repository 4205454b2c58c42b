"""Where an endpoint's URL may point.

``check_url`` is the book's own check, for every endpoint: an http(s) URL with a host, of up to
``MAX_URL`` characters. ``check_public_url`` adds, for an endpoint a *customer* registers, that
its host is a public address: the worker POSTs from inside the platform's network, and its
delivery log tells the org each attempt's status and error, so a URL naming ``127.0.0.1:6379``,
``10.0.0.5`` or ``169.254.169.254`` (a cloud's metadata service) would let a customer probe, and
reach, what runs next to the worker. Operators (a platform role, the admin token) may point an
endpoint anywhere: they run that network.

A host is resolved once, when the endpoint is made (a literal address as it is, a name through
the event loop's resolver, every address it has), and each address must be public: not
loopback, private, link-local, multicast, reserved, unspecified or otherwise not global
(``100.64.0.0/10`` too), an IPv6 address embedding an IPv4 one (IPv4-mapped, 6to4, NAT64) judged
by the IPv4 address as well. A name that resolves to a public address when it is registered and
to another later (DNS rebinding) is not caught: deliveries do not check again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from hoodrun.webhooks.errors import InvalidEndpoint

__all__ = ["MAX_URL", "RESOLVE_TIMEOUT", "Resolver", "check_public_url", "check_url"]

MAX_URL: Final = 2048
RESOLVE_TIMEOUT: Final = 5.0
"""Seconds a name may take to resolve before the URL is refused."""

Resolver = Callable[[str], Awaitable[Iterable[str]]]
"""A host name's addresses, as text (``getaddrinfo``'s by default)."""

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The first that applies names the refusal: the most telling first (ipaddress also counts
# 0.0.0.0, 127.0.0.1 and 240.0.0.0/4 as "private").
_KINDS: Final = (
    ("is_unspecified", "an unspecified"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_reserved", "a reserved"),
    ("is_private", "a private"),
)


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host, of up to ``MAX_URL`` characters."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise InvalidEndpoint(f"url {url!r}: an http(s) URL of up to {MAX_URL} characters")
    return url


async def _getaddrinfo(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _not_public(address: _Address) -> str | None:
    """Why ``address`` is not a public one (``"a loopback"``, ...), or ``None`` if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (why := _not_public(embedded)) is not None:
            return why
    for test, kind in _KINDS:
        if getattr(address, test):
            return kind
    if not address.is_global:  # such as 100.64.0.0/10, the carriers' and clouds' shared space
        return "a non-public"
    return None


async def _resolved(host: str, resolve: Resolver) -> list[_Address]:
    """``host``'s addresses; none when it does not resolve (in time)."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = list(await resolve(host))
        return [ipaddress.ip_address(text) for text in found]
    except (OSError, ValueError, TimeoutError):  # gaierror is an OSError, a bad IDNA name a
        return []  # UnicodeError (a ValueError)


async def check_public_url(url: str, *, resolve: Resolver | None = None) -> None:
    """Refuse (``InvalidEndpoint``, saying why) a URL that ``check_url`` refuses or whose host
    is, or resolves to, any address that is not public (see the module's docstring).

    ``resolve`` gives a name's addresses (default: the running loop's ``getaddrinfo``); a name
    that does not resolve within ``RESOLVE_TIMEOUT`` seconds is refused."""
    host = urlsplit(check_url(url)).hostname or ""
    try:
        addresses: list[_Address] = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolved(host, resolve or _getaddrinfo)
        if not addresses:
            raise InvalidEndpoint(
                f"url {url!r}: the host {host!r} does not resolve; a webhook must name a "
                "public host"
            ) from None
    for address in addresses:
        why = _not_public(address)
        if why is not None:
            said = host if host == str(address) else f"{host} ({address})"
            raise InvalidEndpoint(
                f"url {url!r}: {said} is {why} address; webhooks go to public addresses only"
            )
