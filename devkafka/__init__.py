"""A real Apache Kafka, started from the pinned jars in KRaft mode on loopback.

Tests (through a session fixture), ``make demo`` and ``make bench`` all start Kafka here, so
there is one way to get a broker: jars resolved from Maven Central by ``devkafka/pom.xml``,
cached under ``~/.cache/treewatch``, each node a combined broker+controller with its data in a
temporary folder. Readiness is asked of the cluster itself, never guessed with a sleep.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from devkafka.processes import die_with_parent, stop_processes

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG_CONFIG = HERE / "log4j2.yaml"
# A broker's controlled shutdown (leadership moved away, logs flushed) gets this long before SIGKILL.
NODE_STOP_SECONDS = 30.0


class KafkaStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return match.group(1)


def jars_dir() -> Path:
    override = os.environ.get("TREEWATCH_KAFKA_LIBS")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "treewatch" / f"kafka-{kafka_version()}" / "libs"


def fetch_jars() -> Path:
    """Resolve the Kafka jars with Maven once; later calls find them in the cache."""
    target = jars_dir()
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise KafkaStartError("mvn is not on PATH: run `make setup` to install Maven")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={target}", "-DincludeScope=runtime"],
        check=True, timeout=900,
    )
    if not any(target.glob("kafka_2.13-*.jar")):
        raise KafkaStartError(f"Maven finished but left no Kafka jar in {target}")
    marker.touch()
    return target


def free_port() -> int:
    return free_ports(1)[0]


# Ports handed out lately in this process: the kernel may offer a released port again at once,
# and a caller that asks for ports one at a time (then binds them all later) would get it twice.
_recently_given: deque[int] = deque(maxlen=1024)
_given_lock = threading.Lock()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, none handed out lately by this process."""
    sockets = []
    chosen: list[int] = []
    try:
        with _given_lock:
            while len(chosen) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)  # held until all are chosen, so this call cannot repeat one
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                if port not in _recently_given:
                    chosen.append(port)
            _recently_given.extend(chosen)
        return chosen
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Listener:
    """An extra client listener, e.g. SASL_PLAINTEXT or SSL, beside the plain one."""

    name: str
    protocol: str
    properties: Mapping[str, str] = field(default_factory=dict)
    port: int = 0


@dataclass
class Node:
    node_id: int
    client_port: int
    controller_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    extra_ports: dict[str, int]
    process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class KafkaCluster:
    """One to N combined broker+controller nodes on 127.0.0.1.

    ``with KafkaCluster(nodes=3) as kafka: kafka.bootstrap_servers`` gives a ready cluster and
    removes it afterwards. ``stop_node``/``start_node`` take one node down and bring it back
    with its data, for replication-fault tests.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        workdir: Path | None = None,
        listeners: list[Listener] | None = None,
        broker_properties: Mapping[str, str] | None = None,
        format_args: list[str] | None = None,
        heap: str = "512m",
        ready_timeout: float = 90.0,
    ) -> None:
        self.node_count = nodes
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="treewatch-kafka-"))
        self.listeners = list(listeners or [])
        self.broker_properties = dict(broker_properties or {})
        self.format_args = list(format_args or [])
        self.heap = heap
        self.ready_timeout = ready_timeout
        self.cluster_id = _kafka_cluster_id()
        self.nodes: list[Node] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KafkaCluster:
        libs = fetch_jars()
        self._classpath = f"{libs}/*"
        ports = iter(free_ports(self.node_count * (2 + len(self.listeners))))
        self.nodes = [self._plan_node(i + 1, ports) for i in range(self.node_count)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            node.config_path.write_text(self._properties(node, voters))
            self._format(node)
        for node in self.nodes:
            self._launch(node)
        self.wait_ready(self.node_count)
        return self

    def stop(self) -> None:
        if self._own_workdir:
            # The data is thrown away: a graceful shutdown would only wait for a quorum that the
            # nodes stopped before already took with them (half a minute on three nodes).
            stop_processes(*self._processes(), grace_seconds=0)
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        stop_processes(*self._processes(), grace_seconds=NODE_STOP_SECONDS)

    def __enter__(self) -> KafkaCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` (0-based) the way an operator would: SIGTERM, wait."""
        stop_processes(*self._processes(index), grace_seconds=NODE_STOP_SECONDS)

    def kill_node(self, index: int) -> None:
        """Stop node ``index`` abruptly (SIGKILL), as a crash would."""
        stop_processes(*self._processes(index), grace_seconds=0)

    def start_node(self, index: int) -> None:
        node = self.nodes[index]
        if not node.running:
            self._launch(node)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.client_port}" for n in self.nodes)

    def listener_bootstrap(self, name: str) -> str:
        return ",".join(f"127.0.0.1:{n.extra_ports[name]}" for n in self.nodes)

    def admin(self, **extra: str) -> AdminClient:
        # librdkafka logs every refused connection to stderr; a node being down is expected here.
        return AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0, **extra})

    # -- readiness and diagnostics ------------------------------------------------------------

    def wait_ready(self, brokers: int, timeout: float | None = None) -> None:
        """Wait until the cluster reports ``brokers`` live brokers and a controller."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        admin = self.admin()
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.process is not None and n.process.poll() is not None
                    and n.process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL)]
            if dead:
                raise KafkaStartError(f"Kafka node {dead[0].node_id} exited:\n{self.log_tail()}")
            try:
                described = admin.describe_cluster(request_timeout=5).result(timeout=6)
                if len(described.nodes) >= brokers and described.controller is not None:
                    return
            except Exception as error:  # broker still starting: ask again
                last_error = error
            time.sleep(0.2)
        raise KafkaStartError(
            f"Kafka did not report {brokers} broker(s) within {timeout or self.ready_timeout}s"
            f" (last error: {last_error}):\n{self.log_tail()}"
        )

    def groups_answer(self, groups: list[str]) -> bool:
        """True when every one of ``groups`` can be described and have its offsets read: after a
        node returns, the cluster is whole for a client only once its group coordinators are."""
        admin = self.admin()
        try:
            for future in admin.describe_consumer_groups(groups, request_timeout=5).values():
                future.result(timeout=6)
            for group in groups:
                admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                  request_timeout=5)[group].result(timeout=6)
            return True
        except Exception:  # not yet: asked again by the caller
            return False

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")

    def log_tail(self, lines: int = 60) -> str:
        parts = []
        for node in self.nodes:
            if node.log_path.exists():
                tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- kafka node {node.node_id} ({node.log_path}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- internals ---------------------------------------------------------------------------

    def _plan_node(self, node_id: int, ports: Iterator[int]) -> Node:
        base = self.workdir / f"node-{node_id}"
        base.mkdir(parents=True, exist_ok=True)
        return Node(
            node_id=node_id,
            client_port=next(ports),
            controller_port=next(ports),
            data_dir=base / "data",
            config_path=base / "server.properties",
            log_path=base / "broker.log",
            extra_ports={listener.name: listener.port or next(ports) for listener in self.listeners},
        )

    def _properties(self, node: Node, voters: str) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{node.client_port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        for listener in self.listeners:
            listeners.append(f"{listener.name}://127.0.0.1:{node.extra_ports[listener.name]}")
            protocols.append(f"{listener.name}:{listener.protocol}")
        replication = str(min(3, self.node_count))
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(listeners + [f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(node.data_dir),
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": replication,
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            # A stopped node is noticed in seconds rather than the default minute.
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
            "replica.lag.time.max.ms": "6000",
        }
        for listener in self.listeners:
            for key, value in listener.properties.items():
                props[f"listener.name.{listener.name.lower()}.{key}"] = value
        props.update(self.broker_properties)
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaStartError("java is not on PATH: run `make setup`")
        return [java, f"-Xmx{self.heap}", f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                "-cp", self._classpath, *args]

    def _format(self, node: Node) -> None:
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                       "-c", str(node.config_path), *self.format_args),
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"formatting node {node.node_id} failed:\n{result.stdout}{result.stderr}")

    def _launch(self, node: Node) -> None:
        log = node.log_path.open("ab")
        node.process = subprocess.Popen(
            self._java("kafka.Kafka", str(node.config_path)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()

    def _processes(self, *indexes: int) -> list[subprocess.Popen]:
        """The processes of the nodes ``indexes`` (all nodes when none is given) ever started."""
        nodes = [self.nodes[i] for i in indexes] if indexes else self.nodes
        return [node.process for node in nodes if node.process is not None]


def _kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own Uuid.randomUuid(), never one starting with "-": the storage tool would read
    it as an option and refuse to format (one start in 64 otherwise fails)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
