"""Sharded exporters (``exporter.shard``; exporter/sharding.py, docs/sharding.md).

The hashing on its own: the same owners in every process, even spread, and a count change that
moves only what it must. Then on the session's real broker, a pipeline of 30 consumer groups with
committed offsets on topics with records, nothing produced meanwhile (so no value moves): shard 0
of 2, shard 1 of 2 and an unsharded exporter, first as sources gathering at one fixed clock (so
every value, ages and first-sight times included, can be compared exactly), then as running
exporters over HTTP, and last scraped by two real Prometheus servers evaluating the generated
rules, one over the two shards and one over the unsharded exporter: the same alerts fire over both.
"""

from __future__ import annotations

import collections
import copy
import pickle
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from alerts import generate as alerts_generate
from alerts.config import CONFIG, MonitoringConfig
from alerts.environments import ScrapeTarget
from devkafka import KafkaCluster, free_port
from exporter.app import Exporter, build_exporter
from exporter.dlq_tail import DlqTail
from exporter.kafka_source import KafkaSource
from exporter.metrics import METRICS, TREE_PIPELINE_STAGE_INFO, TREEWATCH_COLLECTOR_SUCCESS, MetricDef, Part
from exporter.refresh import Refresher
from exporter.settings import NameFilter
from exporter.sharding import GROUP_SHARD_COLLECTORS, ShardGroups, cluster_read_by, groups_read_by, shard_of
from exporter.snapshot import Snapshot
from localbundle.stack import PROMTOOL, Prometheus, running_prometheus
from pipeline.config import Config, ConfigError, load_config, parse_config
from pipeline.kafka import Watermarks, admin_client
from pipeline.kafka_errors import is_transient
from simulator.topics import ensure_topics
from tests.config_files import own_pipeline
from tests.test_kafka_metrics import FixedClock, create_topics, produce
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

# -- the hashing ------------------------------------------------------------------------------------

IDS = [f"consumer-group-{i}" for i in range(10_000)]


def test_owners_are_the_same_in_every_process():
    """Python's hash() of a str differs per process (PYTHONHASHSEED); the owner of a group must not,
    or two exporters (or one restarted) would disagree on who reads it."""
    here = [shard_of(group, 7) for group in IDS[:2000]]
    elsewhere = []
    for seed in ("1", "4242"):
        script = ("import sys; from exporter.sharding import shard_of; "
                  "print(' '.join(str(shard_of(f'consumer-group-{i}', 7)) for i in range(2000)))")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[1])
        elsewhere.append([int(owner) for owner in result.stdout.split()])
    assert elsewhere == [here, here]


def test_owners_are_pinned():
    """A change of hash would move nearly every group at the next upgrade, the shards reading each
    other's groups while they roll: the hash is part of the contract."""
    assert [shard_of(group, count) for group, count in (
        ("tree-discovery-group", 2), ("stamping-generator-group", 3), ("indexing-processor-group", 5),
        ("g", 1024), ("", 7))] == [0, 1, 1, 614, 1]


@pytest.mark.parametrize("count", [2, 3, 4, 7, 10])
def test_groups_spread_evenly_over_the_shards(count):
    owned = collections.Counter(shard_of(group, count) for group in IDS)
    fair = len(IDS) / count
    assert sorted(owned) == list(range(count))
    assert all(0.9 * fair <= owned[shard] <= 1.1 * fair for shard in range(count)), owned


@pytest.mark.parametrize("count", range(1, 10))
def test_a_count_change_moves_only_the_new_or_removed_shards_groups(count):
    before = {group: shard_of(group, count) for group in IDS}
    after = {group: shard_of(group, count + 1) for group in IDS}
    moved = [group for group in IDS if before[group] != after[group]]
    # N -> N + 1: every group that moves goes to the new shard; none moves between two that stay.
    assert {after[group] for group in moved} == {count}
    # N + 1 -> N: exactly the removed shard's groups move.
    assert set(moved) == {group for group in IDS if after[group] == count}
    share = len(moved) / len(IDS)
    assert 0.9 / (count + 1) <= share <= 1.1 / (count + 1), share


def test_any_group_id_has_an_owner():
    """Group ids are any string Kafka accepts; one that is not valid UTF-8 (a lone surrogate) or huge
    still hashes."""
    for group in ("", "\udc80\udcff", "☃" * 3, "x" * 1_000_000, "\x00\n"):
        owner = shard_of(group, 5)
        assert 0 <= owner < 5 and shard_of(group, 5) == owner
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("g", 0)


def test_the_shard_filter_pickles_and_narrows_the_configured_groups():
    """The filter travels pickled to the consumer-group reader process (exporter/group_reader.py)."""
    config = parse_config({"exporter": {"groups": {"allow": ["consumer-group-.*"], "deny": [".*7"]},
                                        "shard": {"index": 1, "count": 3}}}, source="shard-test")
    narrowed = groups_read_by(config.exporter)
    assert narrowed == ShardGroups(config.exporter.groups, 1, 3)
    copied = pickle.loads(pickle.dumps(narrowed))
    assert copied == narrowed
    chosen = [group for group in IDS + ["other-1"] if copied(group)]
    assert chosen == [group for group in IDS if shard_of(group, 3) == 1 and not group.endswith("7")]
    # The three shards together read each allowed group exactly once.
    shards = [ShardGroups(config.exporter.groups, index, 3) for index in range(3)]
    assert all(sum(shard(group) for shard in shards) == config.exporter.groups(group) for group in IDS)


def test_an_unsharded_exporter_reads_as_configured():
    config = parse_config({"exporter": {"groups": {"allow": ["a.*"]}}}, source="shard-test")
    assert groups_read_by(config.exporter) is config.exporter.groups
    assert cluster_read_by(config) is config
    sharded = parse_config({"exporter": {"shard": {"index": 1, "count": 2}}}, source="shard-test")
    narrowed = cluster_read_by(sharded)
    # A shard other than 0 reads no topic of its own and no stage's topic: only its groups'.
    assert narrowed.stages == () and narrowed.exporter.topics == NameFilter(allow=())
    assert narrowed.exporter.shard == sharded.exporter.shard and sharded.stages


def test_a_dlq_tail_without_a_dlq_to_read_makes_no_consumer():
    """A shard other than 0 tails no DLQ (and shard 0 none before the DLQs exist): no Kafka consumer
    is made for nothing."""
    config = parse_config({}, source="shard-test")
    tail = DlqTail(config.kafka, config.stages)
    try:
        tail.advance([], Watermarks({}, {}, {}), deadline=time.monotonic() + 10)
        assert tail.samples() == []
        assert tail._reader._consumer is None  # LazyReader: made on first use only
    finally:
        tail.close()


# -- the rules over shards, without Kafka (promtool) -----------------------------------------------

SHARD_0, SHARD_1 = "shard-0:9847", "shard-1:9847"
STAGES = {"discover": "tree-discovery-group", "stamp": "stamping-generator-group",
          "index": "indexing-processor-group"}


def _stage_info_series(instance: str) -> list[dict[str, str]]:
    return [{"series": f'tree_pipeline_stage_info{{job="treewatch", instance="{instance}", stage="{stage}", '
                       f'group="{group}", request_topic="{stage}.requests", dlq_topic="{stage}.dlq"}}',
             "values": "1x30"} for stage, group in STAGES.items()]


def _collector_series(instance: str, *collectors: str) -> list[dict[str, str]]:
    return [{"series": f'treewatch_collector_success{{job="treewatch", instance="{instance}", '
                       f'collector="{collector}"}}', "values": "1x30"} for collector in collectors]


def _stage_sli_missing(at: str, *stages: str) -> dict[str, Any]:
    return {"expr": 'ALERTS{alertname="StageSLIMissing", alertstate="firing"}', "eval_time": at, "exp_samples": [
        {"labels": f'ALERTS{{alertname="StageSLIMissing", alertstate="firing", job="treewatch", '
                   f'severity="warning", stage="{stage}"}}', "value": 1} for stage in stages]}


def test_stage_sli_missing_over_shards_is_what_it_is_over_one_exporter(tmp_path):
    """Every shard tells the stages (the group alerts join on them); only shard 0 reads the topics
    and counts the events. With shard 0 gone, the stages of shard 1 alone must not count as stages
    without an SLI: one exporter gone silences StageSLIMissing, and so must shard 0 gone. With shard 0
    up, a stage it counts nothing for fires once, not once per shard."""
    rules = tmp_path / alerts_generate.RULES_FILE
    rules.write_text(alerts_generate.render(CONFIG)[alerts_generate.RULES_FILE])
    shard_1 = _stage_info_series(SHARD_1) + _collector_series(SHARD_1, "kafka_groups", "pipeline")
    counted = [{"series": f'tree_events_processed_total{{job="treewatch", instance="{SHARD_0}", stage="{stage}", '
                          f'status="completed"}}', "values": "0+1x30"} for stage in ("stamp", "index")]
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m",
         "input_series": [{"series": f'up{{job="treewatch", instance="{SHARD_0}"}}', "values": "0x30"},
                          {"series": f'up{{job="treewatch", instance="{SHARD_1}"}}', "values": "1x30"}, *shard_1],
         "promql_expr_test": [_stage_sli_missing("20m")]},
        {"interval": "1m",
         "input_series": [*shard_1, *_stage_info_series(SHARD_0), *counted,
                          *_collector_series(SHARD_0, "kafka_cluster", "kafka_topics", "kafka_groups", "pipeline",
                                             "dlq")],
         "promql_expr_test": [_stage_sli_missing("20m", "discover")]},
    ]}
    test_file = tmp_path / "shards.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([str(PROMTOOL), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- a pipeline on the session broker --------------------------------------------------------------

REFRESH_SECONDS = 1.0
# Record timestamps ten minutes old: a visible age, far inside the broker's retention.
RECORDS_WRITTEN_MS = int(time.time() * 1000) - 10 * 60 * 1000
OTHER_GROUPS = 27
WORK_PARTITIONS = 4
RECORDS_PER_PARTITION = 10
STAGE_RECORDS = 20
STAGE_COMMITTED = 2
# The consumer-group series whose value is a time the exporter itself saw (a first sight, or now
# minus a record's timestamp): equal between two exporters only at one clock.
TIMED = {"kafka_consumer_group_lag_seconds", "kafka_consumer_group_committed_offset_change_timestamp_seconds",
         "kafka_consumer_group_topic_max_lag_seconds", "kafka_consumer_group_topic_oldest_progress_timestamp_seconds"}
GROUP_METRICS = [metric for metric in METRICS if metric.name.startswith("kafka_consumer_group_")]


@dataclass(frozen=True)
class ShardedPipeline:
    suffix: str
    unsharded: Config
    shards: tuple[Config, Config]
    stage_groups: dict[str, str]  # stage -> group
    groups: frozenset[str]  # every group the test made

    def owner(self, group: str) -> int:
        return shard_of(group, 2)


def _suffix_splitting_the_stages() -> str:
    """A random suffix under which the stages' groups are not all on one shard, so each shard must
    join a stage group of its own to its stage."""
    while True:
        suffix = uuid.uuid4().hex[:10]
        groups = [f"{spec}-{suffix}" for spec in STAGES.values()]
        if len({shard_of(group, 2) for group in groups}) == 2:
            return suffix


def _config(data: dict[str, Any], name: str, shard: tuple[int, int] | None) -> Config:
    data = copy.deepcopy(data)
    data["exporter"]["listen_address"] = f"127.0.0.1:{free_port()}"
    if shard is not None:
        data["exporter"]["shard"] = {"index": shard[0], "count": shard[1]}
    return parse_config(data, source=f"test-shards-{name}")


def _commit(admin: AdminClient, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit through the admin API (the group is left Empty), again while the coordinator of a broker
    just started loads: that error comes per partition, not raised."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def committed() -> bool:
        try:
            result = admin.alter_consumer_group_offsets([request])[group].result(timeout=30)
        except KafkaException as error:
            if is_transient(error):
                return False
            raise
        refused = [tp.error for tp in result.topic_partitions if tp.error is not None]
        if refused and not all(is_transient(KafkaException(error)) for error in refused):
            raise KafkaException(refused[0])
        return not refused

    wait_for(committed, f"the offsets of group {group} committed", timeout=60)


@pytest.fixture(scope="module")
def pipeline(kafka: KafkaCluster) -> ShardedPipeline:
    suffix = _suffix_splitting_the_stages()
    data = own_pipeline("shards", kafka.bootstrap_servers, suffix=suffix, exporter_refresh_seconds=REFRESH_SECONDS)
    unsharded = _config(data, "unsharded", None)
    shards = (_config(data, "0", (0, 2)), _config(data, "1", (1, 2)))
    ensure_topics(admin_client(unsharded.kafka), unsharded, partitions=1)
    work = f"{unsharded.env}.work"
    create_topics(kafka, {work: WORK_PARTITIONS})
    records = [(work, partition, b"k", b"v", RECORDS_WRITTEN_MS)
               for partition in range(WORK_PARTITIONS) for _ in range(RECORDS_PER_PARTITION)]
    records += [(stage.request_topic, 0, b"k", b"v", RECORDS_WRITTEN_MS)
                for stage in unsharded.stages for _ in range(STAGE_RECORDS)]
    produce(kafka, records)
    stage_groups = {stage.name: stage.group for stage in unsharded.stages}
    admin = admin_client(unsharded.kafka)
    for stage in unsharded.stages:
        _commit(admin, stage.group, {(stage.request_topic, 0): STAGE_COMMITTED})
    others = [f"g{index:02d}-{suffix}" for index in range(OTHER_GROUPS)]
    discover = unsharded.stage("discover").request_topic
    for index, group in enumerate(others):
        # Lags of 0 to 10, some partitions left uncommitted, some groups on two topics.
        offsets = {(work, partition): (index * 3 + partition) % (RECORDS_PER_PARTITION + 1)
                   for partition in range(WORK_PARTITIONS) if (index + partition) % 5}
        if index % 4 == 0:
            offsets[(discover, 0)] = index % STAGE_RECORDS
        _commit(admin, group, offsets)
    return ShardedPipeline(suffix, unsharded, shards, stage_groups, frozenset(others) | set(stage_groups.values()))


# -- the shards' sources at one clock: exact values ------------------------------------------------

def _gathered(config: Config, now: float) -> Snapshot:
    """One refresh of the Kafka source of ``config`` (what its exporter would serve), at ``now``."""
    refresher = Refresher([KafkaSource(config, clock=FixedClock(now))], interval_seconds=60,
                          stale_grace_seconds=60, max_series=1_000_000, clock=FixedClock(now),
                          build_info={"version": "t", "python_version": "t", "librdkafka_version": "t"})
    try:
        return refresher.run_once()
    finally:
        refresher.stop()


def _groups_of(snapshot: Snapshot, metric: MetricDef) -> set[str]:
    position = metric.labels.index("group")
    return {labels[position] for labels in snapshot.values(metric)}


def test_the_shards_gather_exactly_the_unsharded_exporters_groups_between_them(pipeline):
    now = time.time()
    unsharded = _gathered(pipeline.unsharded, now)
    shards = [_gathered(config, now) for config in pipeline.shards]
    members = [metric for metric in GROUP_METRICS if metric.name == "kafka_consumer_group_members"][0]
    assert _groups_of(unsharded, members) == pipeline.groups
    owned = [_groups_of(shard, members) for shard in shards]
    assert owned == [{group for group in pipeline.groups if pipeline.owner(group) == index} for index in (0, 1)]
    assert all(owned)
    for metric in GROUP_METRICS:
        whole = unsharded.values(metric)
        parts = [shard.values(metric) for shard in shards]
        if "group" in metric.labels:
            # No group's series on both shards, and together exactly the unsharded exporter's.
            assert not set(parts[0]) & set(parts[1]), metric.name
            assert parts[0] | parts[1] == whole, metric.name
        else:  # kafka_consumer_group_read_errors: each exporter's own reads
            assert parts == [whole, whole] == [{(): 0}, {(): 0}], metric.name
    assert any(unsharded.values(metric) for metric in GROUP_METRICS if metric.name in TIMED)
    # Shard 1 tells its groups, the stages, and how its two collectors did; nothing else.
    shard_1 = shards[1]
    told = {metric for metric, series in shard_1.series.items() if series}
    assert told <= {*GROUP_METRICS, TREE_PIPELINE_STAGE_INFO} | {m for m in METRICS if m.collector is Part.EXPORTER}
    assert shard_1.values(TREE_PIPELINE_STAGE_INFO) == unsharded.values(TREE_PIPELINE_STAGE_INFO)
    assert shard_1.values(TREEWATCH_COLLECTOR_SUCCESS) == {(c.value,): 1 for c in GROUP_SHARD_COLLECTORS}
    # Shard 0 tells everything that is not per group, as the unsharded exporter does.
    for metric in METRICS:
        if metric.collector in (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.PIPELINE, Part.DLQ):
            assert shards[0].values(metric) == unsharded.values(metric), metric.name
    assert shards[0].values(TREEWATCH_COLLECTOR_SUCCESS) == unsharded.values(TREEWATCH_COLLECTOR_SUCCESS)


# -- running exporters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunningExporters:
    unsharded: Exporter
    shards: tuple[Exporter, Exporter]

    @staticmethod
    def address(exporter: Exporter) -> str:
        return exporter.url.removeprefix("http://")


def _scrape(exporter: Exporter) -> dict[str, dict[frozenset, float]]:
    """sample name -> label set -> value, as served on /metrics."""
    text = httpx.get(exporter.url + exporter.metrics_path, timeout=30).text
    served: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return served


def _served_groups(served: dict[str, dict[frozenset, float]]) -> set[str]:
    return {dict(labels)["group"] for labels in served.get("kafka_consumer_group_members", {})}


@pytest.fixture(scope="module")
def exporters(pipeline: ShardedPipeline) -> Iterator[RunningExporters]:
    with ExitStack() as stack:
        started = []
        for config in (pipeline.unsharded, *pipeline.shards):
            exporter = build_exporter(config).start()
            stack.callback(exporter.stop)
            started.append(exporter)
        running = RunningExporters(started[0], (started[1], started[2]))
        # Every group read: by the unsharded exporter, and by its owner.
        wait_for(lambda: _served_groups(_scrape(running.unsharded)) == pipeline.groups
                 and set().union(*(_served_groups(_scrape(shard)) for shard in running.shards)) == pipeline.groups,
                 "every group served by the unsharded exporter and by its shard",
                 seen=lambda: [len(_served_groups(_scrape(e))) for e in started])
        yield running


CLUSTER_WIDE = {metric.name for metric in METRICS if metric is not TREE_PIPELINE_STAGE_INFO
                and metric.collector in (Part.KAFKA_CLUSTER, Part.KAFKA_TOPICS, Part.PIPELINE, Part.DLQ, Part.SERVICES)}


def test_running_shards_serve_their_groups_and_only_shard_0_the_rest(pipeline, exporters):
    unsharded = _scrape(exporters.unsharded)
    shards = [_scrape(shard) for shard in exporters.shards]
    for metric in GROUP_METRICS:
        whole = unsharded.get(metric.name, {})
        parts = [shard.get(metric.name, {}) for shard in shards]
        if "group" not in metric.labels:
            continue
        assert not set(parts[0]) & set(parts[1]), metric.name
        if metric.name in TIMED:  # what each exporter saw at its own clock: the same series
            assert set(parts[0]) | set(parts[1]) == set(whole), metric.name
        else:
            assert parts[0] | parts[1] == whole, metric.name
    assert [_served_groups(shard) for shard in shards] == [
        {group for group in pipeline.groups if pipeline.owner(group) == index} for index in (0, 1)]
    # Shard 1: no topic, cluster, pipeline counter, DLQ or service series; the stages it does tell.
    assert not CLUSTER_WIDE & set(shards[1])
    assert shards[1][TREE_PIPELINE_STAGE_INFO.name] == unsharded[TREE_PIPELINE_STAGE_INFO.name] != {}
    # ... which shard 0 tells, as the unsharded exporter does (services unreachable here: probed, failing).
    for name in ("kafka_topic_partition_current_offset", "kafka_brokers", "tree_events_requested_total",
                 "tree_dlq_retained_records", "tree_service_probe_success"):
        assert shards[0].get(name) and set(shards[0][name]) == set(unsharded[name]), name
    # A collector shard 1 does not run is not reported at all, failing or otherwise.
    assert {dict(labels)["collector"]: value for labels, value in shards[1]["treewatch_collector_success"].items()} \
        == {"kafka_groups": 1, "pipeline": 1}
    # The landing page says which shard a person is looking at.
    landing = httpx.get(exporters.shards[1].url + "/", timeout=30).text
    assert "1 of 2" in landing and "1 of 2" not in httpx.get(exporters.unsharded.url + "/", timeout=30).text


# -- the generated rules, evaluated by real Prometheus servers -------------------------------------

# Every duration of the rules is this share of the real one, and the lag threshold low enough for
# the test's few records: the alerts that fire here do within a minute.
TIME_SCALE = 0.05
ALERTS_SEEN_FIRING = {"HighConsumerLag", "ConsumerGroupNoMembers", "ConsumerLagTooOld", "ConsumerGroupStalled",
                      "TreeServiceDown", "Watchdog"}


@dataclass(frozen=True)
class Watching:
    over_shards: Prometheus
    over_one: Prometheus

    def firing(self, prometheus: Prometheus) -> list[tuple[tuple[str, str], ...]]:
        """The firing alerts, each as its labels but instance (a multiset: sorted, duplicates kept)."""
        return sorted(tuple(sorted((k, v) for k, v in series["metric"].items() if k != "instance"))
                      for series in prometheus.query('ALERTS{alertstate="firing"}'))

    def recorded(self, prometheus: Prometheus) -> dict[tuple[tuple[str, str], ...], str]:
        """Every recording rule's series and value."""
        return {tuple(sorted(series["metric"].items())): series["value"][1]
                for series in prometheus.query('{__name__=~"stage.*:.+"}')}


@pytest.fixture(scope="module")
def watching(pipeline: ShardedPipeline, exporters: RunningExporters, tmp_path_factory) -> Iterator[Watching]:
    monitoring: MonitoringConfig = replace(CONFIG, time_scale=TIME_SCALE, consumer_lag_records=5)
    env, cluster = pipeline.unsharded.env, "kafka-shards"
    with ExitStack() as stack:
        servers = []
        for name, targets in (("over-shards", exporters.shards), ("over-one", (exporters.unsharded,))):
            folder = tmp_path_factory.mktemp(name)
            rules = folder / alerts_generate.RULES_FILE
            rules.write_text(alerts_generate.render(monitoring)[alerts_generate.RULES_FILE])
            servers.append(stack.enter_context(running_prometheus(
                folder, exporter=[ScrapeTarget(RunningExporters.address(e), env, cluster) for e in targets],
                # Alerts are read from Prometheus itself; nothing listens there.
                alertmanager=f"127.0.0.1:{free_port()}", port=free_port(), rules_file=rules,
                scrape_seconds=REFRESH_SECONDS)))
        yield Watching(*servers)


def _names(firing: list[tuple[tuple[str, str], ...]]) -> set[str]:
    return {dict(labels)["alertname"] for labels in firing}


def test_the_rules_fire_the_same_alerts_over_two_shards_as_over_one_exporter(pipeline, exporters, watching):
    def all_seen_firing_over_one() -> list[tuple[tuple[str, str], ...]] | None:
        firing = watching.firing(watching.over_one)
        return firing if ALERTS_SEEN_FIRING <= _names(firing) else None

    over_one = wait_for(all_seen_firing_over_one, "the group, service and Watchdog alerts firing over one exporter",
                        seen=lambda: _names(watching.firing(watching.over_one)))
    stage_alerts = [dict(labels) for labels in over_one if "stage" in dict(labels) and "group" in dict(labels)]
    assert {alert["group"] for alert in stage_alerts} == set(pipeline.stage_groups.values())
    # The same alerts, each once (no alert twice from two shards), with the same labels but instance.
    wait_for(lambda: watching.firing(watching.over_shards) == watching.firing(watching.over_one),
             "the same alerts firing over the two shards as over one exporter",
             seen=lambda: {"over shards only": sorted(set(watching.firing(watching.over_shards))
                                                      - set(watching.firing(watching.over_one))),
                           "over one only": sorted(set(watching.firing(watching.over_one))
                                                   - set(watching.firing(watching.over_shards)))})
    # Shard 1's stage groups were joined to their stage by its own stage info.
    shard_1 = RunningExporters.address(exporters.shards[1])
    joined_on_shard_1 = {series["metric"]["group"] for series in watching.over_shards.query(
        f'ALERTS{{alertname="ConsumerGroupNoMembers", alertstate="firing", instance="{shard_1}"}}')}
    assert joined_on_shard_1 == {group for group in pipeline.stage_groups.values() if pipeline.owner(group) == 1}
    assert joined_on_shard_1
    # The recording rules (stage lag, throughput, dead letters written): the same series and values.
    lag_recorded = re.compile(r"stage:kafka_consumer_group_lag:sum")
    wait_for(lambda: sum(1 for labels in watching.recorded(watching.over_shards)
                         if lag_recorded.fullmatch(dict(labels)["__name__"])) == len(pipeline.stage_groups),
             "the stages' lag recorded over the shards", seen=lambda: watching.recorded(watching.over_shards))
    wait_for(lambda: watching.recorded(watching.over_shards) == watching.recorded(watching.over_one),
             "the same recorded series and values over the shards as over one exporter",
             seen=lambda: (watching.recorded(watching.over_shards), watching.recorded(watching.over_one)))
    recorded = watching.recorded(watching.over_one)
    stage_lag = {dict(labels)["stage"]: float(value) for labels, value in recorded.items()
                 if lag_recorded.fullmatch(dict(labels)["__name__"])}
    assert stage_lag == {stage: STAGE_RECORDS - STAGE_COMMITTED for stage in pipeline.stage_groups}


def test_a_statefulset_gives_the_shard_in_the_environment(tmp_path):
    """TREEWATCH_SHARD_INDEX from the pod's ordinal, TREEWATCH_SHARD_COUNT from the replica count:
    one configuration file for every replica."""
    path = tmp_path / "treewatch.yaml"
    path.write_text("exporter:\n  shard:\n    count: 2\n")
    config = load_config(path, environ={"TREEWATCH_SHARD_INDEX": "1"})
    assert (config.exporter.shard.index, config.exporter.shard.count) == (1, 2)
    config = load_config(path, environ={"TREEWATCH_SHARD_INDEX": "2", "TREEWATCH_SHARD_COUNT": "3"})
    assert (config.exporter.shard.index, config.exporter.shard.count) == (2, 3)
    with pytest.raises(ConfigError, match=r"exporter\.shard\.index: 2 is not below count \(2\)"):
        load_config(path, environ={"TREEWATCH_SHARD_INDEX": "2"})
    with pytest.raises(ConfigError, match=r"exporter\.shard\.index"):
        load_config(path, environ={"TREEWATCH_SHARD_INDEX": "web-1"})
