"""The command line's conventions, through the real command in its own process against a real broker
and the real simulator: exit codes a script can trust (the same with --json), --json everywhere,
quiet by default, --help for users, --version, and output that suits where it goes (tables cut to
a terminal's width, colour and progress lines only on a terminal, never with NO_COLOR)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from devkafka import KafkaCluster
from pipeline.config import Config, load_config
from pipeline.events import dead_letter, envelope
from pipeline.kafka import admin_client, producer
from simulator import Simulator, SimulatorSettings
from tests.config_files import own_pipeline, write_config_file
from tools.trace import Trace, TracedEvent
from treewatch.cli import build_parser
from treewatch.exit_codes import ExitCode
from treewatch.trace_cli import trace_exit_code

ROOT = Path(__file__).resolve().parent.parent
# Long-running servers print logs, not a result: --json has nothing to print for them.
SERVERS = {"exporter", "simulate", "demo"}
ESCAPE = "\x1b["


def treewatch(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """The command in its own process, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "treewatch", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def treewatch_in_terminal(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> tuple[int, str]:
    """The command with stdout and stderr on a pseudo-terminal, as in an operator's shell: its exit
    code and everything it wrote there (the terminal turns "\\n" into "\\r\\n")."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "treewatch", *argv], stdin=terminal, stdout=terminal,
                               stderr=terminal, cwd=ROOT, env={**os.environ, **(env or {})})
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command ended and closed its side
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return code, output.decode(errors="replace")


@pytest.fixture(scope="module")
def config_file(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The env names the topics: long enough that the DLQ table is wider than a narrow terminal.
    data = own_pipeline("conventions", kafka.bootstrap_servers, request_timeout_seconds=10)
    return write_config_file(tmp_path_factory.mktemp("conventions") / "treewatch.yaml", data)


@pytest.fixture(scope="module")
def simulator(config_file: Path) -> Iterator[Simulator]:
    """The stand-in pipeline: its topics, consumer groups and /health endpoints, all healthy."""
    settings = SimulatorSettings(partitions=3, default_files_per_project=5, seed=13)
    with Simulator(load_config(config_file), settings) as sim:
        sim.wait_assigned(timeout=60)
        yield sim


@pytest.fixture
def config(simulator: Simulator) -> Config:
    return simulator.config


def leaf_commands() -> list[list[str]]:
    """Every runnable command's words: ["status"], ["dlq", "replay"], ..."""
    def leaves(parser, words: list[str]) -> Iterator[list[str]]:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions:
            yield words
            return
        for name, child in actions[0].choices.items():
            yield from leaves(child, [*words, name])
    return list(leaves(build_parser(), []))


# -- exit codes, the same in both output modes ------------------------------------------------------


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["text", "json"])
def test_trace_of_a_correlation_id_without_events_exits_1(simulator: Simulator, config_file: Path,
                                                          output: list[str]) -> None:
    absent = f"never-published-{uuid.uuid4()}"
    result = treewatch("trace", "--config", str(config_file), "--correlation-id", absent, "--timeout", "60", *output)
    assert result.returncode == ExitCode.FAILURE, result.stdout + result.stderr
    if output:
        document = json.loads(result.stdout)
        assert document["events"] == [] and document["complete"] is True


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["text", "json"])
def test_trace_of_a_correlation_id_with_events_exits_0(config: Config, config_file: Path,
                                                       output: list[str]) -> None:
    cid = f"cid-{uuid.uuid4()}"
    sender = producer(config.kafka)
    sender.produce(config.stage("stamp").failed_topic, json.dumps(envelope("stamp.failed", {"correlation_id": cid})))
    assert sender.flush(30) == 0
    result = treewatch("trace", "--config", str(config_file), "--correlation-id", cid, "--timeout", "60", *output)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr


def test_a_trace_with_unread_partitions_is_incomplete_whatever_the_output() -> None:
    # Both modes return trace_cli's one exit code; a partition whose offsets could not be read may
    # hold the correlation id's records, so the trace is not "found" even with events.
    event = TracedEvent(1.0, "stamp", "request", "t", 0, 0, {})
    found = Trace("cid", (event,), 1, (), (), True)
    assert trace_exit_code(found) == ExitCode.OK
    assert trace_exit_code(Trace("cid", (event,), 1, (), ("t[1]",), True)) == ExitCode.FAILURE
    assert trace_exit_code(Trace("cid", (event,), 1, (), (), False)) == ExitCode.FAILURE
    assert trace_exit_code(Trace("cid", (), 1, (), (), True)) == ExitCode.FAILURE


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["text", "json"])
def test_bench_that_misses_every_target_exits_1(simulator: Simulator, config_file: Path, output: list[str]) -> None:
    # Half the files dead-lettered (DLQ rate target: 0.1%) and a slow stamp stage (10 files take well over
    # the 0.06 s and 1/166 s per file the duration and throughput targets allow).
    simulator.configure("stamp", error_rate=0.5, delay_seconds=0.05)
    try:
        result = treewatch("bench", "--config", str(config_file), "--files", "10", "--timeout", "60", *output)
    finally:
        simulator.configure("stamp", error_rate=0.0, delay_seconds=0.0)
    assert result.returncode == ExitCode.FAILURE, result.stdout + result.stderr
    assert "completed, but missed 3 of the guide's 3 targets: throughput, duration, dlq rate" in result.stderr
    if output:
        document = json.loads(result.stdout)
        assert document["completed"] is True and document["targets_met"] is False
        assert [t["passed"] for t in document["targets"]] == [False, False, False]
    else:
        assert "status: COMPLETED" in result.stdout and result.stdout.count(": FAIL ") == 3


def test_a_configuration_error_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: {stamp: {grop: x}}\n")
    for words in (["status"], ["status", "--json"], ["trace", "--correlation-id", "x", "--json"]):
        result = treewatch(*words, "--config", str(broken))
        assert result.returncode == ExitCode.USAGE, (words, result.stderr)
        assert "grop: unknown field" in result.stderr and result.stdout == ""
    assert treewatch("status", "--no-such-option").returncode == ExitCode.USAGE


# -- --json on every command ------------------------------------------------------------------------


def test_every_command_but_the_servers_accepts_json() -> None:
    commands = leaf_commands()
    assert ["groups", "reset"] in commands and ["dlq", "replay"] in commands and ["reindex"] in commands
    for words in commands:
        if words[0] in SERVERS:
            continue
        shown = treewatch(*words, "--help")
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^\s+--json\b", shown.stdout, re.M), words


def test_groups_reset_json_is_the_plan_then_the_result(config: Config, config_file: Path, tmp_path: Path) -> None:
    group, topic = f"conventions-reset-{uuid.uuid4().hex[:8]}", config.stage("index").completed_topic
    admin = admin_client(config.kafka)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, 0) for p in range(3)])
    admin.alter_consumer_group_offsets([request])[group].result(timeout=30)
    words = ["groups", "reset", "--config", str(config_file), "--group", group, "--topic", topic, "--to", "latest",
             "--json", "--save-to", str(tmp_path / "saved.json")]

    planned = treewatch(*words)
    assert planned.returncode == ExitCode.OK, planned.stderr
    document = json.loads(planned.stdout)
    assert document["executed"] is False and document["outcome"].startswith("dry run: nothing changed")
    assert document["plan"]["group"] == group and len(document["plan"]["partitions"]) == 3
    assert not (tmp_path / "saved.json").exists()

    executed = treewatch(*words, "--execute")
    assert executed.returncode == ExitCode.OK, executed.stderr
    document = json.loads(executed.stdout)  # the undo line went to stderr: stdout is one document
    assert document["executed"] is True and document["mismatched"] == []
    assert document["saved_to"] == str(tmp_path / "saved.json") and (tmp_path / "saved.json").exists()
    assert f"--from-file {tmp_path / 'saved.json'} --execute" in executed.stderr


def test_dlq_replay_json_dry_run(config: Config, config_file: Path) -> None:
    stamp = config.stage("stamp")
    request = envelope("stamp.requested", {"correlation_id": f"cid-{uuid.uuid4()}"})
    sender = producer(config.kafka)
    sender.produce(stamp.dlq_topic, json.dumps(dead_letter(stamp.request_topic, request, "ENCODING_ERROR", "x")))
    assert sender.flush(30) == 0
    result = treewatch("dlq", "replay", "--config", str(config_file), "--stage", "stamp", "--dry-run", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    document = json.loads(result.stdout)
    assert document["dry_run"] is True and document["dlq_topic"] == stamp.dlq_topic
    assert document["replayed"][stamp.request_topic] == document["replayed_total"] >= 1
    assert {"left", "note", "group", "discarded", "malformed"} <= set(document)


def test_reindex_json(simulator: Simulator, config_file: Path) -> None:
    result = treewatch("reindex", "--config", str(config_file), "--project-path", "/p/x", "--project-name", "x",
                       "--timeout", "60", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    document = json.loads(result.stdout)
    assert document["completed"] is True and document["progress"]["discovered"] == 5
    assert re.fullmatch(r"[0-9a-f-]{36}", document["correlation_id"])


# -- quiet by default, -v for more --------------------------------------------------------------------


def test_status_writes_nothing_on_stderr_unless_asked(simulator: Simulator, config_file: Path) -> None:
    quiet = treewatch("status", "--config", str(config_file))
    assert quiet.returncode == ExitCode.OK, quiet.stdout + quiet.stderr
    assert quiet.stderr == ""
    assert "status: OK" in quiet.stdout
    for words in (["-v", "status"], ["status", "-v"]):
        verbose = treewatch(*words, "--config", str(config_file))
        assert verbose.returncode == ExitCode.OK
        assert "INFO httpx: HTTP Request: GET http://127.0.0.1:" in verbose.stderr, words
    debug = treewatch("status", "-vv", "--config", str(config_file))
    assert " DEBUG " in debug.stderr


# -- --help and --version ------------------------------------------------------------------------------


def test_help_is_for_users() -> None:
    shown = treewatch("--help")
    assert shown.returncode == 0
    text = shown.stdout
    assert text.startswith("usage: treewatch") and "treewatch watches the tree stamping pipeline" in text
    assert "argument parsing" not in text and "docstring" not in text and "_cli.py" not in text
    commands = {words[0] for words in leaf_commands()}
    listed = set(re.findall(r"^  ([a-z][-a-z]*)  ", text, re.M))
    assert commands <= listed, commands - listed
    for code in ExitCode:
        assert re.search(rf"^  {int(code)}\s", text, re.M), code
    assert "--config FILE" in text and "TREEWATCH_KAFKA_BOOTSTRAP_SERVERS" in text


def test_version() -> None:
    shown = treewatch("--version")
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout.splitlines()[:2] == [
        f"treewatch {version('treewatch')}",
        f"librdkafka {confluent_kafka.libversion()[0]} (confluent-kafka {version('confluent-kafka')})"]


# -- terminal-aware output ------------------------------------------------------------------------------


def test_status_colour_only_on_a_terminal_and_never_with_no_color(simulator: Simulator, config_file: Path) -> None:
    code, shown = treewatch_in_terminal("status", "--config", str(config_file), env={"NO_COLOR": ""})
    assert code == ExitCode.OK, shown
    assert "status: \x1b[32mOK\x1b[0m" in shown
    code, plain = treewatch_in_terminal("status", "--config", str(config_file), env={"NO_COLOR": "1"})
    assert code == ExitCode.OK and ESCAPE not in plain and "status: OK" in plain
    piped = treewatch("status", "--config", str(config_file), env={"NO_COLOR": ""})
    assert piped.returncode == ExitCode.OK and ESCAPE not in piped.stdout + piped.stderr


def test_tables_fit_a_terminal_and_are_never_cut_in_a_pipe(config: Config, config_file: Path) -> None:
    dlq_topics = [s.dlq_topic for s in config.stages]
    narrow = {"COLUMNS": "40", "NO_COLOR": "1"}
    code, shown = treewatch_in_terminal("status", "--config", str(config_file), env=narrow)
    assert code == ExitCode.OK, shown
    dlq_section = shown.split("Dead letter queues")[1].split("status:")[0].splitlines()[1:]
    rows = [line for line in dlq_section if line.strip() and not line.startswith("WARNING")]
    assert len(rows) == len(dlq_topics)
    assert all(len(row) <= 40 and "…" in row for row in rows), rows
    piped = treewatch("status", "--config", str(config_file), env=narrow)
    assert all(topic in piped.stdout for topic in dlq_topics) and "…" not in piped.stdout


def test_progress_lines_only_on_a_terminal(simulator: Simulator, config_file: Path) -> None:
    simulator.configure("index", delay_seconds=0.05)  # a run long enough to show progress
    try:
        words = ["reindex", "--config", str(config_file), "--project-path", "/p/y", "--project-name", "y",
                 "--timeout", "60"]
        code, shown = treewatch_in_terminal(*words)
        piped = treewatch(*words)
    finally:
        simulator.configure("index", delay_seconds=0.0)
    assert code == ExitCode.OK, shown
    assert re.search(r"\r\x1b\[Kindexed \d+ / 5 files", shown), shown
    assert "reindexing complete in " in shown
    assert piped.returncode == ExitCode.OK, piped.stderr
    assert "\r" not in piped.stdout + piped.stderr and ESCAPE not in piped.stdout + piped.stderr
    # In a pipe only the result: the correlation id, the final count, the end.
    assert re.findall(r"indexed \d+ / \d+ files", piped.stdout) == ["indexed 5 / 5 files"]


def test_ctrl_c_ends_a_command_with_130_and_no_traceback(simulator: Simulator, config_file: Path) -> None:
    simulator.pause("index")  # the bench waits on the index stage until interrupted
    try:
        process = subprocess.Popen([sys.executable, "-m", "treewatch", "bench", "--config", str(config_file),
                                    "--files", "3", "--timeout", "120"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            first = process.stdout.readline()  # published: now it follows the request
            assert first.startswith("discovery request published"), first
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        simulator.resume("index")
    stderr = process.stderr.read()
    assert code == ExitCode.INTERRUPTED == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def test_trace_shows_its_progress_only_on_a_terminal(config: Config, config_file: Path) -> None:
    # More records than one progress step (tools.trace reports every 10,000 read), in a DLQ nobody consumes.
    sender = producer(config.kafka)
    for number in range(25_000):
        sender.produce(config.stage("index").dlq_topic, b'{"n": %d}' % number)
        if number % 5000 == 0:
            sender.poll(0)
    assert sender.flush(60) == 0
    words = ["trace", "--config", str(config_file), "--correlation-id", f"cid-{uuid.uuid4()}", "--timeout", "60"]
    code, shown = treewatch_in_terminal(*words)
    assert code == ExitCode.FAILURE, shown  # no events: not found
    assert re.search(r"\r\x1b\[Kread 10,000 of [\d,]+ records \(\d+%\), 0 event\(s\) found", shown), shown
    piped = treewatch(*words)
    assert piped.returncode == ExitCode.FAILURE
    assert "read 10,000" not in piped.stdout + piped.stderr and "\r" not in piped.stdout + piped.stderr


def test_dlq_replay_shows_its_progress_only_on_a_terminal(config: Config, config_file: Path) -> None:
    stamp = config.stage("stamp")
    sender = producer(config.kafka)
    for _ in range(4):
        request = envelope("stamp.requested", {"correlation_id": f"cid-{uuid.uuid4()}"})
        sender.produce(stamp.dlq_topic, json.dumps(dead_letter(stamp.request_topic, request, "ENCODING_ERROR", "x")))
    assert sender.flush(30) == 0
    words = ["dlq", "replay", "--config", str(config_file), "--stage", "stamp", "--dry-run",
             "--records-per-transaction", "2"]
    code, shown = treewatch_in_terminal(*words)
    assert code == ExitCode.OK, shown
    assert re.search(r"\r\x1b\[Khandled \d+ of \d+ dead letters: \d+ republished", shown), shown
    piped = treewatch(*words)
    assert piped.returncode == ExitCode.OK, piped.stderr
    assert not re.search(r"handled \d+ of", piped.stdout + piped.stderr) and "\r" not in piped.stdout + piped.stderr
