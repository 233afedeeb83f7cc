"""The exporter put together from a configuration: sources, refresher, HTTP server."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from dataclasses import dataclass
from importlib.metadata import version

from confluent_kafka import KafkaError, KafkaException

from exporter.kafka_source import KafkaSource
from exporter.refresh import Refresher, Source, default_build_info
from exporter.render import Renderer
from exporter.server import Endpoints, ExporterHTTPServer, Limits, landing_page
from exporter.services_source import ServicesSource
from exporter.web import Authorizer, authorizer, tls_context
from pipeline.config import Config, ConfigError
from pipeline.health import redact_url
from pipeline.kafka import admin_client
from pipeline.tls import check_client_files

log = logging.getLogger("treewatch.exporter")


@dataclass
class Exporter:
    config: Config
    refresher: Refresher
    server: ExporterHTTPServer

    @property
    def url(self) -> str:
        scheme = "https" if self.config.exporter.web.tls_cert_file else "http"
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
    if config.services:
        sources.append(ServicesSource(config))
    return sources


def load_security(config: Config) -> tuple[Authorizer | None, ssl.SSLContext | None]:
    """The exporter's basic-auth check and TLS context, and the Kafka client's TLS files, loaded now:
    a bad hash, file, key or password is refused here, named, before any socket or thread exists."""
    try:
        check_client_files(config.kafka.tls)
        return authorizer(config.exporter.web), tls_context(config.exporter.web)
    except ConfigError as error:
        raise ConfigError(f"{config.source}: {error}") from None


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


def build_exporter(config: Config, *, port: int | None = None) -> Exporter:
    """An exporter for ``config``, not yet started; ``port`` overrides the configured one (0: any)."""
    settings = config.exporter
    authorize, tls = load_security(config)
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
        on_snapshot=renderer.prerender,
    )
    endpoints = Endpoints(
        renderer=renderer,
        ready=lambda: refresher.ready,
        landing_page=lambda: landing_page("treewatch exporter", _landing_rows(config, refresher)),
    )
    host, configured_port = settings.listen_host_port
    address = (host, configured_port if port is None else port)
    try:
        server = ExporterHTTPServer(address, endpoints, authorize=authorize, tls_context=tls,
                                    limits=Limits(max_connections=settings.max_connections))
    except OSError as error:
        refresher.stop()  # closes the Kafka clients the sources already opened
        raise ConfigError(f"{config.source}: exporter.listen_address: cannot listen on "
                          f"{settings.listen_address if port is None else address}: {error.strerror}") from None
    return Exporter(config, refresher, server)


def _landing_rows(config: Config, refresher: Refresher) -> list[tuple[str, str]]:
    # Only names and addresses: no credential of any kind reaches this page.
    rows = [("configuration", config.source), ("environment", config.env),
            ("kafka", config.kafka.bootstrap_servers), ("security", config.kafka.security_protocol)]
    rows += [(f"stage {s.name}", f"group {s.group}; request topic {s.request_topic}") for s in config.stages]
    rows += [(f"service {s.name}", redact_url(s.url)) for s in config.services]
    for name, status in refresher.collector_status().items():
        state = {True: "ok", False: f"failing: {status['error']}", None: "not run yet"}[status["ok"]]
        rows.append((f"collector {name}", state))
    return rows


def run_exporter(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop every thread cleanly."""
    stop = threading.Event()
    # Handlers first: a SIGTERM that arrives while starting still ends in a clean stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    exporter = build_exporter(config).start()
    log.info("serving %s/metrics (refresh every %ss)", exporter.url, config.exporter.refresh_interval_seconds)
    stop.wait()
    log.info("shutting down")
    exporter.stop()
