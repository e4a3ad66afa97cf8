"""sla.yaml: profiles (sets of objectives: an indicator and a threshold) and which series each applies to.

YAML in, validated once at start: an unknown indicator, a threshold in the wrong unit or with the wrong
sign, a floor given for a ceiling, an unknown profile in `assign` or a bad pattern are refused with
file, line, field and reason (`core.configfile`). Thresholds are written for people (`10ms`,
`0.1%`, `500Mbit/s`) and kept in base units (seconds, ratios, bits per second).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final

import msgspec

from qiancheng.core.configfile import PathPart, YamlDocument, load_struct

from .indicators import INDICATORS, Indicator

__all__ = ["MATCH_LABELS", "Objective", "Profile", "Assignment", "SlaProfiles", "load_sla_profiles", "parse_threshold"]

#: the series labels an `assign` rule may match on
MATCH_LABELS: Final = ("probe", "city", "isp", "target", "target_class")
_NAME = r"^[a-z][a-z0-9_]{0,63}$(?!\n)"
Name = Annotated[str, msgspec.Meta(pattern=_NAME)]
_NUMBER = r"(?P<number>\d+(\.\d*)?|\.\d+)\s*"
_TIME = re.compile(_NUMBER + r"(?P<unit>us|µs|ms|s|m|h)$")
_TIME_UNITS = {"us": Decimal("1e-6"), "µs": Decimal("1e-6"), "ms": Decimal("1e-3"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_BIT_RATE = re.compile(_NUMBER + r"(?P<unit>bit/s|kbit/s|mbit/s|gbit/s|bps|kbps|mbps|gbps)$")
_BIT_RATE_UNITS = {"bit/s": Decimal(1), "kbit/s": Decimal(10**3), "mbit/s": Decimal(10**6), "gbit/s": Decimal(10**9),
                   "bps": Decimal(1), "kbps": Decimal(10**3), "mbps": Decimal(10**6), "gbps": Decimal(10**9)}  # fmt: skip
_PERCENT = re.compile(_NUMBER + r"(?P<unit>%)$")
_PERCENT_UNITS = {"%": Decimal("0.01")}

Threshold = str | float | None


class _ObjectiveEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    indicator: str | None = None  # defaults to the objective's own name
    max: Threshold = None
    min: Threshold = None


class _ProfileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    objectives: dict[Name, _ObjectiveEntry]
    description: str = ""


class _AssignEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    profiles: list[str]
    match: dict[str, str] = {}


class _SlaFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    profiles: dict[Name, _ProfileEntry]
    assign: list[_AssignEntry] = []


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective of a profile: `name` (the `indicator` label), what it measures, and its threshold."""

    name: str
    indicator: Indicator
    threshold: float  # base units

    def met(self, value: float) -> bool:
        """True if `value` satisfies the objective (a value exactly at the threshold does)."""
        return value <= self.threshold if self.indicator.bound == "max" else value >= self.threshold


@dataclass(frozen=True, slots=True)
class Profile:
    """A named set of objectives."""

    name: str
    description: str
    objectives: tuple[Objective, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Profiles applied to every series whose labels fully match all the patterns."""

    profiles: tuple[str, ...]
    match: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(pattern.fullmatch(labels.get(label, "")) for label, pattern in self.match)


@dataclass(frozen=True, slots=True)
class SlaProfiles:
    """The validated sla.yaml."""

    file: str
    profiles: dict[str, Profile]
    assignments: tuple[Assignment, ...]

    def for_series(self, labels: Mapping[str, str]) -> list[Profile]:
        """Profiles that apply to a series (labels as MATCH_LABELS), each once, in file order."""
        names = {name: None for a in self.assignments if a.matches(labels) for name in a.profiles}
        return [self.profiles[name] for name in names]


def _scaled(pattern: re.Pattern[str], units: Mapping[str, Decimal], value: str | float) -> float | None:
    # decimal arithmetic, so that 99.9% is the float nearest 0.999 and a value exactly at it meets it
    match = pattern.match(value.strip().lower()) if isinstance(value, str) else None
    return None if match is None else float(Decimal(match["number"]) * units[match["unit"]])


def parse_threshold(indicator: Indicator, value: str | float) -> float:
    """A threshold in the indicator's base unit; ValueError says which unit was expected."""
    if indicator.unit == "seconds":
        seconds = _scaled(_TIME, _TIME_UNITS, value)
        if seconds is None:
            raise ValueError(f"{indicator.name} is a time: write it with its unit, e.g. 10ms or 1.5s (got {value!r})")
        return seconds
    if indicator.unit == "bits_per_second":
        rate = _scaled(_BIT_RATE, _BIT_RATE_UNITS, value)
        if rate is None:
            raise ValueError(f"{indicator.name} is a bit rate: write it as 500Mbit/s, 1Gbit/s or 64kbit/s (got {value!r})")
        return rate
    if indicator.unit == "ratio":
        if isinstance(value, str):
            percent = _scaled(_PERCENT, _PERCENT_UNITS, value)
            if percent is None:
                raise ValueError(f"{indicator.name} is a ratio: write 0.1% or 0.001 (got {value!r})")
            ratio = percent
        else:
            ratio = float(value)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{indicator.name} is a ratio within 0..1 (0%..100%), got {value!r}")
        return ratio
    score = value if not isinstance(value, str) else None
    if score is None or not 1.0 <= score <= 5.0:
        raise ValueError(f"{indicator.name} is a score from 1 to 5, got {value!r}")
    return float(score)


def _objective(name: str, entry: _ObjectiveEntry, path: list[PathPart], document: YamlDocument) -> Objective:
    indicator_name = entry.indicator or name
    indicator = INDICATORS.get(indicator_name)
    if indicator is None:
        known = ", ".join(INDICATORS)
        where = path + ["indicator"] if entry.indicator else path
        raise document.error(where, f"unknown indicator {indicator_name!r} (known: {known})")
    other = "min" if indicator.bound == "max" else "max"
    if (entry.min if other == "min" else entry.max) is not None:
        kind = "a ceiling (lower is better)" if indicator.bound == "max" else "a floor (higher is better)"
        raise document.error(path + [other], f"{indicator.name} is {kind}: give `{indicator.bound}`, not `{other}`")
    value = entry.max if indicator.bound == "max" else entry.min
    if value is None:
        raise document.error(path, f"give `{indicator.bound}:` with the threshold of {indicator.name}")
    if isinstance(value, float) and value < 0 or isinstance(value, str) and value.strip().startswith("-"):
        raise document.error(path + [indicator.bound], f"a threshold cannot be negative, got {value!r}")
    try:
        threshold = parse_threshold(indicator, value)
    except ValueError as error:
        raise document.error(path + [indicator.bound], str(error)) from None
    return Objective(name=name, indicator=indicator, threshold=threshold)


def _assignment(index: int, entry: _AssignEntry, profiles: Mapping[str, Profile], document: YamlDocument) -> Assignment:
    path: list[PathPart] = ["assign", index]
    if not entry.profiles:
        raise document.error(path + ["profiles"], "name at least one profile")
    for position, name in enumerate(entry.profiles):
        if name not in profiles:
            raise document.error(path + ["profiles", position], f"unknown profile {name!r} (defined: {', '.join(profiles)})")
    match: list[tuple[str, re.Pattern[str]]] = []
    for label, pattern in entry.match.items():
        if label not in MATCH_LABELS:
            raise document.error(path + ["match", label], f"cannot match on {label!r} (labels: {', '.join(MATCH_LABELS)})")
        try:
            match.append((label, re.compile(pattern)))
        except re.error as error:
            raise document.error(path + ["match", label], f"not a regular expression: {error}") from None
    return Assignment(profiles=tuple(entry.profiles), match=tuple(match))


# The profiles of each file as last parsed, with the file's identity then: the config check parses
# sla.yaml before anything starts and the judgement takes the same profiles when it starts, so the
# file is parsed once (again only if it changed in between).
_parsed: dict[Path, tuple[tuple[int, int, int], SlaProfiles]] = {}


def load_sla_profiles(file: str | Path) -> SlaProfiles:
    """Read and validate sla.yaml; raises ConfigError naming file, line, field and reason."""
    path = Path(file).resolve()
    try:
        stat = path.stat()
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        identity = None  # load_struct names the file and why it cannot be read
    if identity is not None and (known := _parsed.get(path)) is not None and known[0] == identity:
        return known[1]
    profiles = _parse(file)
    if identity is not None:
        _parsed[path] = (identity, profiles)
    return profiles


def _parse(file: str | Path) -> SlaProfiles:
    raw, document = load_struct(file, _SlaFile)
    profiles: dict[str, Profile] = {}
    for name, entry in raw.profiles.items():
        if not entry.objectives:
            raise document.error(["profiles", name, "objectives"], "a profile needs at least one objective")
        objectives = tuple(
            _objective(objective, spec, ["profiles", name, "objectives", objective], document)
            for objective, spec in entry.objectives.items()
        )
        profiles[name] = Profile(name=name, description=entry.description, objectives=objectives)
    assignments = tuple(_assignment(i, entry, profiles, document) for i, entry in enumerate(raw.assign))
    return SlaProfiles(file=str(file), profiles=profiles, assignments=assignments)

