"""Who is calling: the client IP (from the socket, or X-Forwarded-For behind trusted proxies)
and the operator's IP allow/deny lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["IpPolicy"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class IpPolicy:
    def __init__(
        self, trusted: Sequence[str] = (), allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> None:
        self._trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted
        )
        self._allow: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allow
        )
        self._deny: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in deny
        )
        self._verdicts: dict[str, bool] = {}
        self.active = bool(self._allow or self._deny)

    @staticmethod
    def _within(address: str, networks: tuple[_Network, ...]) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed in net for net in networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The socket peer, unless it is a trusted proxy: then the right-most address in
        X-Forwarded-For that is not itself a trusted proxy (addresses further left can be forged
        by the client)."""
        if not forwarded_for or not self._trusted or not self._within(peer, self._trusted):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if _parse(hop) is None:
                return peer  # garbage in the header: trust only the socket
            if not self._within(hop, self._trusted):
                return str(_parse(hop))
        return str(_parse(hops[0])) if hops else peer

    def allowed(self, address: str) -> bool:
        if not self.active:
            return True
        verdict = self._verdicts.get(address)
        if verdict is None:
            if self._within(address, self._deny):
                verdict = False
            else:
                verdict = not self._allow or self._within(address, self._allow)
            if len(self._verdicts) > 100_000:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict
