"""``pytest -p tests.without_servers``: run only the tests that start no server (no Kafka broker, no
Prometheus, no Alertmanager), as ``make check-rules`` does for a rule or dashboard change.

A test needs a server exactly when it asks for one of the fixtures that start one, directly or through
another fixture, so the tests are selected by their fixtures: a new static test is picked up without
any marker, and a new test of a running server is left out as long as it reaches it through those
fixtures. The rest are reported as deselected, never skipped.
"""

from __future__ import annotations

import pytest

# The fixtures that start a server: conftest.py's brokers, test_dashboards.py's Prometheus,
# test_alertmanager.py's Alertmanager.
SERVER_FIXTURES = frozenset({"kafka", "kafka_cluster3", "prometheus", "alertmanager"})


def needs_a_server(item: pytest.Item) -> bool:
    # fixturenames is the whole closure: a fixture that uses `prometheus` brings it in too.
    return not SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselected = [item for item in items if needs_a_server(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not needs_a_server(item)]
