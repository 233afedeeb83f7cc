"""Several environments and Kafka clusters watched by one Prometheus and one Alertmanager.

The model. Every exporter watches one pipeline (one ``env``: dev, staging, prod) on one Kafka
cluster. Which environment and cluster a target is belongs to the scrape configuration, not to the
exporter's metrics: Prometheus adds the target labels ``env`` and ``cluster`` to every series it
scrapes from that target (``static_configs: [{targets: [...], labels: {env: prod, cluster:
kafka-prod}}]``, or relabelling from service discovery), as Prometheus' exporter guidelines ask
("target labels, not static scraped labels"). ``scrape_job`` writes such a job.

Every rule keeps these labels through its aggregations and joins, every inhibition requires them
equal and Alertmanager groups by them, so an incident in one environment never fires, mutes or
groups with another's. A deployment that never sets them keeps working unchanged: ``by (env,
cluster)`` over series without those labels is one group with no such labels, as before.

Environments may differ in what pages: ``EnvironmentPolicy(pages=False)`` for ``dev`` makes
Alertmanager send what would page on-call to the warnings channel instead (the rule and its
severity stay the same, so the message still says how serious it would be in production).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, get_type_hints

from pydantic import Field, TypeAdapter

ENV_LABEL = "env"
CLUSTER_LABEL = "cluster"
# The labels that say which environment and Kafka cluster a series, an alert or a page is about.
ENVIRONMENT_LABELS = (ENV_LABEL, CLUSTER_LABEL)


def keeping_environment(*labels: str) -> str:
    """A PromQL label list (for ``by (...)``, ``on (...)``) of ``labels`` preceded by env and cluster,
    so an aggregation or a join never adds up or matches series of different environments."""
    return ", ".join((*ENVIRONMENT_LABELS, *labels))


@dataclass(frozen=True)
class EnvironmentPolicy:
    """What one environment's alerts do. The default is the shipped behaviour: critical pages."""

    pages: Annotated[bool, Field(description=(
        "false: what would page on-call (severity critical) goes to the warnings channel instead"))] = True
    thresholds: Annotated[Mapping[str, float | str], Field(description=(
        "monitoring fields this environment sets otherwise: thresholds and `for` durations, e.g. "
        "consumer_lag_records: 50000 or high_consumer_lag_for: 15m; each alert they change is generated once "
        "for this environment and once for the others"))] = field(default_factory=dict)


# An env label value as the monitoring section names it (the pipeline's own `env` pattern).
ENV_NAME_PATTERN = "^[A-Za-z0-9._-]+$"


def environments_schema(description: str) -> dict[str, Any]:
    """The JSON Schema of the monitoring section's ``environments``: env -> the fields of
    EnvironmentPolicy, inline (the configuration's schema has no room for pydantic's $defs)."""
    hints = get_type_hints(EnvironmentPolicy, include_extras=True)
    policy = {
        "type": "object",
        "additionalProperties": False,
        "properties": {item.name: {**TypeAdapter(hints[item.name]).json_schema(),
                                   **({"default": item.default} if isinstance(item.default, bool) else {})}
                       for item in fields(EnvironmentPolicy)},
    }
    return {"description": description, "type": "object", "propertyNames": {"pattern": ENV_NAME_PATTERN},
            "additionalProperties": policy}


def environment_policies(given: Mapping[str, EnvironmentPolicy | Mapping[str, Any]]) -> dict[str, EnvironmentPolicy]:
    """``environments`` as the configuration file gives it (env -> fields) or as code does (env ->
    EnvironmentPolicy), as policies."""
    return {env: policy if isinstance(policy, EnvironmentPolicy)
            else EnvironmentPolicy(**{**policy, "thresholds": dict(policy.get("thresholds", {}))})
            for env, policy in given.items()}


def _environments_vector(envs: Iterable[str]) -> str:
    """A PromQL vector with one element per environment, labelled env="<name>" (and nothing else)."""
    return " or ".join(f'label_replace(vector(1), "{ENV_LABEL}", {json.dumps(env)}, "", "")' for env in envs)


def only_in(expr: str, envs: Iterable[str]) -> str:
    """``expr`` keeping only the series of these environments."""
    return f"({expr}) and on ({ENV_LABEL}) ({_environments_vector(envs)})"


def except_in(expr: str, envs: Iterable[str]) -> str:
    """``expr`` without the series of these environments (series without an env label stay)."""
    return f"({expr}) unless on ({ENV_LABEL}) ({_environments_vector(envs)})"


@dataclass(frozen=True)
class ScrapeTarget:
    """One exporter as Prometheus scrapes it: its address and the environment and cluster it watches."""

    address: str  # host:port of the exporter's /metrics
    env: str
    cluster: str


def scrape_job(job: str, targets: Iterable[ScrapeTarget], **settings: Any) -> dict[str, Any]:
    """A Prometheus scrape job for ``targets``: one static_configs entry per environment and cluster,
    whose ``labels`` Prometheus attaches to every series of those targets. ``settings``: the job's
    other fields (scrape_interval, scrape_timeout, ...)."""
    by_environment: dict[tuple[str, str], list[str]] = {}
    for target in targets:
        by_environment.setdefault((target.env, target.cluster), []).append(target.address)
    return {
        "job_name": job,
        **settings,
        "static_configs": [
            {"targets": addresses, "labels": {ENV_LABEL: env, CLUSTER_LABEL: cluster}}
            for (env, cluster), addresses in by_environment.items()
        ],
    }


def non_paging_routes(environments: Mapping[str, EnvironmentPolicy], receiver: str,
                      repeat_interval: str) -> list[dict[str, Any]]:
    """Alertmanager routes, to put before the one that pages on-call: each environment that does not
    page sends its critical alerts to ``receiver`` (the warnings channel), re-sent like warnings."""
    return [
        {"matchers": [f"{ENV_LABEL}={json.dumps(env)}", 'severity="critical"'], "receiver": receiver,
         "repeat_interval": repeat_interval}
        for env, policy in sorted(environments.items()) if not policy.pages
    ]
