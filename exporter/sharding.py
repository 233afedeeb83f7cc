"""Several exporters splitting one cluster's consumer groups between them (``exporter.shard``).

Shard ``index`` of ``count`` reads and reports the consumer groups whose id hashes to its index.
What is not per group (topics, the cluster, the pipeline's counters, the DLQs, the services) is
reported once, by shard 0, so Prometheus sees each of those series once whatever the count. Every
shard also reports ``tree_pipeline_stage_info`` (the configuration, not a read): the rules join a
group to its stage on (job, instance, group), so the stage of a group must come from the exporter
that reports the group. docs/sharding.md says how to run them and what the rules make of them.

Which shard owns a group is rendezvous (highest random weight) hashing: each shard has a weight for
each group, a hash of the two, and the group belongs to the shard of the highest weight. A group's
weights on the shards that stay do not change with the count, so going from N shards to N + 1 moves
only the groups the new shard now outweighs (about 1/(N + 1) of them), all of them to the new shard,
and none between two shards that stay; going back moves only the removed shard's groups. Modulo
hashing (hash % count) would move about N/(N + 1) of them. The hash is blake2b, the same in every
process, machine and Python release: Python's hash() of a str is salted per process, so two
exporters (or one restarted) would disagree on who owns what.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import lru_cache

from exporter.metrics import Part
from exporter.settings import ExporterSettings, NameFilter, ShardSettings
from pipeline.config import Config

# What a shard other than 0 reports: its groups, and the stages they are joined to (the pipeline
# collector's tree_pipeline_stage_info alone, none of its counters). The other collectors do not run
# there, so none of them appears, failing or not, in its treewatch_collector_* series.
GROUP_SHARD_COLLECTORS = (Part.KAFKA_GROUPS, Part.PIPELINE)

# Owners remembered: every refresh asks again for every group listed, and a group costs one hash
# per shard. Bounded, because group ids come and go (console consumers make a new one each run).
_REMEMBERED_OWNERS = 1 << 16


def _weight(index: int, group: bytes) -> int:
    # The index is the salt (blake2b's domain separation, 16 bytes at most), the group id the message.
    return int.from_bytes(hashlib.blake2b(group, digest_size=8, salt=index.to_bytes(16, "big")).digest(), "big")


@lru_cache(maxsize=_REMEMBERED_OWNERS)
def shard_of(group: str, count: int) -> int:
    """The shard (0 to count - 1) that owns consumer group ``group`` among ``count``."""
    if count < 1:
        raise ValueError(f"a shard count is at least 1, got {count}")
    # Kafka group ids are any string; a lone surrogate (from undecodable bytes) must hash, not raise.
    key = group.encode("utf-8", "surrogatepass")
    return max(range(count), key=lambda index: _weight(index, key))


def reports_whole_cluster(shard: ShardSettings) -> bool:
    """Whether this exporter reports what is not per group: shard 0 (an unsharded exporter is shard 0 of 1)."""
    return shard.index == 0


@dataclass(frozen=True)
class ShardGroups:
    """The consumer groups one shard reads: those the configured filter allows and whose id hashes to
    the shard. It travels pickled to the consumer-group reader process (exporter/group_reader.py), so
    it holds settings only, no function or lock."""

    allowed: NameFilter
    index: int
    count: int

    def __call__(self, group: str) -> bool:
        return self.allowed(group) and shard_of(group, self.count) == self.index


def groups_read_by(exporter: ExporterSettings) -> NameFilter | ShardGroups:
    """The filter of the groups this exporter reads: ``exporter.groups``, narrowed to its shard's."""
    shard = exporter.shard
    if shard.count == 1:
        return exporter.groups
    return ShardGroups(exporter.groups, shard.index, shard.count)


def cluster_read_by(config: Config) -> Config:
    """The configuration the exporter reads the cluster with. Shard 0 reads all of it. Another shard
    reports its groups only, so it reads as an exporter of no stages and no topics of its own: the
    metadata, its groups, and the watermarks and record timestamps of the partitions they commit on;
    no pipeline or DLQ topic is read, and no DLQ tailed. (Its stages are still told: from ``config``.)"""
    if reports_whole_cluster(config.exporter.shard):
        return config
    exporter = replace(config.exporter, topics=NameFilter(allow=()))
    return replace(config, stages=(), sections={**config.sections, "exporter": exporter})
