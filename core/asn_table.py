"""A local table of prefixes and the AS numbers that originate them: the path kind names each hop's AS
without asking anyone on the network.

The file holds one `PREFIX ASN` pair per line (`198.18.0.0/24 64500`, `2001:db8::/32 AS64501`); `#`
starts a comment. Operators export it from their IPAM or from a BGP table dump. A lookup is the
longest matching prefix, one dictionary probe per prefix length present in the table.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass, field

__all__ = ["AsnTable", "read_asn_table"]

_MAX_ENTRIES = 2_000_000  # a full BGP table is about 1.2 million prefixes of both families


@dataclass(frozen=True, slots=True)
class AsnTable:
    """Prefixes by IP version and length, each mapped to its AS number."""

    # version -> prefix length -> network address as an integer -> AS number
    _by_length: dict[int, dict[int, dict[int, int]]] = field(default_factory=lambda: {4: {}, 6: {}})

    def __len__(self) -> int:
        return sum(len(networks) for lengths in self._by_length.values() for networks in lengths.values())

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, asn: int) -> None:
        self._by_length[network.version].setdefault(network.prefixlen, {})[int(network.network_address)] = asn

    def lookup(self, address: str) -> int | None:
        """The AS number of the longest prefix holding `address`, None if no prefix does."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return None
        lengths = self._by_length[ip.version]
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        for length in sorted(lengths, reverse=True):
            asn = lengths[length].get(value >> (bits - length) << (bits - length) if length else 0)
            if asn is not None:
                return asn
        return None


def read_asn_table(path: str) -> AsnTable:
    """The table in `path`; ValueError naming the file, the line and why when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> AsnTable:
    """The table as the file is now (the cache key carries its modification time and size)."""
    table = AsnTable()
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                words = line.partition("#")[0].split()
                if not words:
                    continue
                if len(words) != 2:
                    raise ValueError(f"{path}:{number}: expected `PREFIX ASN`, got {line.strip()[:80]!r}")
                table.add(_network(words[0], path, number), _asn(words[1], path, number))
                if len(table) > _MAX_ENTRIES:
                    raise ValueError(f"{path}:{number}: more than {_MAX_ENTRIES} prefixes")
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason})") from None
    return table


def _network(text: str, path: str, number: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise ValueError(f"{path}:{number}: bad prefix {text[:80]!r}: {error}") from None


def _asn(text: str, path: str, number: int) -> int:
    digits = text[2:] if text[:2].upper() == "AS" else text
    if not digits.isdigit() or not 0 <= int(digits) <= 0xFFFFFFFF:
        raise ValueError(f"{path}:{number}: bad AS number {text[:80]!r} (0..4294967295, `AS` prefix allowed)")
    return int(digits)
