"""``treewatch bench`` and ``treewatch reindex`` against a real broker and the real simulator: a
project is followed through the three stages as their consumer groups process it."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devkafka import KafkaCluster
from pipeline.config import Config, load_config
from pipeline.events import correlation_id, decode_json_object
from pipeline.kafka import admin_client, fetch_watermarks, read_records, reader, topic_partitions
from simulator import Simulator, SimulatorSettings
from tests.config_files import own_pipeline, write_config_file
from tools.bench import percentiles, run_bench
from treewatch.cli import main

FILES_WITHOUT_A_COUNT = 20  # what the simulator's discovery reports when the request names no count


@pytest.fixture(scope="module")
def config_file(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = own_pipeline("benchtest", kafka.bootstrap_servers, request_timeout_seconds=10)
    return write_config_file(tmp_path_factory.mktemp("bench") / "treewatch.yaml", data)


@pytest.fixture(scope="module")
def simulator(config_file: Path) -> Iterator[Simulator]:
    settings = SimulatorSettings(partitions=3, default_files_per_project=FILES_WITHOUT_A_COUNT, seed=11)
    with Simulator(load_config(config_file), settings) as sim:
        sim.wait_assigned(timeout=60)
        yield sim


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return exited.value.code


def records_of(config: Config, topic: str, wanted: str) -> list[dict]:
    """Every record of the topic (read independently of the tools) that carries the correlation id."""
    admin = admin_client(config.kafka)
    keys = [(topic, p) for p in topic_partitions(admin, [topic], 10)[topic]]
    watermarks = fetch_watermarks(admin, keys, 10)
    consumer = reader(config.kafka)
    try:
        records = read_records(consumer, watermarks.low, watermarks.high, deadline=time.monotonic() + 30)
    finally:
        consumer.close()
    assert len(records) == sum(watermarks.high[k] - watermarks.low[k] for k in keys)
    return [decode_json_object(r.value()) for r in records if correlation_id(r.value()) == wanted]


def test_bench_of_a_small_project_completes_with_exact_counts(simulator: Simulator, config_file: Path,
                                                              capsys) -> None:
    code = run_cli("bench", "--config", str(config_file), "--files", "30", "--timeout", "60", "--json")
    document = json.loads(capsys.readouterr().out)
    assert document["completed"] is True
    # Completed, the exit code says whether every target of the guide was met (a small run may miss the duration's).
    assert document["targets_met"] == all(t["passed"] for t in document["targets"])
    assert code == (0 if document["targets_met"] else 1)
    progress = document["progress"]
    assert (progress["discovered"], progress["completed"], progress["failed_files"]) == \
        (30, {"stamp": 30, "index": 30}, 0)
    assert progress["dead_lettered"] == {"discover": 0, "stamp": 0, "index": 0}
    assert progress["unreadable"] == 0
    assert document["files_per_second"] > 0
    assert set(document["latency_seconds"]) == {"p50", "p90", "p99", "max"}
    assert document["dlq_rate"] == 0
    assert [t["name"] for t in document["targets"]] == ["throughput", "duration", "dlq rate"]
    assert next(t for t in document["targets"] if t["name"] == "dlq rate")["passed"] is True
    # Every file's completed event is on the index topic under this correlation id.
    indexed = records_of(simulator.config, simulator.config.stage("index").completed_topic,
                         document["correlation_id"])
    assert len({event["payload"]["file_path"] for event in indexed}) == 30


def test_bench_text_report_prints_the_guides_targets(simulator: Simulator, config_file: Path, capsys) -> None:
    code = run_cli("bench", "--config", str(config_file), "--files", "5", "--timeout", "60")
    out = capsys.readouterr().out
    assert code == (1 if ": FAIL " in out else 0)
    assert "discovery request published, correlation id " in out
    assert "status: COMPLETED" in out
    assert "files: 5 discovered (requested 5), completed: stamp 5, index 5; 0 failed" in out
    assert re.search(r"throughput: [\d.]+ files/s", out)
    assert re.search(r"throughput: (PASS|FAIL) .* \(target >= 166 files/s\)", out)
    assert re.search(r"duration: (PASS|FAIL) .* \(target <= 0\.03s for 5 files \(60s per 10,000\)\)", out)
    assert "dlq rate: PASS 0.00% (0 dead letters) (target <= 0.1%)" in out


def test_bench_counts_exactly_the_dead_letters_the_dlq_holds_for_its_correlation_id(
        simulator: Simulator) -> None:
    simulator.configure("stamp", error_rate=0.5)
    try:
        result = run_bench(simulator.config, 30, timeout_seconds=60)
    finally:
        simulator.configure("stamp", error_rate=0.0)
    assert result.completed
    progress = result.progress
    stamp = simulator.config.stage("stamp")
    in_dlq = records_of(simulator.config, stamp.dlq_topic, result.run.correlation_id)
    failed_events = records_of(simulator.config, stamp.failed_topic, result.run.correlation_id)
    assert len(in_dlq) > 0
    assert progress.dead_lettered == {"discover": 0, "stamp": len(in_dlq), "index": 0}
    assert progress.failed["stamp"] == len(failed_events) == len(in_dlq)
    assert progress.failed_files == len(in_dlq)
    assert progress.finished + progress.failed_files == progress.discovered == 30
    assert result.dlq_rate == pytest.approx(len(in_dlq) / 30)
    assert not next(t for t in result.targets if t.name == "dlq rate").passed


def test_reindex_publishes_force_regenerate_and_follows_it_to_100_percent(
        simulator: Simulator, config_file: Path, capsys) -> None:
    code = run_cli("reindex", "--config", str(config_file), "--project-path", "/projects/my-project",
                   "--project-name", "my-project", "--timeout", "60")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "NOT cleared: Qdrant and Memgraph are outside treewatch" in out
    assert f"indexed {FILES_WITHOUT_A_COUNT} / {FILES_WITHOUT_A_COUNT} files (100%)" in out
    assert "reindexing complete" in out
    cid = re.search(r"correlation id ([0-9a-f-]{36})", out).group(1)
    [request] = records_of(simulator.config, simulator.config.stage("discover").request_topic, cid)
    assert request["payload"] == {"project_path": "/projects/my-project", "project_name": "my-project",
                                  "correlation_id": cid, "force_regenerate": True}


def test_bench_times_out_with_exit_code_1_when_a_stage_is_paused(simulator: Simulator, config_file: Path,
                                                                 capsys) -> None:
    # Stamping slowly spreads the index requests over longer than a paused consumer's last fetch.
    simulator.configure("stamp", delay_seconds=0.05)
    simulator.pause("index")
    try:
        code = run_cli("bench", "--config", str(config_file), "--files", "10", "--timeout", "3")
    finally:
        simulator.resume("index")
        simulator.configure("stamp", delay_seconds=0.0)
    captured = capsys.readouterr()
    assert code == 1
    assert "status: NOT COMPLETED" in captured.out
    # A fetch already under way when the pause came may still index the first file or two.
    assert re.search(r"treewatch bench: timed out after 3s: indexed \d / 10 files \(\d+%\), waiting on the index "
                     r"stage \(correlation id [0-9a-f-]{36};", captured.err), captured.err


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) == {}
    assert percentiles([3.0, 1.0, 2.0, 4.0]) == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0}


def test_bench_without_the_pipelines_topics_says_so_and_publishes_nothing(kafka: KafkaCluster, tmp_path: Path,
                                                                          capsys) -> None:
    env = f"absent-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "treewatch.yaml"
    path.write_text(yaml.safe_dump({"env": env, "kafka": {"bootstrap_servers": kafka.bootstrap_servers}}))
    assert run_cli("bench", "--config", str(path), "--files", "3", "--timeout", "5") == 1
    assert f"treewatch bench: topic {env}.archon-intelligence.tree.discover-completed.v1 does not exist" \
        in capsys.readouterr().err
    listed = admin_client(load_config(path).kafka).list_topics(timeout=10).topics
    assert not [topic for topic in listed if topic.startswith(env)]
