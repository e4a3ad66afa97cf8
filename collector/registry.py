"""The probe registry: which probes may push, with which tokens, and the commands that change that.

One entry per probe: its id, city and ISP, where it came from (`config`: the YAML `probes:` list,
imported at every start; `enrolled`: an enrollment code), whether it is active or revoked, and the
SHA-256 of its token (a second hash while a token is being changed: the config's two `token_sha256`,
or the old token of a rotation until its grace period ends). No token is kept.

The registry lives in a SQLite file of its own (store/registry_file.py), shared by the running
collector and `qiancheng-collector probes ...`. The collector answers every request from a copy in
memory (a dict lookup by token hash) and, before each lookup, asks SQLite whether another connection
has committed since (`PRAGMA data_version`, a few µs): a probe revoked from the command line is refused
on its next request, without a restart.

Lookups by hash: the hash of a random 32-byte token is itself unguessable, so a dict lookup on it tells
an attacker nothing a constant-time scan would hide.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qiancheng.core.clock import wall_ns
from qiancheng.core.logs import kv

from .config import CollectorConfig, ProbeEntry
from .records import RegistryEntry
from .store.registry_file import CodeRefused, RegistryError, RegistryFile

__all__ = ["hash_token", "new_token", "new_code", "hash_code", "default_probe_id", "ProbeRegistry", "RegistryError",
           "CodeRefused", "Identity", "open_registry"]

log = logging.getLogger("qiancheng.collector.registry")

#: letters and digits that cannot be misread for one another
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the registry and the config's `token_sha256` hold it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: 32 bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token belongs to, as a request's authentication found it."""

    probe_id: str
    city: str
    isp: str
    revoked: bool


class ProbeRegistry:
    """The registry file, its copy in memory, and the commands that change it (all synchronous: the
    collector identifies probes on its event loop; commands run from the command line)."""

    def __init__(self, path: str, clock: Callable[[], int] = wall_ns) -> None:
        self.file = RegistryFile(path)
        self.path = path
        self._clock = clock
        self._version = -1
        self._by_hash: dict[str, tuple[RegistryEntry, bool]] = {}  # hash -> (entry, is the previous token)
        self.refresh()

    def close(self) -> None:
        self.file.close()

    def entries(self) -> list[RegistryEntry]:
        return self.file.entries()

    def entry(self, probe_id: str) -> RegistryEntry | None:
        return self.file.entry(probe_id)

    def active_ids(self) -> set[str]:
        return {entry.id for entry, _ in self._by_hash.values() if entry.state == "active"}

    def refresh(self, force: bool = False) -> bool:
        """Reload the copy in memory if the file changed since (or `force`); True when it did."""
        version = self.file.data_version()
        if version == self._version and not force:
            return False
        self._version = version
        by_hash: dict[str, tuple[RegistryEntry, bool]] = {}
        for entry in self.file.entries():
            by_hash[entry.token_sha256] = (entry, False)
            if entry.previous_token_sha256:
                by_hash[entry.previous_token_sha256] = (entry, True)
        self._by_hash = by_hash
        return True

    def identify(self, authorization: str | None) -> Identity | None:
        """Whose `Authorization: Bearer <token>` this is (revoked probes too, marked), or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        self.refresh()
        found = self._by_hash.get(hash_token(token))
        if found is None:
            return None
        entry, previous = found
        if previous and entry.previous_expires_ns is not None and entry.previous_expires_ns <= self._clock():
            return None  # the old token of a rotation whose grace period is over
        return Identity(entry.id, entry.city, entry.isp, entry.state == "revoked")

    def probe_for(self, authorization: str | None) -> str | None:
        """The id of the active probe an Authorization header belongs to, or None."""
        identity = self.identify(authorization)
        return identity.probe_id if identity is not None and not identity.revoked else None

    # -- changes (our own commits do not move data_version for this connection: reload after each) --------

    def import_config(self, probes: Iterable[ProbeEntry]) -> list[str]:
        """Make the registry's config probes those of the config; returns the ids of config probes that
        stay revoked (revoked from the command line, still listed)."""
        rows = []
        for probe in probes:
            hashes = probe.token_hashes()  # [older, newer] during a change-over
            rows.append((probe.id, hashes[-1], hashes[0] if len(hashes) > 1 else None))
        self.file.import_config(rows, self._clock())
        self.refresh(force=True)
        return sorted(e.id for e in self.file.entries() if e.source == "config" and e.state == "revoked")

    def revoke(self, probe_id: str) -> None:
        """Refuse the probe's tokens from its next request on."""
        self.file.revoke(probe_id, self._clock())
        self.refresh(force=True)

    def add_code(self, probe_id: str, city: str, isp: str, ttl_ns: int) -> str:
        """A one-time code that enrolls a box as `probe_id` in `city` on `isp`, valid for `ttl_ns`; returned
        (kept only as its hash)."""
        code = new_code()
        now = self._clock()
        self.file.add_code(hash_code(code), probe_id, city, isp, now, now + ttl_ns)
        return code

    def code_probe(self, code: str) -> str | None:
        """The probe id `code` was made for, or None for a code never made."""
        return self.file.code_probe(hash_code(code))

    def enroll(self, code: str) -> tuple[RegistryEntry, str]:
        """Spend `code`: its probe is registered with a fresh token, returned with the entry (the token is
        kept only as its hash). Raises CodeRefused or RegistryError."""
        token = new_token()
        entry = self.file.redeem(hash_code(code), hash_token(token), self._clock())
        self.refresh(force=True)
        return entry, token

    def rotate(self, probe_id: str, grace_ns: int) -> str:
        """A new token for an enrolled probe, returned (kept only as its hash); the old one is still
        accepted for `grace_ns`, while the new one is put on the probe."""
        token = new_token()
        now = self._clock()
        self.file.rotate(probe_id, hash_token(token), now + grace_ns, now)
        self.refresh(force=True)
        return token


def new_code() -> str:
    """A fresh enrollment code: 100 random bits as 20 letters and digits (no 0/O, 1/I/L), in groups of 4,
    easy to read out and type on a city box's console."""
    return "-".join("".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(5))


def hash_code(code: str) -> str:
    """The SHA-256 of a code as typed (case, dashes and spaces do not matter)."""
    return hashlib.sha256(re.sub(r"[\s-]", "", code).upper().encode("utf-8")).hexdigest()


def default_probe_id(city: str, isp: str) -> str | None:
    """`city-isp-xxxx` from ASCII city and ISP names, or None when they give no usable id."""
    parts = [re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") for text in (city, isp)]
    if not all(parts):
        return None
    return f"{parts[0][:48]}-{parts[1][:48]}-{secrets.token_hex(2)}"


def open_registry(config: CollectorConfig, clock: Callable[[], int] = wall_ns, quiet: bool = False) -> ProbeRegistry:
    """The probe registry of `config`, with the config's `probes:` imported; raises RegistryError.
    `quiet`: no log lines (the command line prints its own)."""
    registry = ProbeRegistry(config.store.registry_path, clock)
    try:
        revoked = registry.import_config(config.probes)
    except BaseException:
        registry.close()
        raise
    if quiet:
        return registry
    for probe_id in revoked:
        log.warning(kv("config_probe_revoked", probe=probe_id, effect="in the config, but revoked in the registry: refused"))
    active = registry.active_ids()
    log.info(kv("registry_opened", path=registry.path, active=len(active), revoked=len(registry.entries()) - len(active)))
    if not active:
        log.warning(kv("no_probes", registry=registry.path, effect="every push will be refused with 401"))
    return registry
