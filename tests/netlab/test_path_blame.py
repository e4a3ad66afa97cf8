"""A breach blamed on the hop where it starts: a real probe traces and pings the chain's target and pushes
to a real collector judging an RTT objective; 10 ms of delay each way is then added on the r2-r3 link
(the relay), the RTT rises from hop 3 on, the breach opens, and the collector blames hop 3, in the transit
segment, by delay: in GET /api/v1/sla and in qiancheng_sla_blame. The probe and the collector run in the
probe's namespace, talking over its loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Processes, free_port
from tests.integration.helpers import Collector, wait_for
from tests.netlab.chain import build_chain
from tests.netlab.lab import DelayedLink, Lab, Netns
from tests.netlab.relay import RelaySettings

TOKEN = "token-for-blame-0123456789abcdef"


def get(ns: Netns, url: str) -> Any:
    return json.loads(ns.run("curl", "-sf", "--max-time", "5", url).stdout)


@pytest.mark.parametrize("family", ("ipv4", "ipv6"))
def test_a_breach_is_blamed_on_the_hop_where_the_delay_starts(lab: Lab, processes: Processes, tmp_path: Path,
                                                            family: str) -> None:
    chain = build_chain(lab, delay_r2_r3=RelaySettings(delay=0.0))
    link = chain.links["r2-r3"]
    assert isinstance(link, DelayedLink)
    target = chain.target_address(family)

    collector = Collector(processes, tmp_path, tokens={"p1": TOKEN}, port=free_port())
    profiles = tmp_path / "sla.yaml"
    profiles.write_text("profiles:\n  pool: {objectives: {rtt_p95: {max: 8ms}}}\n"
                        "assign:\n  - match: {target_class: cloud_pool}\n    profiles: [pool]\n")
    collector.extra = (f"sla: {{profiles: \"{profiles}\", windows: [3s], interval: 500ms, open_after: 2, "
                       f"close_after: 2, blame_edge_hops: 1}}\n")  # fmt: skip
    config = collector.write_config()
    processes.start("ip", "netns", "exec", chain.probe.name, PYTHON, "-m", "qiancheng.collector.main", "--config",
                    str(config), name="collector")
    chain.probe.wait_listening(collector.port)

    probe = tmp_path / "probe.yaml"
    probe.write_text(
        "probe: {id: p1, city: lishui, isp: test-isp}\n"
        f"collector: {{url: \"{collector.url}\", token: \"{TOKEN}\", batch_max_age: 300ms, backoff_base: 100ms, "
        "backoff_cap: 1s, timeout: 2s}\n"
        f"spool: {{path: \"{tmp_path / 'spool.db'}\"}}\n"
        "targets:\n"
        f"  - name: pool\n    address: \"{target}\"\n    class: cloud_pool\n    kinds:\n"
        "      icmp: {interval: 1s, count: 5, packet_interval: 20ms, timeout: 300ms}\n"
        "      path: {interval: 1s, rounds: 3, round_interval: 100ms, timeout: 500ms, max_ttl: 8}\n"
    )
    processes.start("ip", "netns", "exec", chain.probe.name, PYTHON, "-m", "qiancheng.probes.cli", "run", "--config",
                    str(probe), name="probe")

    def objective() -> dict[str, Any] | None:
        body = get(chain.probe, collector.url + "/api/v1/sla?target=pool")
        found = [o for o in body["objectives"] if o["indicator"] == "rtt_p95" and o["kind"] == "icmp"]
        return found[0] if found else None

    def traced() -> bool:
        paths = get(chain.probe, collector.url + "/api/v1/paths?probe=p1&target=pool")["paths"]
        return bool(paths) and paths[0]["latest"]["result"]["success"]

    wait_for(lambda: (o := objective()) is not None and o["status"] == "ok", 30, "the objective judged ok")
    wait_for(traced, 30, "a traced path stored")
    time.sleep(1.5)  # one more trace before the trouble
    link.set_delay(0.010)

    seen: list[dict[str, Any]] = []

    def blamed() -> bool:
        found = objective()
        if found is not None and found["status"] == "breach" and found.get("blame"):
            seen.append(found["blame"])
        return bool(seen)

    wait_for(blamed, 40, "the breach opened and blamed")
    blame = seen[-1]
    assert (blame["hop"], blame["address"], blame["segment"], blame["reason"]) == (3, chain.hops(family)[2], "transit", "rtt")
    assert 0.015 < blame["end_to_end_rise"] < 0.025 and 0.015 < blame["hop_rise"] < 0.025, blame
    assert blame["hops"] == 4 and blame.get("previous_address") is None
    metrics = chain.probe.run("curl", "-sf", collector.url + "/metrics").stdout
    wanted = (f'qiancheng_sla_blame{{address="{chain.hops(family)[2]}",city="lishui",hop="3",indicator="rtt_p95",'
              f'isp="test-isp",kind="icmp",probe="p1",profile="pool",reason="rtt",segment="transit",target="pool",'
              f'target_class="cloud_pool"}} 1.0')
    assert wanted in metrics, [line for line in metrics.splitlines() if "sla_blame" in line]
