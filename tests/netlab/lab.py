"""The test network: namespaces, veth links, TUN delay links, rate limits and random loss.

Every namespace, interface and nftables table carries the lab's prefix; addresses come only from
198.18.0.0/15 (IPv4) and 2001:2::/48 (IPv6), the benchmarking ranges, and no namespace has a default
route, so no test packet can leave the machine. `Lab` is a context manager whose exit stops the
processes it started and deletes its namespaces (which takes their links, qdiscs and tables with them),
also on failure or Ctrl-C; namespaces left behind by a lab whose process died are removed on start.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from tests.netlab.relay import RelayRecord, RelaySettings, read_log

__all__ = ["Lab", "Netns", "Link", "DelayedLink", "LabError", "shape_rate", "drop_random", "drop_pattern", "drop_all",
           "dropped_packets"]

ROOT = Path(__file__).resolve().parents[2]
_IPV4_POOL = ipaddress.ip_network("198.18.0.0/15")
_IPV6_POOL = ipaddress.ip_network("2001:2::/48")
_DEVICE_NAME_LIMIT = 15  # IFNAMSIZ - 1
_instances = itertools.count()


class LabError(RuntimeError):
    """A command that builds the lab failed; the message names the command and its stderr."""


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass(eq=False)
class Netns:
    """A network namespace of the lab; `run` and `popen` execute commands inside it."""

    name: str
    prefix: str
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace to completion; LabError (with its stderr) if `check` and it fails."""
        return _run(["ip", "netns", "exec", self.name, *argv], check=check, timeout=timeout)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a command in this namespace; the lab stops it at teardown if it is still running."""
        process = cast("subprocess.Popen[bytes]", subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw))
        self._processes.append(process)
        return process

    def sysctl(self, key: str, value: str) -> None:
        """Set a namespace sysctl such as net.ipv4.ip_forward (through /proc, no procps needed)."""
        self.run("sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}")

    def route(self, destination: str, via: str) -> None:
        """Add a route to `destination`, a prefix inside the lab's ranges, through the neighbour `via`."""
        if destination == "default":
            raise ValueError("a lab namespace never has a default route: name the destination prefix")
        network = ipaddress.ip_network(destination, strict=False)
        pool = _IPV4_POOL if network.version == 4 else _IPV6_POOL
        if not network.subnet_of(pool):  # type: ignore[arg-type]
            raise ValueError(f"{destination} lies outside the lab's {pool}: no default route, no way out")
        self.run("ip", "route", "add", destination, "via", via)

    def wait_listening(self, port: int, protocol: str = "tcp", timeout: float = 15) -> None:
        """Block until a socket in this namespace listens on `port` (tcp) or is bound to it (udp)."""
        flag = "-lt" if protocol == "tcp" else "-lu"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("ss", "-Hn", flag, f"sport = :{port}").stdout.strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listens on {protocol} port {port} in {self.name} after {timeout} s")

    def devices(self) -> list[str]:
        """The namespace's network devices besides loopback."""
        out = self.run("ip", "-o", "link", "show").stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        return [name for name in names if name != "lo"]


@dataclass(frozen=True)
class Link:
    """A point-to-point link between namespaces a and b, with its device names and addresses."""

    a: Netns
    b: Netns
    a_dev: str
    b_dev: str
    a_addr: str
    b_addr: str
    a_addr6: str
    b_addr6: str
    network: str  # the IPv4 prefix of the link
    network6: str  # the IPv6 prefix of the link


@dataclass(frozen=True)
class DelayedLink(Link):
    """A link through the TUN delay relay; `log()` is the relay's record of every packet so far."""

    settings: RelaySettings = field(default_factory=RelaySettings)
    log_path: Path = Path()
    relay: subprocess.Popen[str] | None = None

    def log(self) -> list[RelayRecord]:
        """The relay's per-packet records up to now (direction a_to_b is what a sent towards b)."""
        self._command("flush")
        return read_log(self.log_path)

    def set_delay(self, seconds: float) -> None:
        """Hold packets arriving from now on `seconds` in each direction (returns once the relay has it)."""
        self._command(f"delay {seconds!r}\nflush")

    def _command(self, text: str) -> None:
        relay = self.relay
        assert relay is not None and relay.stdin is not None and relay.stdout is not None
        relay.stdin.write(text + "\n")
        relay.stdin.flush()
        if relay.stdout.readline().strip() != "flushed":
            raise LabError(f"relay did not answer {text!r} (exit status {relay.poll()})")


class Lab:
    """A throwaway network of namespaces; use as a context manager (teardown on exit, always)."""

    def __init__(self, prefix: str, workdir: Path | None = None) -> None:
        self.prefix = prefix
        self.tag = f"{prefix}{os.getpid()}x{next(_instances)}"
        self._own_workdir = workdir is None  # a directory of our own making is removed at teardown
        self.workdir = workdir or Path(f"/tmp/{self.tag}")
        self.namespaces: list[Netns] = []
        self.relays: list[subprocess.Popen[str]] = []
        self._links = 0
        _remove_stale(prefix)

    def __enter__(self) -> Lab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process the lab started, then delete its namespaces (links, qdiscs, tables go too)."""
        for relay in self.relays:
            if relay.stdin is not None and not relay.stdin.closed:
                try:
                    relay.stdin.close()  # the relay exits when its stdin closes
                except OSError:
                    pass
        processes = [p for ns in self.namespaces for p in ns._processes]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        everything: list[subprocess.Popen[Any]] = [*processes, *self.relays]
        for process in everything:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()
        self.relays.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def namespace(self, role: str) -> Netns:
        """A new namespace with loopback up and no routes besides its links' own prefixes."""
        ns = Netns(f"{self.tag}-{role}", self.prefix)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        # No duplicate address detection: addresses are usable at once (the lab hands out unique ones).
        for scope in ("all", "default"):
            ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", "0")
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def router(self, role: str = "router") -> Netns:
        """A namespace that forwards IPv4 and IPv6 between its links (add routes with Netns.route)."""
        ns = self.namespace(role)
        ns.sysctl("net.ipv4.ip_forward", "1")
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        return ns

    def _next_link(self) -> tuple[int, str, str]:
        index = self._links
        self._links += 1
        a_dev, b_dev = f"{self.prefix}{index}a", f"{self.prefix}{index}b"
        if len(a_dev) > _DEVICE_NAME_LIMIT:
            raise LabError(f"device name {a_dev!r} is longer than {_DEVICE_NAME_LIMIT} characters")
        return index, a_dev, b_dev

    def _addresses(self, index: int) -> tuple[str, str, str, str, str, str]:
        if index >= _IPV4_POOL.num_addresses // 4:
            raise LabError("out of /30 link prefixes")
        network = ipaddress.ip_network((int(_IPV4_POOL.network_address) + 4 * index, 30))
        network6 = ipaddress.ip_network((int(_IPV6_POOL.network_address) + (index << 64), 64))
        return (str(network.network_address + 1), str(network.network_address + 2), str(network),
                str(network6.network_address + 1), str(network6.network_address + 2), str(network6))

    def link(self, a: Netns, b: Netns) -> Link:
        """A veth pair a<->b with a /30 from 198.18.0.0/15 and a /64 from 2001:2::/48."""
        index, a_dev, b_dev = self._next_link()
        a_addr, b_addr, network, a_addr6, b_addr6, network6 = self._addresses(index)
        _run(["ip", "link", "add", "name", a_dev, "netns", a.name, "type", "veth", "peer", "name", b_dev, "netns", b.name])
        for ns, dev, addr, addr6 in ((a, a_dev, a_addr, a_addr6), (b, b_dev, b_addr, b_addr6)):
            ns.run("ip", "addr", "add", f"{addr}/30", "dev", dev)
            ns.run("ip", "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
        # Static neighbours: no ARP or neighbour discovery delays a first packet, and no re-probe of a
        # stale entry ever adds to a measured round trip.
        for ns, dev, peer_ns, peer_dev, peer, peer6 in ((a, a_dev, b, b_dev, b_addr, b_addr6), (b, b_dev, a, a_dev, a_addr, a_addr6)):
            mac = json.loads(peer_ns.run("ip", "-j", "link", "show", "dev", peer_dev).stdout)[0]["address"]
            for address in (peer, peer6):
                ns.run("ip", "neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent")
        return Link(a, b, a_dev, b_dev, a_addr, b_addr, a_addr6, b_addr6, network, network6)

    def delayed_link(self, a: Netns, b: Netns, relay: RelaySettings | None = None) -> DelayedLink:
        """A point-to-point link a<->b through the TUN delay relay with these settings."""
        settings = relay or RelaySettings()
        index, a_dev, b_dev = self._next_link()
        a_addr, b_addr, network, a_addr6, b_addr6, network6 = self._addresses(index)
        log_path = self.workdir / f"relay-{index}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.netlab.relay", settings.to_json(), a.name, a_dev, b.name, b_dev, str(log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.relays.append(process)
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise LabError(f"relay for {a_dev}<->{b_dev} did not start (exit status {process.wait()})")
        for ns, dev, addr, peer, addr6, peer6 in ((a, a_dev, a_addr, b_addr, a_addr6, b_addr6),
                                                  (b, b_dev, b_addr, a_addr, b_addr6, a_addr6)):
            ns.run("ip", "addr", "add", addr, "peer", f"{peer}/32", "dev", dev)
            ns.run("ip", "-6", "addr", "add", addr6, "peer", f"{peer6}/128", "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
            # IPv6 installs no route to a peer address given before the device was up; state it.
            ns.run("ip", "-6", "route", "replace", f"{peer6}/128", "dev", dev)
        return DelayedLink(a, b, a_dev, b_dev, a_addr, b_addr, a_addr6, b_addr6, network, network6,
                           settings=settings, log_path=log_path, relay=process)


def _remove_stale(prefix: str) -> None:
    """Delete namespaces named by a lab of this prefix whose process no longer exists."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(prefix):].split("x", 1)[0]
        if name.startswith(prefix) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _run(["ip", "netns", "del", name], check=False)


def shape_rate(ns: Netns, dev: str, rate_bit: int, burst_bytes: int | None = None, limit_bytes: int | None = None) -> None:
    """Limit `dev`'s egress to `rate_bit` bit/s with a token bucket (tc tbf).

    Default burst: 4 ms of traffic but at least two full frames (tbf needs burst >= rate / HZ); default
    queue: 50 ms of traffic beyond the burst, so TCP sees a realistic bottleneck buffer.
    """
    burst = burst_bytes if burst_bytes is not None else max(2 * 1514, rate_bit // 8 // 250)
    limit = limit_bytes if limit_bytes is not None else burst + rate_bit // 8 // 20
    ns.run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
           "burst", str(burst), "limit", str(limit))


# Loss sits on the devices (nftables netdev ingress/egress hooks), not on the input/output hooks of the
# IP stack: a packet dropped at the output hook fails its sendto() with EPERM, which a prober reports
# as a send error, while real loss is silent. ARP and neighbour discovery are never dropped, or a lost
# resolution would turn one drop into a burst.
_NEIGHBOUR = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept"


def _drop(ns: Netns, verdict: str, direction: str, table: str) -> None:
    hooks = {"in": ["ingress"], "out": ["egress"], "both": ["ingress", "egress"]}.get(direction)
    if hooks is None:
        raise ValueError(f"direction must be 'in', 'out' or 'both', got {direction!r}")
    devices = ns.devices()
    if not devices:
        raise LabError(f"{ns.name} has no links to drop packets on")
    device_set = ", ".join(f'"{d}"' for d in devices)
    chains = "\n".join(
        f"chain {hook} {{ type filter hook {hook} devices = {{ {device_set} }} priority 0;\n"
        f"  meta protocol ip {verdict}\n  meta protocol ip6 {_NEIGHBOUR}\n  meta protocol ip6 {verdict}\n}}"
        for hook in hooks
    )
    name = f"{ns.prefix}_{table}"
    script = f"table netdev {name}\ndelete table netdev {name}\ntable netdev {name} {{\n{chains}\n}}\n"
    done = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"nft in {ns.name}: {done.stderr.strip()}\n{script}")


def drop_random(ns: Netns, percent: float, direction: str = "both") -> None:
    """Drop `percent` % of IP packets entering ("in"), leaving ("out") or both, on every link of `ns`."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0..100, got {percent}")
    # mod 10000 gives a resolution of 0.01 %.
    _drop(ns, f"numgen random mod 10000 < {round(percent * 100)} counter drop", direction, "loss")


def drop_pattern(ns: Netns, dropped: Collection[int], period: int, direction: str = "in") -> None:
    """Drop the IP packets whose position (from 0, modulo `period`, counted per hook and family) is in
    `dropped`: a loss realization fixed in advance, so a test knows exactly which packets are lost."""
    if not dropped:
        return  # nothing to drop (an empty set is not valid nftables syntax)
    if not all(0 <= i < period for i in dropped):
        raise ValueError(f"positions must lie within 0..{period - 1}")
    positions = ", ".join(str(i) for i in sorted(set(dropped)))
    _drop(ns, f"numgen inc mod {period} {{ {positions} }} counter drop", direction, "pattern")


def drop_all(ns: Netns, direction: str = "both") -> None:
    """Drop every IP packet entering, leaving or both on every link of `ns` (a blackhole: timeouts)."""
    _drop(ns, "counter drop", direction, "blackhole")


def dropped_packets(ns: Netns, family: str | None = None) -> int:
    """How many packets the lab's loss and blackhole rules in `ns` have dropped so far, of one
    family ("ip" or "ip6") or of both."""
    listing = json.loads(ns.run("nft", "-j", "list", "ruleset", "netdev").stdout)
    total = 0
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not rule or not rule["table"].startswith(f"{ns.prefix}_"):
            continue
        protocols = [e["match"]["right"] for e in rule["expr"] if e.get("match", {}).get("left") == {"meta": {"key": "protocol"}}]
        if family is None or family in protocols:
            total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return total
