"""The probe registry: the config's probes imported, tokens looked up by hash, rotation with a grace
period, and a change made by another process (the command line) seen on the next lookup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from qiancheng.collector.config import ProbeEntry
from qiancheng.collector.records import RegistryEntry
from qiancheng.collector.registry import Identity, ProbeRegistry, RegistryError, hash_token

NOW = 1_800_000_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def enrolled(probe_id: str, token: str, state: Literal["active", "revoked"] = "active") -> RegistryEntry:
    return RegistryEntry(probe_id, "lishui", "chinatelecom", "enrolled", state, hash_token(token), None, None, NOW, NOW)


def entry(probe_id: str, *tokens: str) -> ProbeEntry:
    hashes = [hash_token(t) for t in tokens]
    return ProbeEntry(id=probe_id, token_sha256=hashes[0] if len(hashes) == 1 else hashes)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ProbeRegistry]:
    opened = ProbeRegistry(str(tmp_path / "registry.db"), Clock())
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("header", "probe"),
    [
        ("Bearer test-token-0001", "p1"),
        ("bearer   test-token-0001  ", "p1"),
        ("Bearer wrong-token", None),
        ("Basic dGVzdC10b2tlbg==", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_a_bearer_token_finds_its_probe(registry: ProbeRegistry, header: str | None, probe: str | None) -> None:
    registry.import_config([entry("p1", "test-token-0001")])
    assert registry.probe_for(header) == probe


def test_the_configs_change_over_accepts_both_tokens(registry: ProbeRegistry) -> None:
    registry.import_config([entry("p1", "old-token", "new-token"), entry("p2", "p2-token")])
    assert [registry.probe_for(f"Bearer {t}") for t in ("old-token", "new-token", "p2-token", "x")] == ["p1", "p1", "p2", None]


def test_import_follows_the_config_and_keeps_a_revocation(registry: ProbeRegistry) -> None:
    registry.import_config([entry("p1", "t1"), entry("p2", "t2")])
    registry.revoke("p2")
    assert registry.identify("Bearer t2") == Identity("p2", "", "", revoked=True)
    assert registry.probe_for("Bearer t2") is None
    revoked = registry.import_config([entry("p1", "t1-new"), entry("p2", "t2")])  # p1's token changed
    assert revoked == ["p2"]
    assert registry.probe_for("Bearer t1") is None and registry.probe_for("Bearer t1-new") == "p1"
    registry.import_config([entry("p1", "t1-new")])  # p2 left the config: gone from the registry
    assert [e.id for e in registry.entries()] == ["p1"]
    assert registry.active_ids() == {"p1"}


def test_a_change_by_another_connection_is_seen_on_the_next_lookup(tmp_path: Path) -> None:
    collector = ProbeRegistry(str(tmp_path / "registry.db"), Clock())
    command_line = ProbeRegistry(str(tmp_path / "registry.db"), Clock())
    try:
        collector.import_config([entry("p1", "t1")])
        assert collector.probe_for("Bearer t1") == "p1"
        command_line.revoke("p1")
        assert collector.probe_for("Bearer t1") is None  # no restart, no reload call
        assert collector.refresh() is False  # the lookup already reloaded; nothing changed since
    finally:
        collector.close()
        command_line.close()


def test_rotation_keeps_the_old_token_for_its_grace_period_only(tmp_path: Path) -> None:
    clock = Clock()
    registry = ProbeRegistry(str(tmp_path / "registry.db"), clock)
    try:
        registry.import_config([])
        registry.file.add_enrolled(enrolled("e1", "first"))
        registry.refresh(force=True)
        token = registry.rotate("e1", grace_ns=3600 * 10**9)
        assert len(token) >= 40 and token != "first"
        assert registry.identify(f"Bearer {token}") == Identity("e1", "lishui", "chinatelecom", revoked=False)
        assert registry.probe_for("Bearer first") == "e1"
        clock.now += 3600 * 10**9
        assert registry.probe_for("Bearer first") is None
        assert registry.probe_for(f"Bearer {token}") == "e1"
        entry_now = registry.entry("e1")
        assert entry_now is not None and entry_now.token_sha256 == hash_token(token)  # only the hash is kept
    finally:
        registry.close()


@pytest.mark.parametrize(("action", "reason"), [("rotate-config", "from the config"), ("rotate-absent", "no probe"),
                                                ("revoke-absent", "no probe"), ("rotate-revoked", "is revoked")])
def test_commands_that_cannot_be_done_say_why(registry: ProbeRegistry, action: str, reason: str) -> None:
    registry.import_config([entry("p1", "t1")])
    with pytest.raises(RegistryError, match=reason):
        if action == "rotate-config":
            registry.rotate("p1", 1)
        elif action == "rotate-absent":
            registry.rotate("nope", 1)
        elif action == "revoke-absent":
            registry.revoke("nope")
        else:
            registry.file.add_enrolled(enrolled("e2", "x", state="revoked"))
            registry.rotate("e2", 1)


def test_a_probe_both_enrolled_and_in_the_config_is_refused(registry: ProbeRegistry) -> None:
    registry.file.add_enrolled(enrolled("p1", "x"))
    with pytest.raises(RegistryError, match="enrolled too"):
        registry.import_config([entry("p1", "t1")])


def test_a_registry_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        ProbeRegistry(str(tmp_path / "absent" / "registry.db"))


# -- enrollment codes -------------------------------------------------------------------------------------


def test_a_code_enrolls_its_probe_once_and_only_until_it_expires(tmp_path: Path) -> None:
    from qiancheng.collector.registry import CodeRefused

    clock = Clock()
    registry = ProbeRegistry(str(tmp_path / "registry.db"), clock)
    try:
        code = registry.add_code("lishui-ct-01", "lishui", "chinatelecom", 3600 * 10**9)
        assert registry.code_probe(code.lower().replace("-", " ")) == "lishui-ct-01"  # as typed
        assert code not in (tmp_path / "registry.db").read_bytes().decode("latin-1")  # only its hash is kept
        entry_made, token = registry.enroll(code)
        assert (entry_made.id, entry_made.city, entry_made.isp, entry_made.source) == ("lishui-ct-01", "lishui", "chinatelecom", "enrolled")
        assert registry.identify(f"Bearer {token}") == Identity("lishui-ct-01", "lishui", "chinatelecom", False)
        clock.now += 10**9
        with pytest.raises(CodeRefused) as used:
            registry.enroll(code)
        assert (used.value.why, used.value.when_ns) == ("used", NOW)
        with pytest.raises(CodeRefused, match="unknown"):
            registry.enroll("AAAA-BBBB-CCCC-DDDD-EEEE")
        late = registry.add_code("quzhou-cm-01", "quzhou", "chinamobile", 60 * 10**9)
        clock.now += 61 * 10**9
        with pytest.raises(CodeRefused) as expired:
            registry.enroll(late)
        assert expired.value.why == "expired"
        assert registry.identify(f"Bearer {token}") is not None and registry.entry("quzhou-cm-01") is None
    finally:
        registry.close()


def test_a_code_for_a_taken_id_is_refused_unless_the_probe_was_revoked(registry: ProbeRegistry) -> None:
    registry.import_config([entry("config-01", "config-token-0123456789")])
    with pytest.raises(RegistryError, match="in the config's probes: list"):
        registry.add_code("config-01", "lishui", "chinatelecom", 10**12)
    first, old_token = registry.enroll(registry.add_code("box-01", "lishui", "chinatelecom", 10**12))
    with pytest.raises(RegistryError, match="enrolled and active: revoke it first"):
        registry.add_code("box-01", "lishui", "chinatelecom", 10**12)
    registry.revoke("box-01")
    stale = registry.add_code("box-01", "lishui", "chinatelecom", 10**12)
    fresh = registry.add_code("box-01", "lishui", "chinaunicom", 10**12)  # replaces the unused one before it
    with pytest.raises(RegistryError, match="unknown"):
        registry.enroll(stale)
    again, new_token = registry.enroll(fresh)
    assert (again.state, again.isp) == ("active", "chinaunicom") and new_token != old_token
    assert registry.identify(f"Bearer {old_token}") is None


def test_a_default_id_comes_from_ascii_city_and_isp_names() -> None:
    from qiancheng.collector.registry import default_probe_id

    made = default_probe_id("Lishui", "China Telecom")
    assert made is not None and made.startswith("lishui-china-telecom-") and len(made) == len("lishui-china-telecom-") + 4
    assert default_probe_id("丽水", "电信") is None
