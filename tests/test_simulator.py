"""The simulator against a real broker: a project flows through the three stages as real
consumer groups, failures land in the DLQ, a paused stage builds lag, the health endpoints
answer. Every test module run gets its own topics (its own env prefix) and groups."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupTopicPartitions, KafkaError, TopicPartition

from devkafka import free_port
from pipeline.config import (
    DEFAULT_SERVICES,
    DEFAULT_STAGES,
    Config,
    KafkaSettings,
    default_services_at,
    load_config,
    parse_config,
)
from pipeline.events import decode_json_object, discovery_request
from pipeline.health import JSON_STATUS
from pipeline.kafka import admin_client, read_records, reader
from simulator import (
    ERROR_TYPES,
    INVALID_EVENT,
    HealthEndpoints,
    Project,
    Simulator,
    SimulatorError,
    SimulatorSettings,
    StageBehaviour,
)
from simulator.incidents import IncidentUnavailable, SimulatorOnly, incident
from simulator.stages import FILE_COUNT_FIELD, Index, pipeline_logics
from simulator.worker import StageWorker, WorkerStuck


def unique_config_data(bootstrap_servers: str) -> dict[str, Any]:
    """The guide's pipeline with its own topics, groups and service ports."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "env": f"simtest-{suffix}",
        "kafka": {"bootstrap_servers": bootstrap_servers},
        "stages": {name: {"group": f"{stage['group']}-{suffix}"} for name, stage in DEFAULT_STAGES.items()},
        # The guide's services and stores as configured by default (kinds and paths), on free ports.
        "services": default_services_at("127.0.0.1", lambda default_port: free_port()),
    }


def unique_config(bootstrap_servers: str) -> Config:
    return parse_config(unique_config_data(bootstrap_servers), source="test_simulator", environ={})


@pytest.fixture(scope="module")
def simulator(kafka) -> Iterator[Simulator]:
    with Simulator(unique_config(kafka.bootstrap_servers), SimulatorSettings(partitions=3, seed=7)) as sim:
        sim.wait_assigned(timeout=60)
        yield sim


# -- reading back what the stages wrote ------------------------------------------------------------

def read_topics(settings: KafkaSettings, topics: list[str], timeout: float = 30.0) -> dict[str, list[Any]]:
    """Every record of each topic from its beginning to its end, JSON-decoded where possible."""
    # A short fetch wait: an empty partition reports its end after this long.
    consumer = reader(settings, **{"fetch.wait.max.ms": 20})
    try:
        metadata = consumer.list_topics(timeout=10).topics
        partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        consumer.assign(partitions)
        pending = {(tp.topic, tp.partition) for tp in partitions}
        values: dict[str, list[Any]] = {topic: [] for topic in topics}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end of partitions {sorted(pending)} within {timeout}s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"{message.topic()}: {message.error()}")
                pending.discard((message.topic(), message.partition()))
                continue
            try:
                values[message.topic()].append(json.loads(message.value()))
            except ValueError:
                values[message.topic()].append(message.value())
        return values
    finally:
        consumer.close()


def read_topic(settings: KafkaSettings, topic: str) -> list[Any]:
    return read_topics(settings, [topic])[topic]


def dead_letter_keys(settings: KafkaSettings, topic: str, project: Project) -> set[str]:
    """The record keys of the project's dead letters in ``topic``."""
    consumer = reader(settings)
    try:
        ends = {(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions}
        messages = read_records(consumer, dict.fromkeys(ends, 0), ends, deadline=time.monotonic() + 30)
    finally:
        consumer.close()
    return {m.key().decode() for m in messages
            if of_project([json.loads(m.value())], project) and m.key() is not None}


def of_project(events: list[Any], project: Project) -> list[dict]:
    # An envelope keeps the id in payload; a dead letter keeps it at its top level.
    def correlation(event: dict) -> str | None:
        return (event.get("payload") or {}).get("correlation_id", event.get("correlation_id"))

    return [e for e in events if isinstance(e, dict) and correlation(e) == project.correlation_id]


def stage_events(sim: Simulator, stage: str, role: str, project: Project) -> list[dict]:
    return of_project(read_topic(sim.config.kafka, sim.config.stage(stage).topics[role]), project)


def committed_and_end(sim: Simulator, stage: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of high watermarks) over the request topic."""
    config = sim.config.stage(stage)
    admin = admin_client(sim.config.kafka)
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(config.group)])
    committed = listed[config.group].result(timeout=30).topic_partitions
    consumer = reader(sim.config.kafka)
    topic = config.request_topic
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        end = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()
    return sum(tp.offset for tp in committed if tp.topic == config.request_topic and tp.offset >= 0), end


def records_written(settings: KafkaSettings, topic: str) -> int:
    """Sum of the topic's high watermarks: every record ever written to it (what the exporter counts)."""
    consumer = reader(settings)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def native_threads() -> int:
    """This process's OS threads, librdkafka's included (threading.enumerate() sees Python's only)."""
    return len(list(Path("/proc/self/task").iterdir()))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


# -- the tests -------------------------------------------------------------------------------------

def test_a_project_flows_through_all_three_stages_and_failures_land_in_the_dlq(simulator: Simulator) -> None:
    project = Project.synthetic(files=12, name=f"flow-{uuid.uuid4().hex[:6]}")
    failing = {project.file_paths[2]: "FILE_NOT_FOUND", project.file_paths[7]: "ENCODING_ERROR"}
    simulator.configure("stamp", fail_files=failing)
    try:
        simulator.publish(project)
        wait_for(lambda: len(stage_events(simulator, "index", "completed", project)) == 10
                 and len(stage_events(simulator, "stamp", "dlq", project)) == 2,
                 "10 indexed files and 2 dead letters")
        for stage in ("discover", "stamp", "index"):
            wait_for(lambda s=stage: committed_and_end(simulator, s)[0] == committed_and_end(simulator, s)[1],
                     f"the {stage} group to commit everything it read")
    finally:
        simulator.configure("stamp", fail_files={})

    discovered = stage_events(simulator, "discover", "completed", project)
    assert [e["payload"]["files_discovered"] for e in discovered] == [12]
    assert stage_events(simulator, "discover", "failed", project) == []
    stamp_requests = stage_events(simulator, "stamp", "request", project)
    assert sorted(e["payload"]["file_path"] for e in stamp_requests) == sorted(project.file_paths)
    succeeded = sorted(set(project.file_paths) - set(failing))
    assert sorted(e["payload"]["file_path"] for e in stage_events(simulator, "stamp", "completed", project)) \
        == succeeded
    failed = stage_events(simulator, "stamp", "failed", project)
    assert {e["payload"]["file_path"]: e["payload"]["error_type"] for e in failed} == failing
    assert sorted(e["payload"]["file_path"] for e in stage_events(simulator, "index", "request", project)) \
        == succeeded
    assert sorted(e["payload"]["file_path"] for e in stage_events(simulator, "index", "completed", project)) \
        == succeeded
    assert stage_events(simulator, "index", "failed", project) == []

    letters = stage_events(simulator, "stamp", "dlq", project)
    stamp = simulator.config.stage("stamp")
    assert {x["original_payload"]["payload"]["file_path"]: x["error_type"] for x in letters} == failing
    for letter in letters:
        assert letter["original_topic"] == stamp.request_topic
        assert letter["original_payload"]["payload"]["correlation_id"] == project.correlation_id
        assert letter["error_message"]
    not_found = next(x for x in letters if x["error_type"] == "FILE_NOT_FOUND")
    assert project.file_paths[2] in not_found["error_message"]
    # A dead letter keeps its request's key (the file path), so a replay lands on the same partition.
    assert dead_letter_keys(simulator.config.kafka, stamp.dlq_topic, project) == set(failing)

    # Every event on every pipeline topic names its correlation id where the guide's jq looks.
    topics = [s.topics[role] for s in simulator.config.stages for role in ("request", "completed", "failed")]
    for topic, events in read_topics(simulator.config.kafka, topics).items():
        for event in events:
            assert isinstance(event["payload"]["correlation_id"], str), (topic, event)


def test_the_stages_are_real_consumer_groups_with_committed_offsets(simulator: Simulator) -> None:
    project = simulator.publish_project(files=3)
    wait_for(lambda: len(stage_events(simulator, "index", "completed", project)) == 3, "3 indexed files")
    admin = admin_client(simulator.config.kafka)
    groups = [simulator.config.stage(name).group for name in ("discover", "stamp", "index")]
    described = {g: f.result(timeout=30) for g, f in admin.describe_consumer_groups(groups).items()}
    for group, description in described.items():
        assert len(description.members) == 1, group
        assigned = {tp.topic for member in description.members for tp in member.assignment.topic_partitions}
        assert assigned == {s.request_topic for s in simulator.config.stages if s.group == group}
    for stage in ("discover", "stamp", "index"):
        wait_for(lambda s=stage: committed_and_end(simulator, s)[0] == committed_and_end(simulator, s)[1] > 0,
                 f"the {stage} group's committed offsets to reach the end of its request topic")


def test_a_paused_stage_builds_lag_and_drains_it_when_resumed(simulator: Simulator) -> None:
    wait_for(lambda: committed_and_end(simulator, "index")[0] == committed_and_end(simulator, "index")[1],
             "no lag on the index group before the test")
    simulator.pause("index")
    try:
        project = simulator.publish_project(files=8)
        wait_for(lambda: len(stage_events(simulator, "index", "request", project)) == 8, "8 index requests")
        committed, end = committed_and_end(simulator, "index")
        assert end - committed == 8
        assert stage_events(simulator, "index", "completed", project) == []
        # A paused consumer is still a member of its group: stalled, not gone.
        group = simulator.config.stage("index").group
        admin = admin_client(simulator.config.kafka)  # kept referenced: its futures die with it
        description = admin.describe_consumer_groups([group])[group].result(30)
        assert len(description.members) == 1
    finally:
        simulator.resume("index")
    wait_for(lambda: len(stage_events(simulator, "index", "completed", project)) == 8, "the 8 files indexed")
    wait_for(lambda: committed_and_end(simulator, "index")[0] == committed_and_end(simulator, "index")[1],
             "the index group's lag back to 0")


def test_an_error_rate_fails_that_share_of_requests_with_the_guides_error_types(simulator: Simulator) -> None:
    simulator.configure("index", error_rate=1.0)
    try:
        project = simulator.publish_project(files=5)
        wait_for(lambda: len(stage_events(simulator, "index", "dlq", project)) == 5, "5 dead letters")
    finally:
        simulator.configure("index", error_rate=0.0)
    assert len(stage_events(simulator, "index", "failed", project)) == 5
    assert stage_events(simulator, "index", "completed", project) == []
    assert {x["error_type"] for x in stage_events(simulator, "index", "dlq", project)} <= set(ERROR_TYPES)


def test_an_unreadable_request_is_failed_and_dead_lettered_and_the_stage_keeps_going(
        simulator: Simulator) -> None:
    from pipeline.kafka import producer

    discover = simulator.config.stage("discover")
    marker = f"not json {uuid.uuid4()}"
    incomplete = {"correlation_id": str(uuid.uuid4())}  # readable, but no project_path
    bare = {"project_path": "/projects/typed-by-hand", "correlation_id": str(uuid.uuid4()),
            FILE_COUNT_FIELD: 2}
    writer = producer(simulator.config.kafka)
    writer.produce(discover.request_topic, marker.encode())
    writer.produce(discover.request_topic, json.dumps(incomplete).encode())
    # The guide's hand-typed request is a bare object, not an envelope: still a valid request.
    writer.produce(discover.request_topic, json.dumps(bare).encode())
    assert writer.flush(30) == 0

    def dead_letter() -> dict | None:
        letters = read_topic(simulator.config.kafka, discover.dlq_topic)
        return next((x for x in letters if x.get("original_payload") == marker), None)

    wait_for(lambda: dead_letter() is not None, "the unreadable request in the discover DLQ")
    letter = dead_letter()
    assert letter["error_type"] == INVALID_EVENT
    assert letter["original_topic"] == discover.request_topic
    typed = Project(bare["correlation_id"], "typed-by-hand", bare["project_path"], 2)
    wait_for(lambda: len(stage_events(simulator, "index", "completed", typed)) == 2,
             "the hand-typed project's 2 files indexed after the bad records")
    assert simulator.failed_workers() == {}

    # Each bad request is a failure like any other, so requested = completed + failed adds up and
    # tree_events_in_flight (their difference) returns to zero instead of counting them for ever.
    unnamed = Project(incomplete["correlation_id"], "", "", 0)
    (failed,) = stage_events(simulator, "discover", "failed", unnamed)
    assert failed["payload"]["error_type"] == INVALID_EVENT
    assert "project_path" in failed["payload"]["error_message"]
    assert [x["error_type"] for x in stage_events(simulator, "discover", "dlq", unnamed)] == [INVALID_EVENT]

    def discover_balance() -> tuple[int, int]:
        kafka = simulator.config.kafka
        return (records_written(kafka, discover.request_topic),
                records_written(kafka, discover.completed_topic) + records_written(kafka, discover.failed_topic))

    wait_for(lambda: len(set(discover_balance())) == 1,
             "every discovery request completed or failed (requested, completed + failed)")


def test_health_endpoints_answer_with_the_status_set(simulator: Simulator) -> None:
    urls = {s.name: s.url for s in simulator.config.services if s.kind == JSON_STATUS}
    assert set(urls) == {"intelligence", "bridge", "onextree", "metadata-stamping"}
    for name, url in urls.items():
        response = httpx.get(url, timeout=5)
        assert response.status_code == 200
        assert response.json()["status"] == "healthy" and response.json()["service"] == name
    try:
        simulator.set_health("metadata-stamping", "degraded")
        simulator.set_health("intelligence", "unhealthy")
        degraded = httpx.get(urls["metadata-stamping"], timeout=5)
        assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded")
        unhealthy = httpx.get(urls["intelligence"], timeout=5)
        assert (unhealthy.status_code, unhealthy.json()["status"]) == (503, "unhealthy")
        assert httpx.get(urls["bridge"], timeout=5).json()["status"] == "healthy"
    finally:
        simulator.set_health("metadata-stamping", "healthy")
        simulator.set_health("intelligence", "healthy")
    assert httpx.get(urls["intelligence"], timeout=5).status_code == 200
    with pytest.raises(ValueError, match="status must be one of"):
        simulator.set_health("bridge", "sleepy")
    with pytest.raises(KeyError, match="no simulated service"):
        simulator.set_health("elasticsearch", "healthy")


def test_health_endpoints_serve_the_urls_path_and_refuse_a_taken_port() -> None:
    port = free_port()
    services = parse_config({"services": {"onextree": {"url": f"http://127.0.0.1:{port}/api/health"}}},
                            source="test", environ={}).services
    with HealthEndpoints(services) as health:
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json()["service"] == "onextree"
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
        with pytest.raises(OSError, match="cannot serve onextree's health on 127.0.0.1"):
            HealthEndpoints(services).start()
        assert health.statuses() == {"onextree": "healthy"}


def test_a_service_taken_down_refuses_connections_and_comes_back_with_its_status() -> None:
    port = free_port()
    services = parse_config({"services": {"bridge": {"url": f"http://127.0.0.1:{port}/health"}}},
                            source="test", environ={}).services
    with HealthEndpoints(services) as health:
        health.set_status("bridge", "degraded")
        health.take_down("bridge")
        assert health.is_down("bridge")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(KeyError, match="is down; bring_up"):
            health.set_status("bridge", "healthy")
        health.bring_up("bridge")
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "degraded"
        with pytest.raises(KeyError, match="is not down"):
            health.bring_up("bridge")


def test_a_dead_letter_burst_lands_in_the_dlq_with_its_error_type_and_one_malformed_record(
        simulator: Simulator) -> None:
    dlq = simulator.config.stage("stamp").dlq_topic

    def malformed_records() -> list[bytes]:
        return [record for record in read_topic(simulator.config.kafka, dlq) if not isinstance(record, dict)]

    before = malformed_records()
    project = simulator.write_dead_letters("stamp", "FILE_NOT_FOUND", 12, malformed=1)
    letters = of_project(read_topic(simulator.config.kafka, dlq), project)
    assert len(letters) == 12
    assert {letter["error_type"] for letter in letters} == {"FILE_NOT_FOUND"}
    assert {letter["original_topic"] for letter in letters} == {simulator.config.stage("stamp").request_topic}
    assert sorted(letter["original_payload"]["payload"]["file_path"] for letter in letters) == project.file_paths
    (malformed,) = [record for record in malformed_records() if record not in before]
    assert decode_json_object(malformed) is None  # what every DLQ reader gets from it: not a dead letter
    # The stage's failed topic is left alone: only its DLQ sees the burst.
    assert stage_events(simulator, "stamp", "failed", project) == []
    with pytest.raises(ValueError, match="unknown error type 'TYPO'"):
        simulator.write_dead_letters("stamp", "TYPO", 1)


def test_the_incident_catalogue_checks_names_and_parameters() -> None:
    assert incident("dlq-burst", stage="stamp", error_type="FILE_NOT_FOUND").subject == {"stage": "stamp"}
    assert incident("service-down").subject == {"service": "intelligence"}
    assert "20 dead letters of ENCODING_ERROR" in incident("dlq-burst").describe()
    with pytest.raises(KeyError, match="no incident named 'nope'; the catalogue has service-down"):
        incident("nope")
    with pytest.raises(ValueError, match="incident stage-slow has no parameter 'service'"):
        incident("stage-slow", service="bridge")
    with pytest.raises(ValueError, match="unknown error type 'TYPO'"):
        incident("dlq-burst", error_type="TYPO")
    with pytest.raises(ValueError, match="stage must be a stage's name, got ''"):
        incident("stage-stalled", stage="")
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        incident("failure-rate", share=1.5)
    with pytest.raises(IncidentUnavailable, match="runs no exporter"):
        incident("exporter-down").start(SimulatorOnly(simulator=None))  # type: ignore[arg-type]


def test_a_stage_the_configuration_does_not_have_is_refused_with_the_ones_it_has(simulator: Simulator) -> None:
    # Which stages exist is the configuration's: a stage incident is checked when it starts.
    with pytest.raises(KeyError, match="no simulated stage 'enrich'; expected one of discover, stamp, index"):
        incident("stage-stalled", stage="enrich").start(SimulatorOnly(simulator))
    with pytest.raises(SimulatorError, match="no stage named 'enrich' to simulate; the configuration has "
                                             "discover, stamp, index"):
        Simulator(simulator.config, SimulatorSettings(behaviours={"enrich": StageBehaviour()}))


def test_each_stage_hands_its_files_to_the_next_one_the_configuration_names() -> None:
    data = unique_config_data("127.0.0.1:9")
    data["stages"]["enrich"] = {role: f"{{env}}.enrich.{role}" for role in ("request_topic", "completed_topic",
                                                                          "failed_topic", "dlq_topic")}
    data["stages"]["enrich"]["group"] = "enrich-group"
    config = parse_config(data, source="test_simulator", environ={})
    logics = pipeline_logics(config.stages, default_files=2)
    assert list(logics) == ["discover", "stamp", "index", "enrich"]
    project = Project.synthetic(2)
    request = json.dumps(discovery_request(project.project_path, project.project_name, project.correlation_id))
    rng = random.Random(1)
    discovered = logics["discover"].process(request.encode(), StageBehaviour(), rng).records
    stamp_requests = [r for r in discovered if r.topic == config.stage("stamp").request_topic]
    assert [r.key for r in stamp_requests] == project.file_paths
    stamped = logics["stamp"].process(json.dumps(stamp_requests[0].value).encode(), StageBehaviour(), rng).records
    (index_request,) = [r for r in stamped if r.topic == config.stage("index").request_topic]
    indexed = logics["index"].process(json.dumps(index_request.value).encode(), StageBehaviour(), rng).records
    # index is no longer the last stage: its completion is enrich's request, with what index added.
    (enrich_request,) = [r for r in indexed if r.topic == config.stage("enrich").request_topic]
    assert enrich_request.value["event_type"] == "enrich.requested"
    assert enrich_request.value["payload"]["indexed_in"] == ["qdrant", "memgraph"]
    enriched = logics["enrich"].process(json.dumps(enrich_request.value).encode(), StageBehaviour(), rng).records
    # The last stage writes its completed event and nothing else.
    assert [(r.topic, r.value["event_type"]) for r in enriched] == \
        [(config.stage("enrich").completed_topic, "enrich.completed")]
    assert enriched[0].value["payload"]["file_path"] == project.file_paths[0]


def test_stopping_leaves_no_thread_behind(kafka) -> None:
    before = set(threading.enumerate())
    native_before = native_threads()
    with Simulator(unique_config(kafka.bootstrap_servers)) as sim:
        sim.wait_assigned(timeout=60)
        started = [t.name for t in set(threading.enumerate()) - before]
        # A worker per stage, a server per service and store.
        assert sum(name.startswith("simulator-") for name in started) == len(DEFAULT_STAGES) + len(DEFAULT_SERVICES)
        # Three consumers and four producers, each with its librdkafka threads.
        native_running = native_threads()
        assert native_running > native_before + len(started)
    leftover = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []
    # The Kafka clients are closed by stop(), not left to the garbage collector.
    # An OS thread that has ended can stay listed under /proc for a moment: awaited, not read once.
    wait_for(lambda: native_threads() <= native_before, "librdkafka's threads to end", timeout=10)


def test_a_worker_that_will_not_stop_in_time_says_so_and_closes_its_clients_once_free(kafka) -> None:
    config = unique_config(kafka.bootstrap_servers)
    index = config.stage("index")
    busy = threading.Event()
    release = threading.Event()

    def behaviour() -> StageBehaviour:
        # The loop asks for the stage's behaviour every round: hold it there, as a slow call would.
        busy.set()
        release.wait(60)
        return StageBehaviour()

    worker = StageWorker(config.kafka, Index(index), behaviour)
    worker.start()
    try:
        assert busy.wait(30), "the worker's loop never ran"
        with pytest.raises(WorkerStuck, match=r"simulated index service did not stop within 0\.5s: still "):
            worker.stop(timeout=0.5)
        assert worker.alive
    finally:
        release.set()
    wait_for(lambda: not worker.alive, "the worker's thread to close its clients and end", timeout=60)
    assert worker.error is None


# -- the command -----------------------------------------------------------------------------------

def test_the_simulate_command_runs_the_pipeline_until_sigterm(kafka, tmp_path: Path) -> None:
    config_file = tmp_path / "treewatch.yaml"
    config_file.write_text(yaml.safe_dump(unique_config_data(kafka.bootstrap_servers)))
    config = load_config(config_file, environ={})
    index_completed = config.stage("index").completed_topic
    process = subprocess.Popen(
        [sys.executable, "-m", "treewatch", "simulate", "--config", str(config_file), "--files", "5",
         "--project-interval", "0", "--error-rate", "0", "--delay", "index=0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def indexed() -> int:
            try:
                return len(read_topic(config.kafka, index_completed))
            except KeyError:  # the simulator has not created the topics yet
                return 0

        wait_for(lambda: indexed() == 5 or process.poll() is not None, "the project's 5 files indexed")
        assert process.poll() is None, process.stdout.read()
        health = httpx.get(config.services[0].url, timeout=5)
        assert health.json() == {**health.json(), "status": "healthy", "service": config.services[0].name}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "published project" in output and "stopped" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(config.services[0].url, timeout=2)


def test_the_simulate_command_says_which_kafka_it_could_not_reach(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    config_file = tmp_path / "treewatch.yaml"
    kafka = {"bootstrap_servers": nowhere, "request_timeout_seconds": 0.5}
    config_file.write_text(yaml.safe_dump({"kafka": kafka, "services": {}}))
    result = subprocess.run([sys.executable, "-m", "treewatch", "simulate", "--config", str(config_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"treewatch simulate: cannot create the pipeline's topics on {nowhere}" in result.stderr
    assert "Traceback" not in result.stderr
