"""`treewatch demo` run for real (bounded by --duration), and the deployment files checked
statically: Docker does not run here, so docker-compose.yml is checked for what would break
`docker compose up` (YAML, bind-mounted paths, Dockerfiles, ports, the names the guide uses),
and the configuration files it mounts are validated by the tools that read them."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devkafka import free_port
from devkafka.processes import ProcessStartError, running_process
from pipeline.config import DEFAULT_SERVICES, DEFAULT_STAGES, ENV_OVERRIDES, load_config, schema

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
GUIDE_GROUPS = {stage["group"] for stage in DEFAULT_STAGES.values()}


# -- the demo --------------------------------------------------------------------------------------

class Output:
    """The demo's output lines, read in the background so its pipe never fills up."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, process: subprocess.Popen, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if process.poll() is not None:
                self._thread.join(5)
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def lag_groups(metrics_url: str) -> set[str]:
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.TransportError:
        return set()
    return {sample.labels["group"] for family in text_string_to_metric_families(text)
            if family.name == "kafka_consumer_group_lag" for sample in family.samples}


def prometheus_sees_the_exporter(prometheus_url: str) -> bool:
    try:
        answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": 'up{job="treewatch"}'},
                           timeout=5)
    except httpx.TransportError:
        return False
    return [r["value"][1] for r in answer.json()["data"]["result"]] == ["1"]


def prometheus_alert_rules(prometheus_url: str) -> set[str]:
    answer = httpx.get(f"{prometheus_url}/api/v1/rules", params={"type": "alert"}, timeout=5)
    answer.raise_for_status()
    return {rule["name"] for group in answer.json()["data"]["groups"] for rule in group["rules"]}


def refuses_connections(url: str) -> bool:
    """Nothing listens at the URL's host:port any more (a live server would accept)."""
    host, port = url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# Independent of how long the demo is asked to run: awaiting a condition on a busy 2-core host.
DEMO_STARTS_WITHIN_SECONDS = 180
DEMO_SHOWS_WITHIN_SECONDS = 120
# The story's pages and resolved messages come within about three minutes; more slack still.
DEMO_STORY_WITHIN_SECONDS = 420
LOCAL_URL = re.compile(r"http://127\.0\.0\.1:\d+\S*")


def printed_links(lines: list[str]) -> list[str]:
    """The URLs the demo prints for people to open (not those inside a command it prints)."""
    links = []
    for line in lines:
        for match in LOCAL_URL.finditer(line):
            before = line[:match.start()]
            if not before.endswith(("=", "--simulator ")):
                links.append(match.group())
    return links


def printed_commands(lines: list[str], program: str) -> list[list[str]]:
    """The ``program ...`` command lines the demo prints for people to type."""
    return [shlex.split(line[line.index(f"{program} "):]) for line in lines if f": {program} " in line]


def test_demo_plays_its_story_with_working_links_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # A --duration far beyond the test's deadlines: it only bounds a demo the test failed to stop.
    process = subprocess.Popen(
        [sys.executable, "-m", "treewatch", "demo", "--duration", "900", "--free-ports"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        output = Output(process)
        # Starting Kafka from cold may take a while on a busy machine.
        metrics_url = output.wait_for(r"exporter\s+(http://\S+/metrics)", process,
                                      DEMO_STARTS_WITHIN_SECONDS).group(1)
        kafka = output.wait_for(r"kafka: (\S+);", process, timeout=5).group(1)
        output.wait_for(r"TIME-SCALED by 0\.05", process, timeout=5)
        prometheus = output.wait_for(r"prometheus\s+(http://\S+)/classic/alerts", process, timeout=5).group(1)
        alertmanager = output.wait_for(r"--alertmanager\.url=(http://\S+)", process, timeout=5).group(1)
        control = output.wait_for(r"treewatch incident list --simulator (http://\S+)", process, timeout=5).group(1)

        # The generated rules (time-scaled, same names), not an empty rule set, are what Prometheus evaluates.
        rules = yaml.safe_load((REPO / "alerts" / "generated" / "treewatch-rules.yml").read_text())
        generated = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
        assert prometheus_alert_rules(prometheus) == generated

        deadline = time.monotonic() + DEMO_SHOWS_WITHIN_SECONDS
        while not (GUIDE_GROUPS <= lag_groups(metrics_url) and prometheus_sees_the_exporter(prometheus)):
            assert time.monotonic() < deadline, (
                f"lag series for {GUIDE_GROUPS - lag_groups(metrics_url)} or Prometheus' scrape missing "
                f"after {DEMO_SHOWS_WITHIN_SECONDS}s; output:\n{output.text}")
            assert process.poll() is None, f"the demo stopped early; output:\n{output.text}"
            time.sleep(0.5)
        # The Watchdog went Prometheus → the generated Alertmanager config → the demo's Slack stand-in.
        output.wait_for(r"\] heartbeat: the Watchdog alert reached its receiver", process, DEMO_SHOWS_WITHIN_SECONDS)
        output.wait_for(r"lag +tree-discovery-group=\d+ stamping-generator-group=\d+ "
                        r"indexing-processor-group=\d+", process, DEMO_SHOWS_WITHIN_SECONDS)

        # The story: a page in each channel, each Slack line with its elapsed time, resolved messages.
        output.wait_for(r"^\[ *\d+s\] slack → #tree-stamping-alerts: \[FIRING:\d+\] WARNING ", process,
                        DEMO_STORY_WITHIN_SECONDS)
        output.wait_for(r"^\[ *\d+s\] slack → #tree-stamping-oncall: \[FIRING:\d+\] CRITICAL ConsumerGroupStalled",
                        process, DEMO_STORY_WITHIN_SECONDS)
        output.wait_for(r"^\[ *\d+s\] slack → #tree-stamping-oncall: \[RESOLVED\] CRITICAL ", process,
                        DEMO_STORY_WITHIN_SECONDS)
        output.wait_for(r"^\[ *\d+s\] the story is over", process, DEMO_STORY_WITHIN_SECONDS)

        # Every link it printed opens with Debian's Prometheus (classic UI), the exporter and the services.
        lines = list(output.lines)
        links = printed_links(lines)
        assert any("/classic/graph?g0.expr=" in link for link in links)
        assert not [link for link in links if re.search(r":\d+/(alerts|graph)\b", link)], "a new-UI link"
        broken = {link: httpx.get(link, timeout=10).status_code for link in links}
        assert {link: code for link, code in broken.items() if code != 200} == {}
        # Alertmanager has no web UI there: the amtool commands it printed work instead.
        commands = printed_commands(lines, "amtool")
        assert len(commands) >= 3 and any(c[:3] == ["amtool", "silence", "add"] for c in commands)
        for command in commands:
            command = [word.replace("<alertname>", "DemoTest") for word in command]
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (command, result.stdout + result.stderr)
        incidents = subprocess.run([sys.executable, "-m", "treewatch", "incident", "list", "--simulator", control],
                                   capture_output=True, text=True, timeout=60)
        assert incidents.returncode == 0 and "stage-stalled" in incidents.stdout, incidents.stderr

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, output.text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output.wait_for(r"^demo stopped$", process, timeout=5)
    # Everything it started is gone with it.
    for url in (metrics_url, prometheus, alertmanager, control, f"http://{kafka}"):
        assert refuses_connections(url), f"{url} still accepts connections after the demo stopped"


def test_the_demo_refuses_an_incident_it_does_not_know_before_starting_anything() -> None:
    result = subprocess.run([sys.executable, "-m", "treewatch", "demo", "--incident", "stage-stuck"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "treewatch demo: no incident named 'stage-stuck'; the catalogue has service-down" in result.stderr
    assert "starting Kafka" not in result.stdout


# -- devkafka.processes (how the demo runs Prometheus and Alertmanager) ----------------------------

def test_a_server_that_exits_before_it_is_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    crashing = [sys.executable, "-c", "import sys; print('bad flag --config.file'); sys.exit(3)"]
    with pytest.raises(ProcessStartError, match=r"(?s)crasher exited with 3 .*bad flag --config\.file"):
        with running_process("crasher", crashing, f"http://127.0.0.1:{free_port()}/-/ready",
                             tmp_path / "crasher.log"):
            raise AssertionError("a server that exited was reported ready")


def test_a_server_that_never_gets_ready_is_reported_and_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    silent = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                    "print('listening nowhere', flush=True); time.sleep(600)"]
    url = f"http://127.0.0.1:{free_port()}/-/ready"
    with pytest.raises(ProcessStartError, match=r"(?s)silent not ready at .* within 10s.*listening nowhere"):
        # Long enough for the child to start and say its line on a busy machine.
        with running_process("silent", silent, url, tmp_path / "silent.log", timeout=10):
            raise AssertionError("a server that never answered was reported ready")
    # Stopped and reaped, not left running.
    assert not Path(f"/proc/{int(pid_file.read_text())}").exists()


def test_a_ready_server_is_yielded_and_stopped_when_the_block_ends(tmp_path: Path) -> None:
    port = free_port()
    serving = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with running_process("http.server", serving, f"http://127.0.0.1:{port}/", tmp_path / "http.log") as process:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert process.poll() is not None
    assert refuses_connections(f"http://127.0.0.1:{port}/")


# -- docker-compose.yml ----------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def host_path(spec: str) -> str:
    """The host side of a bind mount, with ${VAR:-default} resolved to its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", spec)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = host_path(volume).split(":")[:2]
        if source.startswith((".", "/")):  # named volumes are Docker's own
            mounts.append((source, target))
    return mounts


def test_compose_has_the_stack_and_the_guides_container_name() -> None:
    services = compose()["services"]
    assert set(services) == {"redpanda", "simulator", "exporter", "prometheus", "alertmanager", "grafana"}
    assert host_path(services["redpanda"]["container_name"]) == "omninode-bridge-redpanda"
    assert services["redpanda"]["image"].startswith("redpandadata/redpanda:")
    for name, image in (("prometheus", "prom/prometheus:"), ("alertmanager", "prom/alertmanager:"),
                        ("grafana", "grafana/grafana:")):
        assert services[name]["image"].startswith(image)


def test_every_bind_mounted_path_and_dockerfile_exists_in_the_repository() -> None:
    services = compose()["services"]
    mounted = [(name, source) for name, service in services.items() for source, _ in bind_mounts(service)]
    assert len(mounted) >= 8
    missing = [(name, source) for name, source in mounted if not (REPO / source).exists()]
    assert missing == [], f"bind-mounted paths not in the repository (run `make generate`?): {missing}"
    for name, service in services.items():
        if "build" in service:
            dockerfile = REPO / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile}"


def test_the_dockerfile_copies_only_what_exists_and_installs_every_package() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = [source for sources in copied for source in sources]
    assert [s for s in sources if not (REPO / s).exists()] == []
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r'include = \[([^]]*)\]', pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in sources, f"the image misses the {package} package"


def test_published_ports_do_not_clash_and_are_the_guides() -> None:
    services = compose()["services"]
    published = [host_path(str(port)).split(":")[0] for service in services.values()
                 for port in service.get("ports", [])]
    assert len(published) == len(set(published)), published
    guide_ports = {str(urlsplit(entry["url"]).port) for entry in DEFAULT_SERVICES.values()}
    assert guide_ports <= set(published)
    assert {"9847", "9090", "9093", "3000"} <= set(published)


def test_every_host_port_and_container_name_can_be_moved_out_of_a_real_pipelines_way() -> None:
    # A real pipeline on the same host already holds the guide's ports and broker container name.
    services = compose()["services"]
    fixed = [(name, spec) for name, service in services.items() for spec in service.get("ports", [])
             if not re.match(r"\$\{TREEWATCH_[A-Z_]+:-\d+\}\d*:\d+$", str(spec))]
    assert fixed == []
    named = {name: service["container_name"] for name, service in services.items() if "container_name" in service}
    assert all(re.fullmatch(r"\$\{TREEWATCH_[A-Z_]+:-[\w.-]+\}", value) for value in named.values()), named
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    variables = set(re.findall(r"\$\{(TREEWATCH_[A-Z_]+):-", COMPOSE.read_text()))
    assert variables - {"TREEWATCH_ENV"} <= set(re.findall(r"TREEWATCH_[A-Z_]+", header)), "document each variable"


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs_to_be_healthy() -> None:
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] == "CMD", f"{name} has no healthcheck"
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        assert all(spec.get("condition") == "service_healthy" for spec in depends_on.values()), name
        assert set(depends_on) <= set(services), name
    # The stack comes up in order: broker, then treewatch, then Prometheus, then Grafana.
    assert set(services["prometheus"]["depends_on"]) == {"exporter", "alertmanager"}
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}
    assert set(services["exporter"]["depends_on"]) == {"redpanda"}


def test_every_image_is_pinned_to_a_full_version() -> None:
    images = [service["image"] for name, service in compose()["services"].items() if "build" not in service]
    bases = re.findall(r"^FROM (\S+)", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
    for image in images + bases:
        assert re.search(r":v?\d+\.\d+\.\d+(-[\w.-]+)?$|@sha256:[0-9a-f]{64}$", image), image


def test_prometheus_and_alertmanager_know_the_url_people_reach_them_at() -> None:
    # Without it the Slack messages' Query and Silence buttons point at the container's own name.
    services = compose()["services"]
    for name, port in (("prometheus", "9090"), ("alertmanager", "9093")):
        flags = [arg for arg in services[name]["command"] if arg.startswith("--web.external-url=")]
        assert len(flags) == 1, f"{name}: {services[name]['command']}"
        variable, default = re.fullmatch(r"--web.external-url=\$\{([A-Z_]+):-([^}]+)\}", flags[0]).groups()
        assert variable == f"{name.upper()}_EXTERNAL_URL"
        assert default == f"http://localhost:{port}"
        assert f"{port}:{port}" in [host_path(spec) for spec in services[name]["ports"]]


def test_the_treewatch_containers_config_is_valid_and_points_inside_the_stack() -> None:
    services = compose()["services"]
    for name in ("exporter", "simulator"):
        service = services[name]
        environment = service["environment"]
        assert set(environment) <= set(ENV_OVERRIDES), f"{name}: unknown TREEWATCH_* variable"
        (config_file,) = [source for source, target in bind_mounts(service) if target.endswith(".yaml")]
        config = load_config(REPO / config_file, environ={k: str(v) for k, v in environment.items()})
        assert config.kafka.bootstrap_servers == "redpanda:9092"
        for service_config in config.services:
            assert service_config.url.startswith(("http://simulator:", "tcp://simulator:")), service_config
    exporter_config = load_config(REPO / bind_mounts(services["exporter"])[0][0],
                                  environ={k: str(v) for k, v in services["exporter"]["environment"].items()})
    host, port = exporter_config.exporter.listen_host_port
    assert (host, f"{port}:{port}") == ("0.0.0.0", host_path(services["exporter"]["ports"][0]))


def test_prometheus_config_scrapes_the_exporter_and_loads_the_mounted_rules(tmp_path: Path) -> None:
    services = compose()["services"]
    mounts = dict((target, source) for source, target in bind_mounts(services["prometheus"]))
    config_path = REPO / mounts["/etc/prometheus/prometheus.yml"]
    result = subprocess.run(["promtool", "check", "config", "--syntax-only", str(config_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter_port = host_path(services["exporter"]["ports"][0]).split(":")[1]
    assert jobs["treewatch"]["static_configs"][0]["targets"] == [f"exporter:{exporter_port}"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    for rule_file in config["rule_files"]:
        folder, name = rule_file.rsplit("/", 1)
        assert (REPO / mounts[folder] / name).is_file(), f"{rule_file} is not in the mounted {mounts[folder]}"

    # With the container paths mapped back to the repository, the whole config (rules included)
    # passes the full check, not only the syntax one.
    local = dict(config, rule_files=[str(REPO / mounts[f.rsplit("/", 1)[0]] / f.rsplit("/", 1)[1])
                                     for f in config["rule_files"]])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_and_grafana_mounts_match_the_paths_their_configs_name() -> None:
    services = compose()["services"]
    alertmanager = {target: source for source, target in bind_mounts(services["alertmanager"])}
    config_arg = next(a for a in services["alertmanager"]["command"] if a.startswith("--config.file="))
    config_file = config_arg.split("=", 1)[1]
    folder, name = config_file.rsplit("/", 1)
    generated = yaml.safe_load((REPO / alertmanager[folder] / name).read_text())
    assert generated["global"]["slack_api_url_file"] in alertmanager
    for template in generated.get("templates", []):
        assert (REPO / alertmanager[folder] / template).is_file()

    grafana = {target: source for source, target in bind_mounts(services["grafana"])}
    provisioning = REPO / grafana["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "treewatch.yml").read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert dashboards_path in grafana
    dashboards = list((REPO / grafana[dashboards_path]).glob("*.json"))
    assert dashboards and all(json.loads(d.read_text())["title"] for d in dashboards)


def test_alertmanager_config_as_mounted_passes_amtool(tmp_path: Path) -> None:
    services = compose()["services"]
    mounts = {target: source for source, target in bind_mounts(services["alertmanager"])}
    # Recreate the container's layout so every path the config names resolves as it would there.
    generated = yaml.safe_load((REPO / mounts["/etc/alertmanager/config"] / "alertmanager.yml").read_text())
    secret = tmp_path / "slack-api-url"
    shutil.copy(REPO / mounts[generated["global"]["slack_api_url_file"]], secret)
    generated["global"]["slack_api_url_file"] = str(secret)
    for template in generated.get("templates", []):
        shutil.copy(REPO / mounts["/etc/alertmanager/config"] / template, tmp_path / template)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(generated))
    result = subprocess.run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- treewatch.example.yaml ------------------------------------------------------------------------

def test_the_example_config_validates_and_states_exactly_the_defaults() -> None:
    example = load_config(REPO / "treewatch.example.yaml", environ={})
    assert dataclasses.replace(example, source="<defaults>") == load_config(None, environ={})


def test_the_example_config_shows_every_field_of_the_schema() -> None:
    text = (REPO / "treewatch.example.yaml").read_text()
    root = schema()

    def fields(node: dict[str, Any]) -> set[str]:
        if "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
        names = set()
        for name, child in node.get("properties", {}).items():
            names.add(name)
            names |= fields(child)
        if isinstance(node.get("additionalProperties"), dict):
            names |= fields(node["additionalProperties"])
        return names

    # Shown means set, or in a comment for the sections that change behaviour when merely present.
    missing = sorted(name for name in fields(root)
                     if not re.search(rf"^\s*#.*\b{re.escape(name)}:|^\s*{re.escape(name)}:", text, re.M))
    assert missing == []

