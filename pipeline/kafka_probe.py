"""What is at the Kafka bootstrap address when a client cannot reach the cluster.

librdkafka reports a closed port, an HTTP server, a service that sends its own banner and a
firewall that drops packets all alike: a timeout ("Failed while waiting for controller") or a
transport failure, after the whole request timeout. Asking each bootstrap address directly, with
one Kafka ApiVersions request on a plain socket (TLS when the configuration says so), tells them
apart: refused, no answer, answered in another protocol, or a real Kafka broker, in which case
the trouble lies beyond the bootstrap address (credentials, TLS, the advertised listeners).

``check_reachable`` is what the operator tools run before their work: one cluster request through
the configured client, and on failure a description naming the address, where it was configured
and what answers there. A failure that may pass while a broker does answer (one broker of several
just crashed) is left to the tool, which retries within its own time.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Mapping
from concurrent.futures import wait
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.config import ENV_OVERRIDES, Config, KafkaSettings
from pipeline.kafka import ClientErrors, KafkaSession, kafka_session, result_of
from pipeline.kafka_errors import error_text, is_transient

log = logging.getLogger("treewatch.kafka")

KAFKA_DEFAULT_PORT = 9092
_API_VERSIONS_KEY = 18
# Version 0 is the one every broker answers, whatever versions it supports: a broker that does
# not know the version still replies in version 0's layout (UNSUPPORTED_VERSION and its range).
_API_VERSIONS_VERSION = 0
_CORRELATION_ID = 0x74726565  # "tree"
# The client id ends in an empty line. An HTTP server reads a request line and headers before it
# answers; with the empty line it has a whole (malformed) request and answers 400 at once instead of
# waiting for more. A Kafka broker takes any string as client id: nothing in the answer depends on it.
_CLIENT_ID = b"treewatch-probe\r\n\r\n"
# An ApiVersions answer lists some 80 APIs in 6 bytes each; anything claiming more is not one.
_MAX_ANSWER_BYTES = 1 << 20
# How much of an answer that is not Kafka's is read, to show the operator what answered.
_SHOWN_BYTES = 48
# Probing waits at most this long per address, however long the configured request timeout.
PROBE_SECONDS = 5.0
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class AddressFinding:
    address: str
    speaks_kafka: bool
    finding: str  # what answers there, in words


class KafkaUnreachable(RuntimeError):
    """The cluster could not be reached at all; the message says where it was looked for and why."""


def api_versions_request() -> bytes:
    header = struct.pack(">hhih", _API_VERSIONS_KEY, _API_VERSIONS_VERSION, _CORRELATION_ID, len(_CLIENT_ID))
    request = header + _CLIENT_ID
    return struct.pack(">i", len(request)) + request


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """(host, port) of each entry of a bootstrap.servers list ("host:port", "[v6]:port",
    "SSL://host:port"; the port defaults to Kafka's 9092 as in librdkafka)."""
    found = []
    for entry in servers.split(","):
        entry = entry.strip()
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        if not entry:
            continue
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        else:
            host, port = entry, ""
        found.append((host, int(port) if port.isdigit() else KAFKA_DEFAULT_PORT))
    return found


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    # Only whether Kafka answers is asked, and nothing secret is sent: a certificate the client
    # would refuse still shows a TLS listener (the client's own error then says why it refused it).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = settings.tls
    if tls is not None and tls.cert_file and tls.key_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, tls.key_password)
        except (OSError, ssl.SSLError):
            pass  # probed without a client certificate: the client's own error says what is wrong with it
    return context


def probe_address(host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None = None) -> AddressFinding:
    """Connect to host:port, send one ApiVersions request and read what comes back."""
    address = _show(host, port)

    def found(finding: str, speaks_kafka: bool = False) -> AddressFinding:
        return AddressFinding(address, speaks_kafka, finding)

    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as error:
        return found(f"the host name does not resolve ({error.strerror})")
    except ConnectionRefusedError:
        return found("refused the connection: nothing listens on that port (a wrong port, or Kafka is not "
                     "running there)")
    except TimeoutError:
        return found(f"did not answer the connection attempt within {timeout:g}s (the host is down, or a "
                     f"firewall drops the connection)")
    except OSError as error:
        return found(f"cannot connect: {error.strerror or error}")
    try:
        if tls is not None:
            try:
                connection = tls.wrap_socket(connection, server_hostname=host)
            except (ssl.SSLError, OSError) as error:
                return found(f"accepted the connection but the TLS handshake failed ({error}): not a TLS listener, "
                             f"or not Kafka")
        connection.sendall(api_versions_request())
        answer = _read_answer(connection)
    except TimeoutError:
        return found(f"accepted the connection but sent nothing back within {timeout:g}s: not a Kafka listener")
    except OSError as error:
        return found(f"accepted the connection, then failed: {error.strerror or error}")
    finally:
        connection.close()
    return _judge(answer, tls is not None, found)


def _read_answer(connection: socket.socket) -> bytes:
    """The start of the answer: at least the 8 bytes of a Kafka response's size and correlation id
    (at most _SHOWN_BYTES), or fewer when the peer closed the connection first. Raises TimeoutError
    when nothing came at all."""
    answer = b""
    while len(answer) < 8:
        try:
            chunk = connection.recv(_SHOWN_BYTES - len(answer))
        except TimeoutError:
            if answer:
                return answer
            raise
        if not chunk:
            return answer
        answer += chunk
    return answer


def _judge(answer: bytes, over_tls: bool, found) -> AddressFinding:
    if not answer:
        expects = "" if over_tls else " (or one that expects TLS: see kafka.security_protocol)"
        return found(f"accepted the connection but closed it without answering a Kafka request: not a Kafka "
                     f"listener{expects}")
    if len(answer) >= 8:
        size, correlation_id = struct.unpack(">ii", answer[:8])
        if correlation_id == _CORRELATION_ID and 4 <= size <= _MAX_ANSWER_BYTES:
            return found("answers as a Kafka broker", speaks_kafka=True)
    # A TLS record (alert or handshake, version 3.x) in answer to plain bytes: a TLS listener.
    if not over_tls and answer[:1] in (b"\x15", b"\x16") and answer[1:2] == b"\x03":
        return found("answered in TLS: a TLS listener, while the client speaks plain TCP (set "
                     "kafka.security_protocol to SSL or SASL_SSL)")
    shown = answer.split(b"\n", 1)[0].rstrip(b"\r")
    # A status line, or the bare error page an HTTP/1.0 server sends to a request without a version.
    if answer.startswith(b"HTTP/") or answer.lstrip().startswith(b"<"):
        return found(f"answered like an HTTP server ({shown!r}), not Kafka: is this the port of a web service "
                     f"or a REST proxy?")
    return found(f"answered, but not in Kafka's protocol (it sent {shown!r}): not a Kafka listener")


def probe_bootstrap(settings: KafkaSettings, timeout: float = PROBE_SECONDS) -> list[AddressFinding]:
    """What answers at each address of the configured bootstrap.servers."""
    config = settings.client_config()
    tls = _tls_context(settings) if str(config.get("security.protocol", "")).upper() in _TLS_PROTOCOLS else None
    return [probe_address(host, port, timeout=timeout, tls=tls)
            for host, port in bootstrap_addresses(str(config.get("bootstrap.servers", "")))]


def probe_for(config: Config) -> list[AddressFinding]:
    """``probe_bootstrap`` of the configuration, each address given at most PROBE_SECONDS."""
    return probe_bootstrap(config.kafka, min(PROBE_SECONDS, config.kafka.request_timeout_seconds))


def bootstrap_origin(config: Config, environ: Mapping[str, str] | None = None) -> str:
    """Where the bootstrap address in use was configured, for the operator to go and fix it."""
    environ = os.environ if environ is None else environ
    from_file = config.source not in ("<defaults>",)
    if "bootstrap_servers" in config.kafka.overridden_by:
        return f"set by {config.kafka.overridden_by['bootstrap_servers']}" + (
            f", which overrides {config.source}" if from_file else "")
    if "bootstrap.servers" in config.kafka.client_properties:
        return f"bootstrap.servers in kafka.client_properties of {config.source}"
    variable = next(name for name, path in ENV_OVERRIDES.items() if path == ("kafka", "bootstrap_servers"))
    if variable in environ:
        return f"set by {variable}" + (f", which overrides {config.source}" if from_file else "")
    if not from_file:
        return "the default: no --config file given"
    return f"kafka.bootstrap_servers in {config.source}"


def describe_unreachable(config: Config, error: BaseException, environ: Mapping[str, str] | None = None,
                         findings: list[AddressFinding] | None = None) -> str:
    """Why the cluster cannot be reached, on several lines: the address, where it was configured,
    what answers at each of its entries (``findings``, probed here when not given), and the
    client's own error when a broker does answer."""
    servers = str(config.kafka.client_config().get("bootstrap.servers", ""))
    if findings is None:
        findings = probe_for(config)
    lines = [f"cannot reach Kafka at {servers} ({bootstrap_origin(config, environ)})"]
    lines += [f"  {f.address}: {f.finding}" for f in findings]
    if not findings or any(f.speaks_kafka for f in findings):
        lines.append(f"  the client's error: {error_text(error)}")
    if any(f.speaks_kafka for f in findings):
        security = config.kafka.overridden_by.get("security", "kafka.security_protocol, kafka.sasl, kafka.tls")
        lines.append("  a broker answers at the bootstrap address, so the trouble lies beyond it: the security "
                     f"protocol and credentials ({security}), or the brokers' "
                     "advertised listeners, which this machine must be able to reach")
    return "\n".join(lines)


class _ClientWatch:
    """``error_cb`` of the reachability check: keeps what explains a failure (ClientErrors), and
    notices when librdkafka has given up on every bootstrap broker for now."""

    def __init__(self) -> None:
        self.reasons = ClientErrors()
        self.all_brokers_down: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.reasons(error)
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.all_brokers_down = error


def check_reachable(config: Config, environ: Mapping[str, str] | None = None, *,
                    session: KafkaSession | None = None) -> None:
    """One cluster request through the configured client (TLS, SASL and all); KafkaUnreachable with
    ``describe_unreachable`` when it fails and no broker answers at the bootstrap address, or the
    failure will not pass by itself (credentials, TLS). Bounded by the request timeout, and over
    sooner when librdkafka reports every bootstrap broker down (a closed port is refused at once:
    waiting out the timeout would only delay the same answer). A tool passes its ``session`` so the
    check asks through the admin client the tool goes on with."""
    watch = _ClientWatch()
    with kafka_session(config.kafka, session) as kafka, kafka.client_errors_to(watch):
        _check_through(config, environ, kafka.admin, watch)


def _check_through(config: Config, environ: Mapping[str, str] | None, admin: AdminClient, watch: _ClientWatch
                   ) -> None:
    timeout = config.kafka.request_timeout_seconds
    future = admin.describe_cluster(request_timeout=timeout)
    give_up = time.monotonic() + timeout
    while not future.done() and watch.all_brokers_down is None and time.monotonic() < give_up:
        admin.poll(0)  # serves error_cb while the request is under way
        wait([future], timeout=0.05)
    failure: BaseException
    if future.done() or watch.all_brokers_down is None:
        try:
            result_of(future, timeout)
            return
        except KafkaException as error:
            admin.poll(0)  # serves error_cb: an authentication or TLS reason explains the failure
            failure = watch.reasons.explain(error)
        except TimeoutError as error:
            failure = error
    else:
        failure = watch.reasons.explain(KafkaException(watch.all_brokers_down))
    findings = probe_for(config)
    if is_transient(failure) and any(f.speaks_kafka for f in findings):
        # A broker answers, and the failure may pass (one broker of several is down, and the cluster
        # request waited on it): the tool goes on and asks again, within its own time.
        log.warning("the cluster did not answer at once (%s), but a broker answers at %s: going on",
                    error_text(failure), ", ".join(f.address for f in findings if f.speaks_kafka))
        return
    raise KafkaUnreachable(describe_unreachable(config, failure, environ, findings))
