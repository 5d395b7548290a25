"""Which shard addresses a dispatcher may dial: registry contents are untrusted input. No sockets.

Anyone who can write the registry could otherwise register a "shard" at an
address of their choosing and receive real ticks. A shard's gRPC address
must be host:port with a valid port and a host inside `--shard-networks`
(CIDRs; loopback and private ranges by default). A host name counts only if
every address it resolves to is inside; resolutions are cached for `ttl_s`.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable

DEFAULT_NETWORKS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`a/b,c/d` → networks; ValueError on a malformed one (config parsing reports it)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def split_host_port(addr: str) -> tuple[str, int] | None:
    """("host", port) of `host:port` or `[v6]:port`; None if malformed or the port is out of range."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 literal must be bracketed
    return host, int(port)


def _resolve(host: str) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]


class AddressPolicy:
    """Answers "may we dial this shard address?"; counts what it refused."""

    def __init__(self, networks: Iterable[Network], resolve: Callable[[str], list[str]] = _resolve,
                 ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.networks = tuple(networks)
        self.resolve = resolve
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, bool]] = {}
        self.refused = 0

    def allows(self, addr: str) -> bool:
        parsed = split_host_port(addr)
        ok = parsed is not None and self._host_ok(parsed[0])
        self.refused += not ok
        return ok

    def _host_ok(self, host: str) -> bool:
        try:
            return self._inside(ipaddress.ip_address(host))
        except ValueError:
            pass  # a name
        now = self.clock()
        hit = self._cache.get(host)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            ips = self.resolve(host)
            ok = bool(ips) and all(self._inside(ipaddress.ip_address(ip.split("%")[0])) for ip in ips)
        except (OSError, ValueError, UnicodeError):
            ok = False
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[host] = (now, ok)
        return ok

    def _inside(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self.networks)
