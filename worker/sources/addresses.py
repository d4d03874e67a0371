"""Which addresses an http(s) source may connect to, and host name lookups with a deadline.

Without `allow_private_hosts`, only globally routable unicast addresses pass. Even with it,
link-local addresses and the cloud metadata services (169.254.0.0/16 with 169.254.169.254,
fe80::/10, AWS's fd00:ec2::/32, GCP's fd20:ce::254, Alibaba's 100.100.100.200, Azure's
168.63.129.16, Oracle's 192.0.0.192) are always refused: they hand out credentials. An IPv6
address that carries an IPv4 address (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96, 6to4
2002::/16, NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48) is judged by the IPv4 address
it carries, so no such form smuggles a private or metadata address past the check.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

from producer.contracts import ErrorCode
from worker.sources.policy import SourceError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # IPv4 link-local: the metadata service of AWS, GCP, Azure, OpenStack...
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/32",  # AWS: instance metadata fd00:ec2::254, DNS, NTP
        "fd20:ce::254/128",  # GCP metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure WireServer
        "192.0.0.192/32",  # Oracle Cloud metadata
    )
)
"""Refused even when private hosts are allowed."""

_NOT_GLOBAL: tuple[Network, ...] = tuple(
    ipaddress.ip_network(network)
    for network in ("0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "2001::/23")
)
"""Special-purpose ranges that some Python releases' `is_global` still calls global."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LOW_32_BITS = 0xFFFF_FFFF


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 address(es) an IPv6 address may carry; empty when it carries none.

    The local-use NAT64 prefix can embed at bit 48 (RFC 6052 /48 layout) or in the low 32 bits
    (a /96 inside it): both candidates are returned.
    """
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    value = int(address)
    if address in _NAT64 or (address in _COMPATIBLE and value > 1):
        return [ipaddress.IPv4Address(value & _LOW_32_BITS)]
    if address in _NAT64_LOCAL:
        packed = address.packed
        return [
            ipaddress.IPv4Address(packed[6:8] + packed[9:11]),
            ipaddress.IPv4Address(value & _LOW_32_BITS),
        ]
    return []


def _judged(address: IpAddress) -> list[IpAddress]:
    if isinstance(address, ipaddress.IPv6Address):
        carried: list[IpAddress] = list(embedded_ipv4(address))
        if carried:
            return carried
    return [address]


def _is_global_unicast(address: IpAddress) -> bool:
    return (
        address.is_global
        and not (
            address.is_multicast
            or address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_reserved
            or address.is_unspecified
        )
        and not any(address in network for network in _NOT_GLOBAL + ALWAYS_REFUSED)
    )


def is_public_address(address: IpAddress) -> bool:
    """True for globally routable unicast addresses (embedded IPv4 judged as IPv4)."""
    return all(_is_global_unicast(judged) for judged in _judged(address))


def is_always_refused(address: IpAddress) -> bool:
    """True for link-local and cloud metadata addresses, in any IPv4-carrying form."""
    return any(judged in network for judged in _judged(address) for network in ALWAYS_REFUSED)


def allowed(address: IpAddress, allow_private_hosts: bool) -> bool:
    """Whether a connection to `address` passes the policy."""
    if is_always_refused(address):
        return False
    return allow_private_hosts or is_public_address(address)


def resolve(host: str, port: int, timeout_s: float) -> list[IpAddress]:
    """The addresses of `host`, looked up within `timeout_s` (an IP literal answers at once).

    `getaddrinfo` cannot be interrupted, so it runs in a daemon thread that is abandoned at the
    deadline (it ends when the system resolver gives up). Raises `SourceError`: FETCH_FAILED
    when the name does not resolve, TIMEOUT when the lookup takes too long.
    """
    answers: list[tuple] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answers.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            failures.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="dfd-dns", daemon=True).start()
    if not done.wait(timeout_s):
        raise SourceError(
            ErrorCode.TIMEOUT, f"looking up {host!r} took longer than {timeout_s:g} s"
        )
    if failures:
        failure = failures[0]
        if isinstance(failure, OSError | UnicodeError | ValueError):
            reason = getattr(failure, "strerror", None) or type(failure).__name__
            raise SourceError(ErrorCode.FETCH_FAILED, f"cannot resolve {host!r}: {reason}")
        raise failure
    addresses = [ipaddress.ip_address(answer[4][0].split("%", 1)[0]) for answer in answers]
    if not addresses:
        raise SourceError(ErrorCode.FETCH_FAILED, f"{host!r} has no addresses")
    return addresses
