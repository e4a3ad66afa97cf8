"""plan.yaml, typed, and its expansion for one probe.

A plan says what every probe of the programme measures, from one file:

- `targets`: templates every probe gets, e.g. `edge-{city}` at `{edge}`, its city's edge node;
- `cities`: the programme's cities, each with the variables its templates need (addresses of its edge
  node and cloud pool, its region...); `variables`: values every city starts from;
- `defaults`: per-kind settings every planned target starts from;
- `overrides`, in order: for the probes a `match` selects (by city, ISP, probe id or labels), settings
  per kind, more targets, and targets `disable`d by name (shell-style patterns).

A probe's variables are `variables`, then its city's entry, then `city`, `isp` and `probe` (its id).
A kind's settings for a planned target are `defaults`, then the template's own, then each matching
override's, in order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from qiancheng.core.configfile import PathPart
from qiancheng.core.targets import TargetSpec
from qiancheng.core.wire import Label, LabelName

from .templates import MissingVariable, fill, fill_values

__all__ = ["Template", "Match", "Override", "PlanFile", "Member", "Planned", "PlanError", "RESERVED", "expand"]

VariableName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
OneOrMany = Annotated[str, msgspec.Meta(min_length=1)] | Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
#: the variables a probe brings itself; a plan may not define them
RESERVED = ("city", "isp", "probe")


class Template(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A target every selected probe gets; text anywhere in it may name variables."""

    name: Text
    address: Text
    kinds: dict[str, dict[str, Any] | None] | list[str]
    target_class: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")] = msgspec.field(
        default="edge", name="class"
    )
    labels: Annotated[dict[LabelName, Text], msgspec.Meta(max_length=16)] = {}
    enabled: bool = True

    def kind_settings(self) -> dict[str, dict[str, Any]]:
        return {kind: {} for kind in self.kinds} if isinstance(self.kinds, list) else {k: dict(v or {}) for k, v in self.kinds.items()}


class Match(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which probes an override applies to: every given field must match (a list: any of its values)."""

    city: OneOrMany | None = None
    isp: OneOrMany | None = None
    probe: OneOrMany | None = None
    labels: dict[LabelName, Label] = {}

    def selects(self, member: Member) -> bool:
        for wanted, value in ((self.city, member.city), (self.isp, member.isp), (self.probe, member.probe)):
            if wanted is not None and value not in ((wanted,) if isinstance(wanted, str) else wanted):
                return False
        labels = dict(member.labels)
        return all(labels.get(key) == value for key, value in self.labels.items())


class Override(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For the probes `match` selects: kind settings for all their planned targets, more targets, and
    targets not measured (names or shell-style patterns of the expanded names)."""

    match: Match
    settings: dict[str, dict[str, Any]] = {}
    targets: list[Template] = []
    disable: list[Annotated[str, msgspec.Meta(min_length=1)]] = []


class PlanFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    targets: list[Template]
    defaults: dict[str, dict[str, Any]] = {}
    variables: dict[VariableName, Text] = {}
    cities: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=128)], dict[VariableName, Text]] = {}
    overrides: list[Override] = []


@dataclass(frozen=True, slots=True)
class Member:
    """A probe as the plan sees it: its id, city, ISP and labels."""

    probe: str
    city: str
    isp: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Planned:
    """An expanded target, and where its template sits in plan.yaml (for errors)."""

    spec: TargetSpec
    path: tuple[PathPart, ...]


class PlanError(ValueError):
    """A plan that cannot be expanded for a probe: the plan.yaml path at fault, and why."""

    def __init__(self, path: tuple[PathPart, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def variables_of(plan: PlanFile, member: Member) -> dict[str, str]:
    """The probe's variables: the plan's, its city's, then its own (empty ones are unknown)."""
    own = {"city": member.city, "isp": member.isp, "probe": member.probe}
    return {**plan.variables, **plan.cities.get(member.city, {}), **{k: v for k, v in own.items() if v}}


def expand(plan: PlanFile, member: Member, max_targets: int) -> list[Planned]:
    """The probe's targets, in plan order; raises PlanError."""
    variables = variables_of(plan, member)
    overrides = [(index, override) for index, override in enumerate(plan.overrides) if override.match.selects(member)]
    templates: list[tuple[tuple[PathPart, ...], Template]] = [(("targets", i), t) for i, t in enumerate(plan.targets)]
    for index, override in overrides:
        templates += [(("overrides", index, "targets", i), t) for i, t in enumerate(override.targets)]
    disabled = [pattern for _, override in overrides for pattern in override.disable]
    planned: list[Planned] = []
    names: dict[str, tuple[PathPart, ...]] = {}
    for path, template in templates:
        if not template.enabled:
            continue
        spec = _expand_one(plan, template, path, variables, member, [o for _, o in overrides])
        if any(fnmatch.fnmatchcase(spec.name, pattern) for pattern in disabled):
            continue
        if spec.name in names:
            raise PlanError(path + ("name",), f"target name {spec.name!r} is also made by {_dotted(names[spec.name])}")
        names[spec.name] = path
        planned.append(Planned(spec, path))
    if len(planned) > max_targets:
        raise PlanError(("targets",), f"{len(planned)} targets for probe {member.probe!r}, more than "
                                      f"limits.max_targets_per_probe ({max_targets}) of the collector config")  # fmt: skip
    return planned


def _expand_one(plan: PlanFile, template: Template, path: tuple[PathPart, ...], variables: Mapping[str, str],
                member: Member, overrides: list[Override]) -> TargetSpec:  # fmt: skip
    kinds = {}
    for kind, own in template.kind_settings().items():
        merged = {**plan.defaults.get(kind, {}), **own}
        for override in overrides:
            merged.update(override.settings.get(kind, {}))
        kinds[kind] = merged
    field: tuple[PathPart, ...] = ("name",)
    try:
        name = fill(template.name, variables)
        field = ("address",)
        address = fill(template.address, variables)
        field = ("labels",)
        labels = {key: fill(value, variables) for key, value in template.labels.items()}
        field = ("kinds",)
        filled = {kind: fill_values(settings, variables) for kind, settings in kinds.items()}
    except MissingVariable as missing:
        raise PlanError(path + field, _missing(missing.name, member, plan)) from None
    try:
        return msgspec.convert({"name": name, "address": address, "class": template.target_class,
                                "labels": labels, "kinds": filled}, TargetSpec)  # fmt: skip
    except msgspec.ValidationError as error:
        raise PlanError(path + field, f"expanded for probe {member.probe!r}: {error}") from None


def _missing(name: str, member: Member, plan: PlanFile) -> str:
    if name in RESERVED:
        return f"needs {{{name}}}, and probe {member.probe!r} has no {name}: enroll it with one, or give it in its config"
    if member.city and member.city not in plan.cities:
        return f"needs {{{name}}}, and city {member.city!r} is not in the plan's cities (nor {name} in variables)"
    return f"needs {{{name}}}, which neither cities.{member.city or '?'} nor variables gives"


def _dotted(path: tuple[PathPart, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
