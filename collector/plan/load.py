"""Loading plan.yaml, and checking it for every city before a probe asks.

The check expands the plan for every city of its `cities` table and once for each override (as a probe
it selects), and holds each expanded target to the rules a probe holds its own targets to
(`core.targets`): a plan that passes here is not refused by the probes it reaches. Errors name
plan.yaml's line and field, and the city they were found for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qiancheng.core.configfile import PathPart, YamlDocument, load_struct
from qiancheng.core.errors import ConfigError
from qiancheng.core.kinds import kind_named
from qiancheng.core.plan_wire import Plan, plan_version
from qiancheng.core.targets import check_kind_name, spec_settings

from .model import RESERVED, Match, Member, PlanError, PlanFile, Template, expand
from .templates import TemplateSyntaxError, text_fields

__all__ = ["LoadedPlan", "load_plan"]

#: the probe id and ISP the check expands the plan for, where no override names one
_CHECK_PROBE, _CHECK_ISP = "plan-check", "isp"
#: per-probe plans kept; a fleet of 3000 probes needs 3000 (a few kB each)
_MAX_MADE = 20_000


@dataclass(frozen=True)
class LoadedPlan:
    """A checked plan, and the per-probe plans made from it so far."""

    file: str
    plan: PlanFile
    max_targets: int
    _made: dict[Member, Plan | PlanError] = field(default_factory=dict, compare=False, repr=False)

    def for_member(self, member: Member) -> Plan:
        """The probe's plan (made once per probe identity); raises PlanError."""
        made = self._made.get(member)
        if made is None:
            try:
                made = self._make(member)
            except PlanError as error:
                made = error
            if len(self._made) >= _MAX_MADE:  # probe identities come from requests: bound what they can hold
                self._made.clear()
            self._made[member] = made
        if isinstance(made, PlanError):
            raise made
        return made

    def _make(self, member: Member) -> Plan:
        planned = expand(self.plan, member, self.max_targets)
        document = YamlDocument.of_data(self.file, None)
        for each in planned:
            try:
                spec_settings(each.spec, {}, document, list(each.path))
            except ConfigError as error:
                raise PlanError(each.path, f"expanded for probe {member.probe!r}: {error.field}: {error.reason}") from None
        specs = [each.spec for each in planned]
        return Plan(probe_id=member.probe, version=plan_version(specs), targets=specs)


def load_plan(path: str | Path, max_targets: int) -> LoadedPlan:
    """Read and check plan.yaml; raises ConfigError naming its line, field and reason."""
    plan, document = load_struct(path, PlanFile)
    _check_names(plan, document)
    _check_settings(plan, document)
    _check_templates(plan, document)
    for member, why in _check_members(plan):
        try:
            planned = expand(plan, member, max_targets)
        except PlanError as error:
            raise document.error(error.path, f"{why}: {error.reason}") from None
        for each in planned:
            try:
                spec_settings(each.spec, {}, document, list(each.path))
            except ConfigError as error:
                raise ConfigError(error.file, f"{why}: {error.reason}", error.field, error.line) from None
    return LoadedPlan(str(path), plan, max_targets)


def _check_names(plan: PlanFile, document: YamlDocument) -> None:
    for name in plan.variables:
        if name in RESERVED:
            raise document.error(("variables", name), f"{name!r} is the probe's own ({', '.join(RESERVED)}): pick another name")
    for city, entry in plan.cities.items():
        for name in entry:
            if name in RESERVED:
                raise document.error(("cities", city, name), f"{name!r} is the probe's own ({', '.join(RESERVED)}): pick another name")


def _check_settings(plan: PlanFile, document: YamlDocument) -> None:
    """Every kind named is known, and its settings convert (templates in text are filled in later)."""
    sections: list[tuple[tuple[PathPart, ...], dict[str, dict[str, Any]]]] = [(("defaults",), plan.defaults)]
    sections += [(("overrides", i, "settings"), o.settings) for i, o in enumerate(plan.overrides)]
    for where, section in sections:
        for kind, values in section.items():
            check_kind_name(kind, [*where, kind], document)
            document.convert(values or {}, kind_named(kind).settings, [*where, kind])


def _templates(plan: PlanFile) -> Iterator[tuple[tuple[PathPart, ...], Template]]:
    yield from ((("targets", i), t) for i, t in enumerate(plan.targets))
    for j, override in enumerate(plan.overrides):
        yield from ((("overrides", j, "targets", i), t) for i, t in enumerate(override.targets))


def _check_templates(plan: PlanFile, document: YamlDocument) -> None:
    """Every text is a template of bare `{variable}` fields, and every kind is known."""
    for path, template in _templates(plan):
        texts: list[tuple[tuple[PathPart, ...], Any]] = [(path + ("name",), template.name), (path + ("address",), template.address)]
        texts += [(path + ("labels", key), value) for key, value in template.labels.items()]
        texts += [(path + ("kinds", kind), settings) for kind, settings in template.kind_settings().items()]
        for where, value in texts:
            try:
                text_fields(value)
            except TemplateSyntaxError as error:
                raise document.error(where, str(error)) from None
        for kind in template.kind_settings():
            check_kind_name(kind, [*path, "kinds", kind], document)


def _first(wanted: str | list[str] | None, default: str) -> str:
    if wanted is None:
        return default
    return wanted if isinstance(wanted, str) else wanted[0]


def _check_members(plan: PlanFile) -> Iterator[tuple[Member, str]]:
    """A probe in every city, and one as each override selects (named for the errors)."""
    cities = list(plan.cities) or ["city"]
    for city in cities:
        yield Member(_CHECK_PROBE, city, _CHECK_ISP), f"for city {city!r}"
    for index, override in enumerate(plan.overrides):
        match: Match = override.match
        member = Member(_first(match.probe, _CHECK_PROBE), _first(match.city, cities[0]), _first(match.isp, _CHECK_ISP),
                        tuple(sorted(match.labels.items())))  # fmt: skip
        yield member, f"for overrides[{index}] (city {member.city!r}, isp {member.isp!r}, probe {member.probe!r})"
