"""Which metric names a PromQL expression reads: enough of a tokenizer to check rules and queries
against the metric contract.

Strings, label matchers, ranges, numbers and durations are skipped whole; an identifier followed
by ``(`` is a function; aggregators, set operators and modifiers are keywords; the parenthesised
label lists after by/without/on/ignoring/group_left/group_right are labels. Everything else is a
metric (or recording rule) name.
"""

from __future__ import annotations

import re

AGGREGATORS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
})
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = AGGREGATORS | LABEL_LIST_KEYWORDS | frozenset({
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NUMBER_OR_DURATION = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
)
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class PromQLSyntaxError(ValueError):
    pass


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is "ident", "(" or ")", or "other"; strings, matchers and ranges dropped."""
    result: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        char = expr[position]
        if char.isspace():
            position += 1
        elif char in "\"'`":
            match = _STRING.match(expr, position)
            if not match:
                raise PromQLSyntaxError(f"unterminated string at {position} in {expr!r}")
            position = match.end()
        elif char in "{[":
            position = _skip_bracketed(expr, position, "}" if char == "{" else "]")
        elif char.isdigit() or (char == "." and expr[position + 1:position + 2].isdigit()):
            position = _NUMBER_OR_DURATION.match(expr, position).end()
        elif match := _IDENTIFIER.match(expr, position):
            result.append(("ident", match.group()))
            position = match.end()
        elif char in "()":
            result.append((char, char))
            position += 1
        else:
            result.append(("other", char))
            position += 1
    return result


def _skip_bracketed(expr: str, start: int, closing: str) -> int:
    position = start + 1
    while position < len(expr):
        char = expr[position]
        if char in "\"'`":
            match = _STRING.match(expr, position)
            if not match:
                raise PromQLSyntaxError(f"unterminated string at {position} in {expr!r}")
            position = match.end()
            continue
        if char == closing:
            return position + 1
        position += 1
    raise PromQLSyntaxError(f"unclosed {expr[start]!r} at {start} in {expr!r}")


def metric_names(expr: str) -> set[str]:
    found: set[str] = set()
    stream = tokens(expr)
    index = 0
    while index < len(stream):
        kind, text = stream[index]
        following = stream[index + 1][0] if index + 1 < len(stream) else None
        if kind == "ident" and text.lower() in LABEL_LIST_KEYWORDS and following == "(":
            index = _after_parentheses(stream, index + 1)
            continue
        if kind == "ident" and following != "(" and text.lower() not in KEYWORDS:
            found.add(text)
        index += 1
    return found


def _after_parentheses(stream: list[tuple[str, str]], open_index: int) -> int:
    depth = 0
    for index in range(open_index, len(stream)):
        if stream[index][0] == "(":
            depth += 1
        elif stream[index][0] == ")":
            depth -= 1
            if depth == 0:
                return index + 1
    raise PromQLSyntaxError("unbalanced parentheses")
