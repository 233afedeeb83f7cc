"""The pipeline's topics, created the way its deployment would: every stage's request,
completed, failed and dead letter topic, with a few partitions each, when missing."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import Config

log = logging.getLogger("treewatch.simulator.topics")


def pipeline_topic_names(config: Config) -> list[str]:
    return [topic for stage in config.stages for topic in stage.topics.values()]


def ensure_topics(admin: AdminClient, config: Config, *, partitions: int, dlq_replication_factor: int = -1,
                  timeout: float = 30.0) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the ones created.

    The replication factor is left to the broker's default, so the same call suits a
    one-node development broker and a three-node cluster; ``dlq_replication_factor`` sets the
    DLQs' own (1: DLQs made by hand with one replica, whose partitions have no leader while
    their broker is down).
    """
    dlqs = {stage.dlq_topic for stage in config.stages}
    wanted = pipeline_topic_names(config)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [topic for topic in wanted if topic not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=dlq_replication_factor if topic in dlqs else -1)
         for topic in missing],
        request_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(topic)
        except KafkaException as error:
            # Another simulator (or the real pipeline) may have created it meanwhile: that is fine.
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_visible(admin, missing, timeout)
    log.info("created %d pipeline topics with %d partitions each", len(created), partitions)
    return created


def _wait_visible(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """Creation is acknowledged by the controller before every broker's metadata has it;
    clients that start right after should find the topics with their leaders."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        pending = [t for t in topics if t not in metadata or metadata[t].error is not None
                   or any(p.leader < 0 for p in metadata[t].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible with leaders after {timeout}s: {', '.join(pending)}")
        time.sleep(0.1)
