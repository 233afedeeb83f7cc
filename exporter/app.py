"""The exporter put together from a configuration: sources, refresher, HTTP server."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from importlib.metadata import version

from confluent_kafka import KafkaError, KafkaException

from exporter.kafka_source import KafkaSource
from exporter.memory import release_freed_memory
from exporter.refresh import Refresher, Source, default_build_info
from exporter.render import Renderer
from exporter.server import DEFAULT_METRICS_PATH, RESERVED_PATHS, Endpoints, ExporterHTTPServer, Limits, landing_page
from exporter.services_source import ServicesSource
from exporter.settings import WebSettings, split_listen_address
from exporter.sharding import reports_whole_cluster
from exporter.web import EndpointSecurity, endpoint_security
from exporter.web_config import load_web_security
from pipeline.config import Config, ConfigError
from pipeline.health import redact_url
from pipeline.kafka import admin_client
from pipeline.tls import check_client_files

log = logging.getLogger("treewatch.exporter")


@dataclass(frozen=True)
class WebFlags:
    """The flags of ``treewatch exporter`` that every official Prometheus exporter has (exporter-toolkit's),
    each over the configuration file."""

    config_file: str | None = None  # --web.config.file: TLS and basic auth, instead of exporter.web
    listen_address: str | None = None  # --web.listen-address: over exporter.listen_address
    telemetry_path: str = DEFAULT_METRICS_PATH  # --web.telemetry-path


@dataclass
class Exporter:
    config: Config
    refresher: Refresher
    server: ExporterHTTPServer
    metrics_path: str = DEFAULT_METRICS_PATH

    @property
    def url(self) -> str:
        scheme = "https" if self.server.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.port}"

    def start(self) -> Exporter:
        self.refresher.start()
        self.server.serve_in_thread()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.refresher.stop()


def build_sources(config: Config) -> list[Source]:
    sources: list[Source] = [KafkaSource(config)]
    # The services are probed once for all shards, by shard 0 (exporter/sharding.py).
    if config.services and reports_whole_cluster(config.exporter.shard):
        sources.append(ServicesSource(config))
    return sources


def load_security(config: Config, web_config_file: str | None = None) -> EndpointSecurity:
    """The endpoint's security (from ``exporter.web``, or from exporter-toolkit's web config file when
    one is given), and the Kafka client's TLS files, loaded now: a bad hash, file, key or password is
    refused here, named, before any socket or thread exists."""
    try:
        check_client_files(config.kafka.tls)
        if web_config_file is None:
            return endpoint_security(config.exporter.web)
    except ConfigError as error:
        raise ConfigError(f"{config.source}: {error}") from None
    if config.exporter.web != WebSettings():
        raise ConfigError(f"--web.config.file {web_config_file} and {config.source}: exporter.web both configure "
                          f"the exporter's TLS and basic auth; keep one (the web config file can say all "
                          f"exporter.web says)")
    return load_web_security(web_config_file)


def check_startable(config: Config) -> None:
    """Everything the exporter's start loads or checks, without serving (``treewatch check-config``):
    the files above, and the Kafka client settings as librdkafka reads them (it checks every property
    when a client is made, so one client is made, and dropped before it has asked anything)."""
    load_security(config)
    try:
        admin_client(config.kafka)
    except KafkaException as error:
        raise _refused_by_librdkafka(config, error) from None


def _refused_by_librdkafka(config: Config, error: KafkaException) -> ConfigError:
    reason = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
    return ConfigError(f"{config.source}: kafka: librdkafka refuses the client settings: {' '.join(reason.split())}")


def build_exporter(config: Config, *, port: int | None = None, web: WebFlags = WebFlags()) -> Exporter:
    """An exporter for ``config`` and the command line's ``web`` flags, not yet started; ``port``
    overrides the configured one (0: any)."""
    settings = config.exporter
    metrics_path = _checked_telemetry_path(web.telemetry_path)
    if web.listen_address is None:
        listen_address, where = settings.listen_address, f"{config.source}: exporter.listen_address"
        host, configured_port = settings.listen_host_port
    else:
        listen_address, where = web.listen_address, "--web.listen-address"
        try:
            host, configured_port = split_listen_address(web.listen_address)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    security = load_security(config, web.config_file)
    try:
        sources = build_sources(config)
    except KafkaException as error:
        raise _refused_by_librdkafka(config, error) from None
    renderer = Renderer(lambda: refresher.current)
    refresher = Refresher(
        sources,
        interval_seconds=settings.refresh_interval_seconds,
        stale_grace_seconds=settings.stale_grace_seconds,
        max_series=settings.max_series,
        build_info=default_build_info(version("treewatch")),
        on_snapshot=lambda: (renderer.prerender(), release_freed_memory()),
    )
    endpoints = Endpoints(
        renderer=renderer,
        ready=lambda: refresher.ready,
        landing_page=lambda: landing_page("treewatch exporter", _landing_rows(config, refresher), metrics_path),
        metrics_path=metrics_path,
    )
    address = (host, configured_port if port is None else port)
    try:
        server = ExporterHTTPServer(address, endpoints, authorize=security.authorize,
                                    tls_context=security.tls_context, headers=security.headers,
                                    limits=Limits(max_connections=settings.max_connections))
    except OSError as error:
        refresher.stop()  # closes the Kafka clients the sources already opened
        raise ConfigError(f"{where}: cannot listen on {listen_address if port is None else address}: "
                          f"{error.strerror}") from None
    return Exporter(config, refresher, server, metrics_path)


def _checked_telemetry_path(path: str) -> str:
    if not path.startswith("/") or path in RESERVED_PATHS or any(c in path for c in "?#") or \
            any(c.isspace() or not c.isprintable() for c in path):
        raise ConfigError(f"--web.telemetry-path: expected a path starting with / other than "
                          f"{', '.join(RESERVED_PATHS)} (no query, no spaces), got {path!r}")
    return path


def _landing_rows(config: Config, refresher: Refresher) -> list[tuple[str, str]]:
    # Only names and addresses: no credential of any kind reaches this page.
    rows = [("configuration", config.source), ("environment", config.env),
            ("kafka", config.kafka.bootstrap_servers), ("security", config.kafka.security_protocol)]
    shard = config.exporter.shard
    if shard.count > 1:
        rows.append(("shard", f"{shard.index} of {shard.count} (shard 0 also reports the topics, cluster, "
                              f"pipeline, DLQs and services)"))
    rows += [(f"stage {s.name}", f"group {s.group}; request topic {s.request_topic}") for s in config.stages]
    rows += [(f"service {s.name}", redact_url(s.url)) for s in config.services]
    for name, status in refresher.collector_status().items():
        state = {True: "ok", False: f"failing: {status['error']}", None: "not run yet"}[status["ok"]]
        rows.append((f"collector {name}", state))
    return rows


def run_exporter(config: Config, web: WebFlags = WebFlags()) -> None:
    """Serve until SIGTERM or SIGINT, then stop every thread cleanly."""
    stop = threading.Event()
    # Handlers first: a SIGTERM that arrives while starting still ends in a clean stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    exporter = build_exporter(config, web=web).start()
    log.info("serving %s%s (refresh every %ss)", exporter.url, exporter.metrics_path,
             config.exporter.refresh_interval_seconds)
    stop.wait()
    log.info("shutting down")
    exporter.stop()
