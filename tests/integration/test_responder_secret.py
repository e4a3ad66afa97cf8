"""A real `qiancheng-responder` with a shared secret: transfers want its credential (curl and our probe),
the STAMP reflector runs in authenticated mode (RFC 8762 §4.2.2/§4.3.2), and a replaced secret file
takes effect without a restart. Nothing without the secret gets a byte of bandwidth or a reflection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qiancheng.core.responder_secret import authorization_header
from tests.conftest import Processes, free_port, script, wait_tcp
from tests.integration.helpers import require_tool

SECRET = "7d1e0c5b9a48f3e2d1c0b9a8f7e6d5c4"
OTHER_SECRET = "00112233445566778899aabbccddeeff"


@dataclass
class SecretResponder:
    processes: Processes
    secret_file: Path
    http_port: int
    stamp_port: int

    def counters(self) -> dict[str, str]:
        """The responder's counters from its stop log line (stops it)."""
        self.processes.stop_all()
        [line] = [ln for ln in self.processes.log("responder").splitlines() if "responder_stopped" in ln]
        return dict(part.split("=", 1) for part in line.split() if "=" in part)


def _start(directory: Path) -> SecretResponder:
    secret_file = directory / "responder.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    processes = Processes(directory)
    http_port, stamp_port = free_port(), free_port(socket.SOCK_DGRAM)
    processes.start(script("qiancheng-responder"), "--listen", "127.0.0.1", "--http-port", str(http_port),
                    "--echo-port", "0", "--dns-port", "0", "--stamp-port", str(stamp_port),
                    "--secret-file", str(secret_file), name="responder")
    wait_tcp(http_port)
    deadline = time.monotonic() + 15
    while "responder_started" not in processes.log("responder") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert " secret=on " in processes.log("responder")
    return SecretResponder(processes, secret_file, http_port, stamp_port)


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[SecretResponder]:
    started = _start(tmp_path)
    try:
        yield started
    finally:
        started.processes.stop_all()


def _curl(url: str, *headers: str) -> tuple[int, int, dict[str, Any] | None]:
    """(status, body bytes, JSON body or None) of a GET by curl."""
    curl = require_tool("curl")
    args = [curl, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code} %{size_download}", url]
    for header in headers:
        args += ["-H", header]
    done = subprocess.run(args, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, tail = done.stdout.rpartition(b"\n")
    status, size = (int(x) for x in tail.split())
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return status, size, parsed if isinstance(parsed, dict) else None


def _once(kind: str, target: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([script("qiancheng-probe"), "once", "--json", "--kind", kind, target, *args],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode in (0, 1), done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert isinstance(result, dict)
    return result


def _secret(tmp_path: Path, value: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(value)
    return str(path)


def test_transfers_want_the_credential_and_the_rest_stays_open(responder: SecretResponder) -> None:
    base = f"http://127.0.0.1:{responder.http_port}"
    status, _, body = _curl(f"{base}/download?bytes=1000")
    assert status == 401 and body is not None and "shared secret" in body["error"]
    status, _, body = _curl(f"{base}/download?bytes=1000", "Authorization: Bearer " + SECRET)  # the secret itself is not the credential
    assert status == 401
    status, size, _ = _curl(f"{base}/download?bytes=123456", "Authorization: " + authorization_header(SECRET.encode()))
    assert (status, size) == (200, 123456)
    assert _curl(f"{base}/ping")[0] == 200
    status, _, health = _curl(f"{base}/healthz")
    assert status == 200 and health is not None and health["refused"] == {"unauthorized": 2}
    # 401 comes before any other check: a stranger learns nothing of the caps
    assert _curl(f"{base}/download?bytes=99999999999999999999")[0] == 401


@pytest.mark.parametrize("kind", ["download", "upload"])
def test_the_probe_moves_bytes_only_with_the_secret(responder: SecretResponder, tmp_path: Path, kind: str) -> None:
    target = f"127.0.0.1:{responder.http_port}"
    common = ("--streams", "2", "--warmup", "200ms", "--duration", "500ms", "--max-bytes", "64MiB")
    refused = _once(kind, target, *common)
    assert refused["success"] is False and refused["error"] == "http_status"
    assert "HTTP 401" in refused["detail"] and "shared secret" in refused["detail"]
    result = _once(kind, target, *common, "--secret-file", str(responder.secret_file))
    assert result["success"] is True, result
    assert result["figures"]["throughput_bits_per_second"] > 0
    wrong = _once(kind, target, *common, "--secret-file", _secret(tmp_path, OTHER_SECRET, "other.secret"))
    assert wrong["success"] is False and "HTTP 401" in wrong["detail"]


def test_stamp_runs_authenticated_with_the_secret_and_nothing_else_is_reflected(
        responder: SecretResponder, tmp_path: Path) -> None:
    target = f"127.0.0.1:{responder.stamp_port}"
    train = ("--count", "10", "--packet-interval", "10ms", "--timeout", "500ms")
    result = _once("stamp", target, *train, "--secret-file", str(responder.secret_file))
    assert result["success"] is True, result
    assert result["figures"]["packets_received"] == 10 and result["figures"]["loss_ratio"] == 0
    assert result["info"]["mode"] == "authenticated" and result["info"]["size_bytes"] == "112"
    assert 0 < result["figures"]["rtt_median_seconds"] < 0.1

    unauthenticated = _once("stamp", target, *train)
    assert unauthenticated["success"] is False and unauthenticated["error"] == "loss"
    assert "answers only authenticated packets" in unauthenticated["detail"]
    padded = _once("stamp", target, *train, "--size", "200")  # long enough, but not signed
    assert padded["success"] is False
    wrong = _once("stamp", target, *train, "--secret-file", _secret(tmp_path, OTHER_SECRET, "other.secret"))
    assert wrong["success"] is False and "signed with its own secret" in wrong["detail"]

    counters = responder.counters()
    assert counters["stamp_reflected"] == "10"
    assert counters["stamp_dropped_short"] == "10"  # the 44-byte unauthenticated train
    assert counters["stamp_dropped_unauthenticated"] == "20"  # the padded one and the wrong key's


def test_a_replaced_secret_file_takes_effect_without_a_restart(responder: SecretResponder, tmp_path: Path) -> None:
    old = _secret(tmp_path, SECRET, "old.secret")
    new = _secret(tmp_path, OTHER_SECRET, "new.secret")
    replacement = responder.secret_file.with_suffix(".new")
    replacement.write_text(OTHER_SECRET)
    os.replace(replacement, responder.secret_file)
    time.sleep(1.1)  # the responder looks at the file once a second at most
    target = f"127.0.0.1:{responder.stamp_port}"
    train = ("--count", "5", "--packet-interval", "10ms", "--timeout", "500ms")
    assert _once("stamp", target, *train, "--secret-file", new)["success"] is True
    assert _once("stamp", target, *train, "--secret-file", old)["success"] is False
    base = f"http://127.0.0.1:{responder.http_port}/download?bytes=10"
    assert _curl(base, "Authorization: " + authorization_header(OTHER_SECRET.encode()))[0] == 200
    assert _curl(base, "Authorization: " + authorization_header(SECRET.encode()))[0] == 401
    assert "secret_reloaded" in responder.processes.log("responder")


def test_a_responder_with_an_unusable_secret_does_not_start(tmp_path: Path) -> None:
    short = _secret(tmp_path, "short", "short.secret")
    done = subprocess.run([script("qiancheng-responder"), "--listen", "127.0.0.1", "--http-port", "0", "--echo-port",
                           "0", "--dns-port", "0", "--stamp-port", "0", "--secret-file", short],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "secret_file" in done.stderr and "at least 16" in done.stderr
