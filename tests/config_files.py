"""treewatch.yaml files for tests that run the pipeline on the session's shared broker: an environment
and consumer groups of their own (the broker carries every other test's topics and groups too),
services' /health URLs where nothing listens, and an exporter that watches only its own pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from devkafka import free_port
from pipeline.config import DEFAULT_SERVICES, DEFAULT_STAGES


def unreachable_services(names: Iterable[str] = DEFAULT_SERVICES) -> dict[str, dict[str, str]]:
    """Each service's /health on a free loopback port: nothing answers, so each is reported down."""
    return {name: {"url": f"http://127.0.0.1:{free_port()}/health"} for name in names}


def exporter_watching(env: str, refresh_seconds: float, groups_suffix: str | None = None) -> dict[str, Any]:
    """An exporter section on a free port that reports only ``env``'s topics and, given
    ``groups_suffix``, only the consumer groups whose names end in it."""
    return {
        "listen_address": f"127.0.0.1:{free_port()}",
        "refresh_interval_seconds": refresh_seconds,
        # A probe round ends before the next refresh starts.
        "health_timeout_seconds": refresh_seconds * 0.8,
        **({"groups": {"allow": [f".*-{groups_suffix}"]}} if groups_suffix is not None else {}),
        "topics": {"allow": [rf"{env}\..*"]},
    }


def own_pipeline(name: str, bootstrap_servers: str, *, suffix: str | None = None,
                 exporter_refresh_seconds: float | None = None, **kafka_settings: Any) -> dict[str, Any]:
    """The guide's pipeline in environment ``{name}-{suffix}`` (``suffix`` random unless given), its
    consumer groups the guide's with ``-{suffix}`` appended, its services unreachable; with
    ``exporter_refresh_seconds``, an exporter watching only those topics and groups."""
    suffix = suffix or uuid.uuid4().hex[:10]
    env = f"{name}-{suffix}"
    data: dict[str, Any] = {
        "env": env,
        "kafka": {"bootstrap_servers": bootstrap_servers, **kafka_settings},
        "stages": {stage: {"group": f"{spec['group']}-{suffix}"} for stage, spec in DEFAULT_STAGES.items()},
        "services": unreachable_services(),
    }
    if exporter_refresh_seconds is not None:
        data["exporter"] = exporter_watching(env, exporter_refresh_seconds, groups_suffix=suffix)
    return data


def write_config_file(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
