"""Kafka clients built from the configuration, with librdkafka's own log routed to Python
logging so a down broker is one warning, not a stream of stderr lines."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from pipeline.config import KafkaSettings

log = logging.getLogger("treewatch.kafka")


def _base(settings: KafkaSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {**settings.client_config(), "logger": log, **extra}


def admin_client(settings: KafkaSettings, **extra: Any) -> AdminClient:
    return AdminClient(_base(settings, extra))


def reader(settings: KafkaSettings, **extra: Any) -> Consumer:
    """A consumer for assign()-and-read only: it never joins a group and never commits."""
    config = {
        # librdkafka wants a group.id even for assign(); nothing is ever committed under it.
        "group.id": "treewatch-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **extra,
    }
    return Consumer(_base(settings, config))


def producer(settings: KafkaSettings, **extra: Any) -> Producer:
    """An idempotent producer: a retried send never writes a record twice."""
    config = {"enable.idempotence": True, "acks": "all", **extra}
    return Producer(_base(settings, config))
