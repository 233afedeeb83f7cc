"""What changed between two versions of the generated rules and Alertmanager configuration, as a reviewer
reads a pull request: alerts and recording rules added, removed or changed (expression, threshold, `for`,
severity and other labels, annotations), rule groups' intervals, and Alertmanager's routes, receivers and
inhibitions.

Plain data in (the parsed YAML documents, checked here for the shape Prometheus and Alertmanager expect),
plain data out (a RulesDiff, rendered as Markdown for a job summary or as JSON); reading files and git refs
is the command's job (treewatch/rules_cli.py).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


class RulesInputError(ValueError):
    """A document that is not a Prometheus rule file or an Alertmanager configuration; the message names
    the source and where in it."""


# -- the result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One field of a rule or route: None on the side where it is not set."""

    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Entry:
    """A rule, route, receiver or group as it stands on one side, its fields flattened to text."""

    name: str
    fields: dict[str, str]


@dataclass(frozen=True)
class EntryChange:
    name: str
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class SectionDiff:
    added: tuple[Entry, ...] = ()
    removed: tuple[Entry, ...] = ()
    changed: tuple[EntryChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


SECTION_TITLES = {
    "alerts": "Alerts",
    "recording_rules": "Recording rules",
    "rule_groups": "Rule groups",
    "routes": "Alertmanager routes",
    "receivers": "Alertmanager receivers",
    "inhibit_rules": "Alertmanager inhibitions",
}


@dataclass(frozen=True)
class RulesDiff:
    alerts: SectionDiff = field(default_factory=SectionDiff)
    recording_rules: SectionDiff = field(default_factory=SectionDiff)
    rule_groups: SectionDiff = field(default_factory=SectionDiff)
    routes: SectionDiff = field(default_factory=SectionDiff)
    receivers: SectionDiff = field(default_factory=SectionDiff)
    inhibit_rules: SectionDiff = field(default_factory=SectionDiff)

    @property
    def empty(self) -> bool:
        return all(section.empty for section in self.sections().values())

    def sections(self) -> dict[str, SectionDiff]:
        return {name: getattr(self, name) for name in SECTION_TITLES}


# -- reading the documents -----------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RulesInputError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RulesInputError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    # YAML reads `expr: 1` or `for: 0` as numbers; Prometheus reads them as text.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RulesInputError(f"{where}: expected text, got {type(value).__name__}")
    return str(value)


def _flatten(value: Any, prefix: str, where: str, out: dict[str, str]) -> dict[str, str]:
    """Nested mappings and lists as dotted paths -> text, so any two values compare field by field."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), where, out)
    elif isinstance(value, list):
        if all(isinstance(item, str | int | float | bool) for item in value):
            out[prefix] = ", ".join(map(str, value))
        else:
            for index, item in enumerate(value):
                _flatten(item, f"{prefix}[{index}]", where, out)
    elif value is not None:
        out[prefix] = _text(value, f"{where}: {prefix}") if not isinstance(value, bool) else str(value).lower()
    return out


@dataclass(frozen=True)
class _Rule:
    kind: str  # "alert" or "record"
    name: str
    group: str
    fields: dict[str, str]

    @property
    def identity(self) -> tuple[tuple[str, str], ...]:
        """Its labels but severity: what tells apart two rules of one name (StageErrorBudgetBurn's burns)."""
        return tuple(sorted((k.removeprefix("labels."), v) for k, v in self.fields.items()
                            if k.startswith("labels.") and k != "labels.severity"))


def _rules(document: Any, source: str) -> tuple[list[_Rule], dict[str, Entry]]:
    if document is None:  # an absent or empty file: no rules
        return [], {}
    top = _mapping(document, source)
    rules, groups = [], {}
    for g, group in enumerate(_sequence(top.get("groups", []), f"{source}: groups")):
        where = f"{source}: groups[{g}]"
        group = _mapping(group, where)
        name = _text(group.get("name"), f"{where}.name")
        settings = {key: _text(group[key], f"{where}.{key}") for key in ("interval", "limit", "query_offset")
                    if group.get(key) is not None}
        groups[name] = Entry(name, settings)
        for r, rule in enumerate(_sequence(group.get("rules", []), f"{where}.rules")):
            rule_where = f"{where}.rules[{r}]"
            rule = _mapping(rule, rule_where)
            kind = "alert" if "alert" in rule else "record" if "record" in rule else None
            if kind is None:
                raise RulesInputError(f"{rule_where}: neither `alert` nor `record`")
            fields = {"expr": _text(rule.get("expr"), f"{rule_where}.expr"), "group": name}
            for key in ("for", "keep_firing_for"):
                if rule.get(key) is not None:
                    fields[key] = _text(rule[key], f"{rule_where}.{key}")
            for key in ("labels", "annotations"):
                for label, value in _mapping(rule.get(key) or {}, f"{rule_where}.{key}").items():
                    fields[f"{key}.{label}"] = _text(value, f"{rule_where}.{key}.{label}")
            rules.append(_Rule(kind, _text(rule[kind], f"{rule_where}.{kind}"), name, fields))
    return rules, groups


def _pair_rules(old: list[_Rule], new: list[_Rule], kind: str) -> tuple[dict[str, Entry], dict[str, Entry]]:
    """Both sides keyed alike: a rule whose name is unique on both sides pairs with its namesake whatever
    its labels (so a label change is a change, not a removal and an addition); rules sharing a name pair
    by their labels but severity."""
    old_by_name: dict[str, list[_Rule]] = defaultdict(list)
    new_by_name: dict[str, list[_Rule]] = defaultdict(list)
    for rule in old:
        if rule.kind == kind:
            old_by_name[rule.name].append(rule)
    for rule in new:
        if rule.kind == kind:
            new_by_name[rule.name].append(rule)
    old_entries, new_entries = {}, {}
    for name in old_by_name.keys() | new_by_name.keys():
        olds, news = old_by_name.get(name, []), new_by_name.get(name, [])
        if len(olds) <= 1 and len(news) <= 1:
            for side, entries in ((olds, old_entries), (news, new_entries)):
                if side:
                    entries[name] = Entry(name, side[0].fields)
            continue
        for side, entries in ((olds, old_entries), (news, new_entries)):
            seen: dict[str, int] = defaultdict(int)
            for rule in side:
                label = name + "{" + ", ".join(f'{k}="{v}"' for k, v in rule.identity) + "}"
                seen[label] += 1
                key = label if seen[label] == 1 else f"{label} #{seen[label]}"
                entries[key] = Entry(key, rule.fields)
    return old_entries, new_entries


def _matchers(route: Mapping[str, Any], where: str) -> str:
    """A route's matchers as one line, the legacy match/match_re spelled as matchers are."""
    parts = [_text(m, f"{where}.matchers") for m in _sequence(route.get("matchers") or [], f"{where}.matchers")]
    for key, operator in (("match", "="), ("match_re", "=~")):
        parts += [f'{k}{operator}"{_text(v, f"{where}.{key}.{k}")}"'
                  for k, v in _mapping(route.get(key) or {}, f"{where}.{key}").items()]
    return ", ".join(parts) or "(any)"


def _routes(route: Any, path: str, where: str, out: dict[str, Entry]) -> None:
    route = _mapping(route, where)
    settings = {key: value for key, value in route.items() if key not in ("routes", "matchers", "match", "match_re")}
    out[path] = Entry(path, _flatten(settings, "", where, {}))
    seen: dict[str, int] = defaultdict(int)
    for index, child in enumerate(_sequence(route.get("routes") or [], f"{where}.routes")):
        child_where = f"{where}.routes[{index}]"
        matchers = _matchers(_mapping(child, child_where), child_where)
        seen[matchers] += 1
        step = matchers if seen[matchers] == 1 else f"{matchers} #{seen[matchers]}"
        _routes(child, f"{path} > {step}" if path != "(root)" else step, child_where, out)


def _alertmanager(document: Any, source: str) -> tuple[dict[str, Entry], dict[str, Entry], dict[str, Entry]]:
    """routes, receivers, inhibitions; each keyed by what names it."""
    if document is None:
        return {}, {}, {}
    top = _mapping(document, source)
    routes: dict[str, Entry] = {}
    if top.get("route") is not None:
        _routes(top["route"], "(root)", f"{source}: route", routes)
    receivers = {}
    for index, receiver in enumerate(_sequence(top.get("receivers") or [], f"{source}: receivers")):
        where = f"{source}: receivers[{index}]"
        receiver = _mapping(receiver, where)
        name = _text(receiver.get("name"), f"{where}.name")
        receivers[name] = Entry(name, _flatten({k: v for k, v in receiver.items() if k != "name"}, "", where, {}))
    inhibitions = {}
    for index, rule in enumerate(_sequence(top.get("inhibit_rules") or [], f"{source}: inhibit_rules")):
        where = f"{source}: inhibit_rules[{index}]"
        fields = _flatten(_mapping(rule, where), "", where, {})
        name = json.dumps(fields, sort_keys=True)
        inhibitions[name] = Entry(_inhibition_name(fields), fields)
    return routes, receivers, inhibitions


def _inhibition_name(fields: dict[str, str]) -> str:
    equal = f" (equal: {fields['equal']})" if fields.get("equal") else ""
    return f"{_inhibition_side(fields, 'source')} mutes {_inhibition_side(fields, 'target')}{equal}"


def _inhibition_side(fields: dict[str, str], side: str) -> str:
    """One side's matchers, the legacy {side}_match/{side}_match_re maps spelled as matchers are."""
    parts = [fields[f"{side}_matchers"]] if f"{side}_matchers" in fields else []
    for key, operator in ((f"{side}_match.", "="), (f"{side}_match_re.", "=~")):
        parts += [f'{name.removeprefix(key)}{operator}"{value}"' for name, value in fields.items()
                  if name.startswith(key)]
    return ", ".join(parts) or "(any)"


# -- comparing ---------------------------------------------------------------------------------------------

# A comparison with a number: the thresholds of an expression. Strings and label matchers hold no
# comparison outside quotes, so quoted text is blanked before looking.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMPARISON = re.compile(
    r"(?<![=!<>~])(==|!=|>=|<=|>|<)\s*(bool\s+)?([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.:])")


def thresholds(expr: str) -> list[str]:
    """The comparisons with a number in a PromQL expression, in order: ``['> 10000']``."""
    blanked = _QUOTED.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    return [f"{op} {'bool ' if keyword else ''}{number}" for op, keyword, number in _COMPARISON.findall(blanked)]


def _without_thresholds(expr: str) -> str:
    blanked = _QUOTED.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    spans = [m.span(3) for m in _COMPARISON.finditer(blanked)]
    for start, end in reversed(spans):
        expr = expr[:start] + "N" + expr[end:]
    return expr


def _field_changes(old: dict[str, str], new: dict[str, str]) -> tuple[Change, ...]:
    changes = []
    for key in [*old, *(k for k in new if k not in old)]:
        if old.get(key) == new.get(key):
            continue
        if key == "expr" and None not in (old.get(key), new.get(key)) \
                and _without_thresholds(old[key]) == _without_thresholds(new[key]):
            # Only the numbers compared against moved: a threshold change, said as such.
            changes.append(Change("threshold", " and ".join(thresholds(old[key])),
                                  " and ".join(thresholds(new[key]))))
        else:
            changes.append(Change(key, old.get(key), new.get(key)))
    return tuple(changes)


def _section(old: dict[str, Entry], new: dict[str, Entry]) -> SectionDiff:
    changed = []
    for key in old.keys() & new.keys():
        changes = _field_changes(old[key].fields, new[key].fields)
        if changes:
            changed.append(EntryChange(new[key].name, changes))
    return SectionDiff(
        added=tuple(new[key] for key in new if key not in old),
        removed=tuple(old[key] for key in old if key not in new),
        changed=tuple(sorted(changed, key=lambda change: change.name)),
    )


def diff(old_rules: Any, new_rules: Any, old_alertmanager: Any = None, new_alertmanager: Any = None, *,
         old_source: str = "OLD", new_source: str = "NEW") -> RulesDiff:
    """Compare two parsed rule files (None: no file) and, optionally, two parsed Alertmanager configurations.

    Raises RulesInputError naming the source and the place when a document has not the expected shape.
    """
    old, old_groups = _rules(old_rules, old_source)
    new, new_groups = _rules(new_rules, new_source)
    old_am = _alertmanager(old_alertmanager, old_source)
    new_am = _alertmanager(new_alertmanager, new_source)
    return RulesDiff(
        alerts=_section(*_pair_rules(old, new, "alert")),
        recording_rules=_section(*_pair_rules(old, new, "record")),
        rule_groups=_section(old_groups, new_groups),
        routes=_section(old_am[0], new_am[0]),
        receivers=_section(old_am[1], new_am[1]),
        inhibit_rules=_section(old_am[2], new_am[2]),
    )


# -- rendering -------------------------------------------------------------------------------------------------


def to_json(result: RulesDiff) -> dict[str, Any]:
    return {"differences": not result.empty, **{name: asdict(section) for name, section in result.sections().items()}}


SUMMARY_CHARACTERS = 160


def _summarised(text: str | None) -> str | None:
    """An annotation in one table cell: one line, at most SUMMARY_CHARACTERS."""
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_CHARACTERS else line[: SUMMARY_CHARACTERS - 1] + "…"


def _code(text: str | None, *, in_table: bool = False) -> str:
    """Inline code on one line, whatever the text holds; in a table cell, its `|` escaped (GitHub
    splits cells before it reads code spans, and shows the escaped bar as a bar)."""
    if text is None:
        return "—"
    text = " ".join(text.split())
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _block(lines: Iterable[str], language: str) -> list[str]:
    body = list(lines)
    fence = "`" * max(3, max((len(run) + 1 for line in body for run in re.findall(r"`{3,}", line)), default=3))
    return [f"{fence}{language}", *body, fence]


def _field_title(name: str) -> str:
    return {"labels.severity": "severity", "for": "`for`", "keep_firing_for": "`keep_firing_for`"}.get(name, name)


def _entry_line(entry: Entry, section: str) -> str:
    fields = entry.fields
    if section == "alerts":
        details = [fields.get("labels.severity", "no severity"), f"for {fields.get('for', '0s')}"]
        details += [f"{k.removeprefix('labels.')}={v}" for k, v in fields.items()
                    if k.startswith("labels.") and k != "labels.severity"]
        return f"- {_code(entry.name)} ({', '.join(details)}): {_code(fields['expr'])}"
    if section == "recording_rules":
        return f"- {_code(entry.name)}: {_code(fields['expr'])}"
    if section == "routes":
        return f"- {_code(entry.name)} → {_code(fields.get('receiver', '(inherited receiver)'))}"
    if section == "inhibit_rules":
        return f"- {_code(entry.name)}"
    return f"- {_code(entry.name)}" + "".join(f" {k}={_code(v)}" for k, v in fields.items())


def _change_lines(change: EntryChange) -> list[str]:
    lines = [f"#### {_code(change.name)}", ""]
    table = [c for c in change.changes if c.field != "expr"]
    if table:
        lines += ["| | old | new |", "|---|---|---|"]
        for c in table:
            annotation = c.field.startswith("annotations.")
            title = c.field if annotation else _field_title(c.field)
            old, new = (_summarised(c.old), _summarised(c.new)) if annotation else (c.old, c.new)
            lines.append(f"| {title} | {_code(old, in_table=True)} | {_code(new, in_table=True)} |")
        lines.append("")
    for c in change.changes:
        if c.field == "expr":
            lines += ["expression:", ""]
            lines += _block([*(f"- {line}" for line in (c.old or "").splitlines()),
                             *(f"+ {line}" for line in (c.new or "").splitlines())], "diff")
            lines.append("")
    return lines


def _counts(section: SectionDiff) -> str:
    parts = [f"{len(section.added)} added"] if section.added else []
    parts += [f"{len(section.removed)} removed"] if section.removed else []
    parts += [f"{len(section.changed)} changed"] if section.changed else []
    return ", ".join(parts)


def to_markdown(result: RulesDiff, old_label: str, new_label: str) -> str:
    lines = [f"## Alert rules and routing: {_code(old_label)} → {_code(new_label)}", ""]
    if result.empty:
        lines.append("No change to alerts, recording rules, rule groups or Alertmanager routing.")
        return "\n".join(lines) + "\n"
    lines += [" · ".join(f"**{SECTION_TITLES[name]}**: {_counts(section)}"
                         for name, section in result.sections().items() if not section.empty), ""]
    for name, section in result.sections().items():
        if section.empty:
            continue
        title = SECTION_TITLES[name]
        for verb, entries in (("added", section.added), ("removed", section.removed)):
            if entries:
                lines += [f"### {title} {verb}", "", *(_entry_line(entry, name) for entry in entries), ""]
        if section.changed:
            lines += [f"### {title} changed", ""]
            for change in section.changed:
                lines += _change_lines(change)
    return "\n".join(lines).rstrip("\n") + "\n"
