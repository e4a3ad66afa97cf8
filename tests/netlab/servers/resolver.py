"""A real DNS resolver for tests: dnsmasq in a lab namespace, with a local zone and a broken one.

- A domain given in `domains`, and every name under it (so that each lookup can ask a name no cache
  holds), answers with its addresses (A and AAAA as the addresses are; NODATA for the other family);
  any other name under `LOCAL_ZONE` is NXDOMAIN: dnsmasq is authoritative for it (`local=`).
- Names under `BROKEN_ZONE` give SERVFAIL the way a real validating resolver does: dnsmasq validates
  DNSSEC against the root's trust anchor and forwards to an upstream (a second dnsmasq on the
  namespace's loopback) that answers the zone unsigned and refuses everything else, so the answer's
  chain of trust cannot be built and validation fails.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.netlab.lab import Netns
from tests.netlab.servers.probe_worker import RAISED_PRIORITY

__all__ = ["LOCAL_ZONE", "BROKEN_ZONE", "start_resolver"]

LOCAL_ZONE = "qiancheng.test"
BROKEN_ZONE = "broken.test"
_UPSTREAM = ("127.0.0.1", 5300)
_BROKEN_ZONE_ADDRESS = "198.18.255.11"  # only ever an answer, never contacted
# DS of the root zone's KSK-2017 (keytag 20326), as published by IANA.
_ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


def _dnsmasq(ns: Netns, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return ns.popen(*RAISED_PRIORITY, "dnsmasq", f"--conf-file={config}", "--keep-in-foreground", "--pid-file=",
                        "--log-facility=-", stdout=output, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_listening(ns: Netns, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until dnsmasq listens on TCP `port` (it opens UDP first), or fail naming its log."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with status {process.returncode}: {log.read_text()}")
        if ns.run("ss", "-Hltn", "sport", "=", f":{port}").stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"dnsmasq not listening on port {port} after 10 s: {log.read_text()}")


def start_resolver(ns: Netns, workdir: Path, listen: list[str], domains: dict[str, list[str]]) -> None:
    """Start the resolver on port 53 of the `listen` addresses of `ns`; the lab stops it at teardown."""
    upstream_config = workdir / "dnsmasq-upstream.conf"
    upstream_config.write_text(
        f"no-resolv\nno-hosts\nbind-interfaces\nlisten-address={_UPSTREAM[0]}\nport={_UPSTREAM[1]}\n"
        f"address=/{BROKEN_ZONE}/{_BROKEN_ZONE_ADDRESS}\n"
    )
    lines = ["no-resolv", "no-hosts", "bind-interfaces", "port=53", "log-queries",
             *(f"listen-address={address}" for address in listen),
             f"local=/{LOCAL_ZONE}/",
             *(f"address=/{domain}/{address}" for domain, addresses in domains.items() for address in addresses),
             f"server={_UPSTREAM[0]}#{_UPSTREAM[1]}", "dnssec", f"trust-anchor={_ROOT_TRUST_ANCHOR}"]  # fmt: skip
    config = workdir / "dnsmasq.conf"
    config.write_text("\n".join(lines) + "\n")
    for conf, port, name in ((upstream_config, _UPSTREAM[1], "upstream"), (config, 53, "resolver")):
        log = workdir / f"dnsmasq-{name}.log"
        _wait_listening(ns, port, _dnsmasq(ns, conf, log), log)
