r"""Which metric names a PromQL expression reads, to check rules and dashboard queries against the
metric contract: the expression is parsed by promql-parser (a port of Prometheus' own parser) and
the metric names are collected from the vector selectors of its syntax tree, so functions,
aggregators, keywords, label names, strings and durations can never pass for metrics.

Grafana's variables (``$stage``, ``[$__rate_interval]``) are not PromQL: substitute them first.
Checked against promtool 2.42 on some 60 constructs, promql-parser 0.5.0 rejects one it accepts: a
backslash in a backtick raw string (`\.`); write regexes in double quotes ("\\.") as the rules and
dashboards do. What it accepts beyond Prometheus (a bare duration as a number) promtool still catches.
"""

from __future__ import annotations

import promql_parser

# promql-parser recurses on the native stack and overflows it (killing the process, not raising)
# near 5,000 nested operators on Linux's 8 MiB main-thread stack, and its time grows with the square
# of the length (3,000 chained "+ x" take 1.5 s). Every level of nesting costs at least one character,
# so a bound on the length bounds both, with room to spare over the longest expression (under 800).
MAX_EXPRESSION_CHARS = 2048


class PromQLSyntaxError(ValueError):
    pass


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names ``expr`` selects: each vector selector's name, written
    before its braces or as ``{__name__="..."}``. A regex on ``__name__`` names no metric."""
    return {name for selector in _vector_selectors(parse(expr)) if (name := _selected_name(selector))}


def parse(expr: str) -> promql_parser.Expr:
    """The syntax tree of ``expr``; PromQLSyntaxError saying why and where when it is not PromQL."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise PromQLSyntaxError(f"expression of {len(expr)} characters is longer than the {MAX_EXPRESSION_CHARS} "
                                f"the parser is safe with: {_excerpt(expr)}")
    try:
        return promql_parser.parse(expr)
    except ValueError as error:
        raise PromQLSyntaxError(f"not PromQL ({error}): {_excerpt(expr)}") from None


def _vector_selectors(root: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    # A work list rather than recursion: Python's recursion limit is lower than the parser's depth.
    found = []
    pending = [root]
    while pending:
        node = pending.pop()
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        elif isinstance(node, promql_parser.MatrixSelector):
            pending.append(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            pending += (node.lhs, node.rhs)
        elif isinstance(node, promql_parser.AggregateExpr):
            pending += (node.expr, node.param) if node.param is not None else (node.expr,)
        elif isinstance(node, promql_parser.Call):
            pending += node.args
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            pending.append(node.expr)
        elif not isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral):
            raise TypeError(f"unexpected {type(node).__name__} in a promql-parser syntax tree")
    return found


def _selected_name(selector: promql_parser.VectorSelector) -> str | None:
    if selector.name:
        return selector.name
    equal = promql_parser.MatchOp.Equal
    return next((matcher.value for matcher in selector.matchers.matchers
                 if matcher.name == "__name__" and matcher.op == equal), None)


def _excerpt(expr: str, limit: int = 200) -> str:
    return repr(expr if len(expr) <= limit else expr[:limit] + "...")
