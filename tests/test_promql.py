"""alerts.promql: the metric names a PromQL expression reads, from promql-parser's syntax tree, and a
clear error (never a crash) for what is not PromQL or too big to parse safely."""

from __future__ import annotations

import pytest
import yaml

from alerts import generate
from alerts.promql import MAX_EXPRESSION_CHARS, PromQLSyntaxError, metric_names

RULES = generate.GENERATED / generate.RULES_FILE


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (stage) (rate(a_total{job="x", topic=~"b{c}d"}[5m])) / on (stage) group_left (group) b'
     ' > bool 0.5 and ignoring (le) c offset 1h or label_replace(vector(1), "d", "e", "", "")'
     ' unless max without (instance) (d:recorded:rate5m) * 1e3', {"a_total", "b", "c", "d:recorded:rate5m"}),
    # Keywords as label names, a parameter that is itself a query, subqueries, unary minus, @.
    ("sum by (group, on, bool, offset) (a) + topk(scalar(k), b) - -max_over_time(deriv(c[5m])[1h:1m] @ 100)",
     {"a", "b", "c", "k"}),
    ('count_values("not_a_metric", a) or {__name__="b", job="x"} or {__name__=~"regex_names_no.*"}', {"a", "b"}),
    ("absent(up{job='treewatch'})", {"up"}),
    ("vector(1)", set()),
    ("time() - 60", set()),
])
def test_names_come_from_vector_selectors_only(expr, expected):
    assert metric_names(expr) == expected


def _generated_rules() -> dict[str, list[str]]:
    """alert or record name -> its expressions (StageErrorBudgetBurn has two)."""
    exprs: dict[str, list[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            exprs.setdefault(rule.get("alert") or rule["record"], []).append(rule["expr"])
    return exprs


def test_generated_rules_read_the_metrics_they_are_about():
    rules = _generated_rules()
    reads = {name: set().union(*map(metric_names, exprs)) for name, exprs in rules.items()}
    assert reads["HighConsumerLag"] == {"kafka_consumer_group_topic_max_lag", "tree_pipeline_stage_info"}
    assert reads["StageErrorBudgetBurn"] == {f"stage:tree_events_error_ratio:rate{window}"
                                             for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")}
    assert reads["stage:tree_events_processed:rate5m"] == {"tree_events_processed_total"}
    assert reads["TreewatchExporterMissing"] == {"up"}
    assert reads["Watchdog"] == set()
    assert all(reads[name] for name in rules if name != "Watchdog"), "a rule that reads no metric"


@pytest.mark.parametrize(("expr", "reason"), [
    ("rate(tree_events_processed_total[5m]", "unclosed left parenthesis"),
    ('kafka_consumer_group_lag{group="tree-stamp', "unterminated quoted string"),
    ("rates(tree_events_processed_total[5m])", "unknown function with name 'rates'"),
    ("rate(tree_events_processed_total[$__rate_interval])", "unexpected character inside brackets: '$'"),
    ("", "no expression found in input"),
    ("up\x00\xff", "unexpected character"),
    ("up[5m] + 1", "binary expression must contain only scalar and instant vector types"),
])
def test_what_is_not_promql_raises_a_clear_error(expr, reason):
    with pytest.raises(PromQLSyntaxError, match="not PromQL") as raised:
        metric_names(expr)
    assert reason in str(raised.value)
    assert repr(expr) in str(raised.value), "the error quotes the expression"


@pytest.mark.parametrize("expr", [
    "-" * 10_000 + "up",  # overflowed promql-parser's stack: the process died of SIGSEGV
    "up" + " + up" * 5_000,  # the same, and quadratic time before that
    "(" * 1_000_000,
])
def test_too_long_an_expression_is_refused_before_parsing(expr):
    with pytest.raises(PromQLSyntaxError, match=f"longer than the {MAX_EXPRESSION_CHARS}") as raised:
        metric_names(expr)
    assert len(str(raised.value)) < 400, "the error quotes an excerpt, not the whole input"


def test_nesting_deeper_than_pythons_recursion_limit_parses_up_to_the_bound():
    deepest_parentheses = "(" * (MAX_EXPRESSION_CHARS // 2 - 2) + "up" + ")" * (MAX_EXPRESSION_CHARS // 2 - 2)
    assert len(deepest_parentheses) <= MAX_EXPRESSION_CHARS
    assert metric_names(deepest_parentheses) == {"up"}
    assert metric_names("-" * (MAX_EXPRESSION_CHARS - 2) + "up") == {"up"}
    assert metric_names("a" + " or a" * ((MAX_EXPRESSION_CHARS - 1) // 5)) == {"a"}
