"""The exporter as Prometheus users run their exporters: exporter-toolkit's web config file
(``--web.config.file``: TLS versions, client certificates, bcrypt basic auth), a password-guessing
flood that costs one bcrypt per distinct guess, and ``--web.listen-address`` /
``--web.telemetry-path``.

TLS and auth run against the real ExporterHTTPServer in this process, over real sockets, with
certificates made here with ``cryptography``; the flags run through the real command line
(``python -m treewatch exporter ...``), in a process of its own.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devkafka import free_ports
from exporter.metrics import KAFKA_CONSUMER_GROUP_LAG, Part
from exporter.server import ExporterHTTPServer
from exporter.snapshot import Sample, Snapshot
from exporter.web import EndpointSecurity
from exporter.web_config import load_web_config, load_web_security
from pipeline.config import ConfigError
from tests.exporter_serving import serving_snapshot

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "prometheus", "scrape-pass-8e1c"
BOUND = 60.0  # seconds any awaited reaction may take on a loaded machine; only a hang exceeds it
HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)


# -- certificates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Certs:
    server_ca: Path  # what clients trust
    server_cert: Path
    server_key: Path
    client_ca: Path  # the web config's client_ca_file
    client_cert: Path  # signed by client_ca
    client_key: Path
    stranger_cert: Path  # a client certificate signed by another CA
    stranger_key: Path


def _issue(common_name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - HOUR).not_valid_after(now + DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("web-certs")
    server_ca, client_ca, other_ca = (_issue(f"{name} CA", None, ca=True) for name in ("server", "client", "other"))
    _write(folder, "server-ca", server_ca[0])
    _write(folder, "client-ca", client_ca[0])
    _write(folder, "server", *_issue("localhost", server_ca))
    _write(folder, "client", *_issue("scraper", client_ca))
    _write(folder, "stranger", *_issue("stranger", other_ca))
    return Certs(folder / "server-ca.pem", folder / "server.pem", folder / "server.key", folder / "client-ca.pem",
                 folder / "client.pem", folder / "client.key", folder / "stranger.pem", folder / "stranger.key")


# -- serving --------------------------------------------------------------------------------------

def web_config(tmp_path: Path, content: object, name: str = "web-config.yml") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def tls_server_config(certs: Certs, **fields: str) -> dict[str, str]:
    return {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key), **fields}


def serving(security: EndpointSecurity) -> AbstractContextManager[ExporterHTTPServer]:
    snapshot = Snapshot.build([(Part.KAFKA_GROUPS, [Sample(KAFKA_CONSUMER_GROUP_LAG, ("g", "t", "0"), 5.0)])],
                              built_at=1.0, max_series=10)
    return serving_snapshot(snapshot, authorize=security.authorize, tls_context=security.tls_context,
                            headers=security.headers)


def client_context(certs: Certs, cert: Path | None = None, key: Path | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.server_ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def get(server: ExporterHTTPServer, path: str = "/metrics", context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None) -> http.client.HTTPResponse:
    connection = (http.client.HTTPSConnection("127.0.0.1", server.port, timeout=BOUND, context=context)
                  if context else http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND))
    try:
        connection.request("GET", path, headers=authorization(*auth) if auth else {})
        response = connection.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        return response
    finally:
        connection.close()


def authorization(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bcrypt_hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


# -- TLS ------------------------------------------------------------------------------------------

def test_min_version_tls13_refuses_a_tls12_client(certs: Certs, tmp_path: Path) -> None:
    security = load_web_security(web_config(tmp_path, {"tls_server_config": tls_server_config(
        certs, min_version="TLS13")}))
    with serving(security) as server:
        with pytest.raises(ssl.SSLError):
            get(server, context=client_context(certs, maximum=ssl.TLSVersion.TLSv1_2))
        assert get(server, context=client_context(certs)).status == 200


def test_require_and_verify_client_cert_accepts_only_certificates_of_the_client_ca(
        certs: Certs, tmp_path: Path) -> None:
    security = load_web_security(web_config(tmp_path, {"tls_server_config": tls_server_config(
        certs, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(certs.client_ca))}))
    with serving(security) as server:
        # In TLS 1.3 the client learns of the refusal when it reads: an alert, or the connection dropped.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(server, context=client_context(certs))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(server, context=client_context(certs, certs.stranger_cert, certs.stranger_key))
        accepted = get(server, context=client_context(certs, certs.client_cert, certs.client_key))
    assert accepted.status == 200
    assert b"kafka_consumer_group_lag" in accepted.body  # type: ignore[attr-defined]


# -- basic auth -----------------------------------------------------------------------------------

def test_basic_auth_accepts_the_bcrypt_hashed_password_and_refuses_others(tmp_path: Path) -> None:
    security = load_web_security(web_config(tmp_path, {
        "basic_auth_users": {USER: bcrypt_hash(PASSWORD)},
        "http_server_config": {"headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}}}))
    with serving(security) as server:
        right = get(server, auth=(USER, PASSWORD))
        wrong = get(server, auth=(USER, "guess"))
        unknown = get(server, auth=("mallory", PASSWORD))
        missing = get(server)
    assert right.status == 200 and b"kafka_consumer_group_lag" in right.body  # type: ignore[attr-defined]
    for refused in (wrong, unknown, missing):
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert b"kafka_consumer_group_lag" not in refused.body  # type: ignore[attr-defined]
    for answer in (right, wrong):
        assert answer.headers["X-Frame-Options"] == "deny"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


class CountingCheck:
    """bcrypt.checkpw, counting its calls and how many ran at once."""

    def __init__(self) -> None:
        self.checks = 0
        self.peak_concurrency = 0
        self._running = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.checks += 1
            self._running += 1
            self.peak_concurrency = max(self.peak_concurrency, self._running)
        try:
            return bcrypt.checkpw(password, hashed)
        finally:
            with self._lock:
                self._running -= 1


def test_a_password_guessing_flood_costs_one_bcrypt_per_distinct_guess_one_at_a_time(tmp_path: Path) -> None:
    threads, rounds = 16, 10
    check = CountingCheck()
    # Cost 10, as htpasswd -B makes by default: each check takes long enough that unserialized
    # checks of the threads below would overlap.
    security = load_web_security(web_config(tmp_path, {"basic_auth_users": {USER: bcrypt_hash(PASSWORD, 10)}}),
                                 check=check)
    assert check.checks == 0  # loading checks the hash with bcrypt itself, not with the counted check
    start = threading.Barrier(threads)

    def guess(thread: int) -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
        statuses = []
        start.wait(BOUND)
        # Every thread repeats one guess at once, then tries one of its own.
        for password in ["password123"] * rounds + [f"guess-{thread}"]:
            connection.request("GET", "/metrics", headers=authorization(USER, password))
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        return statuses

    with serving(security) as server:
        with ThreadPoolExecutor(threads) as pool:
            statuses = [status for result in pool.map(guess, range(threads)) for status in result]
        scrapes = [get(server, auth=(USER, PASSWORD)).status for _ in range(3)]

    assert statuses == [401] * threads * (rounds + 1)
    assert scrapes == [200] * 3
    assert check.peak_concurrency == 1
    # The repeated guess once, each thread's own guess once, the right password once.
    assert check.checks == 1 + threads + 1


# -- the web config file refused ------------------------------------------------------------------

def tls(certs: Certs, **fields: object) -> dict[str, object]:
    return {"tls_server_config": tls_server_config(certs, **fields)}


REFUSED = [
    pytest.param(lambda c: {"basic_auth_user": {}}, (
        "basic_auth_user: unknown field (expected one of: basic_auth_users, http_server_config, tls_server_config)",),
        id="unknown-top-level-key"),
    pytest.param(lambda c: tls(c, min_versoin="TLS13"), ("tls_server_config.min_versoin: unknown field",),
                 id="unknown-tls-key"),
    pytest.param(lambda c: tls(c, min_version="TLS14"), (
        "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, got string 'TLS14'",),
        id="tls-version-unknown"),
    pytest.param(lambda c: tls(c, min_version="TLS13", max_version="TLS12"), (
        "tls_server_config.max_version: TLS12 is older than min_version TLS13",), id="min-above-max"),
    pytest.param(lambda c: tls(c, client_auth_type="Yes"), (
        "tls_server_config.client_auth_type: expected one of NoClientCert",), id="client-auth-unknown"),
    pytest.param(lambda c: tls(c, client_auth_type="RequireAndVerifyClientCert"), (
        "tls_server_config.client_ca_file: required with client_auth_type RequireAndVerifyClientCert",),
        id="verify-without-ca"),
    pytest.param(lambda c: tls(c, client_ca_file=str(c.client_ca)), (
        "tls_server_config.client_ca_file: given, but client_auth_type NoClientCert checks no client certificate",),
        id="ca-without-client-auth"),
    pytest.param(lambda c: tls(c, client_auth_type="RequireAnyClientCert"), (
        "tls_server_config.client_auth_type: RequireAnyClientCert", "is not supported by treewatch"),
        id="require-any-client-cert"),
    pytest.param(lambda c: tls(c, cipher_suites=["TLS_RSA_WITH_RC4_128_SHA"]), (
        "tls_server_config.cipher_suites.0: expected one of", "got string 'TLS_RSA_WITH_RC4_128_SHA'"),
        id="cipher-unknown"),
    pytest.param(lambda c: {"tls_server_config": {"key_file": str(c.server_key)}}, (
        "tls_server_config.cert_file: required field is missing",), id="certificate-missing"),
    pytest.param(lambda c: tls(c, cert_file="/nonexistent/server.pem"), (
        "tls_server_config: cannot load the TLS certificate and key", "cert_file /nonexistent/server.pem: not found"),
        id="certificate-file-missing"),
    pytest.param(lambda c: tls(c, client_auth_type="VerifyClientCertIfGiven", client_ca_file="/dev/zero"), (
        "tls_server_config: cannot load the CA certificates (/dev/zero)", "client_ca_file /dev/zero: larger than"),
        id="client-ca-file-endless"),
    pytest.param(lambda c: {"tls_server_config": {"cert": "-----BEGIN CERTIFICATE-----", "key_file": "k"}}, (
        "tls_server_config.cert: exporter-toolkit's, but not supported by treewatch",), id="inline-certificate"),
    pytest.param(lambda c: tls(c, curve_preferences=["CurveP256"]), (
        "tls_server_config.curve_preferences: exporter-toolkit's, but not supported",), id="curve-preferences"),
    pytest.param(lambda c: {"http_server_config": {"http2": True}}, (
        "http_server_config.http2: HTTP/2 is not supported by treewatch",), id="http2"),
    pytest.param(lambda c: {"http_server_config": {"headers": {"Server": "x"}}}, (
        "http_server_config.headers: expected one of Content-Security-Policy",), id="header-not-allowed"),
    pytest.param(lambda c: {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}}, (
        "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin, got 'allow'",),
        id="frame-options-value"),
    pytest.param(lambda c: {"basic_auth_users": {"ops": "secret-in-clear"}}, (
        "basic_auth_users.ops: expected a bcrypt hash",), id="not-a-bcrypt-hash"),
    pytest.param(lambda c: {"basic_auth_users": {"ops": "$2b$10$tooshort"}}, (
        "basic_auth_users.ops: not a valid bcrypt hash",), id="bcrypt-hash-damaged"),
    pytest.param(lambda c: {"basic_auth_users": ["ops"]}, ("basic_auth_users: expected object, got list",),
                 id="users-a-list"),
    pytest.param(lambda c: "- tls_server_config\n", ("the top level must be a mapping, got list",),
                 id="top-level-a-list"),
    pytest.param(lambda c: "tls_server_config: [\n", ("not valid YAML",), id="not-yaml"),
    pytest.param(lambda c: "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
                 ("refused at line 4",), id="billion-laughs"),
]


@pytest.mark.parametrize("content, expected", REFUSED)
def test_a_malformed_web_config_is_refused_naming_the_file_and_the_field(
        content: Callable[[Certs], object], expected: tuple[str, ...], certs: Certs, tmp_path: Path) -> None:
    path = web_config(tmp_path, content(certs))
    with pytest.raises(ConfigError) as refused:
        load_web_security(path)
    message = str(refused.value)
    assert path in message
    for part in expected:
        assert part in message
    assert "secret-in-clear" not in message and "tooshort" not in message  # a password put where its hash goes


def test_a_web_config_file_that_is_not_text_or_endless_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\x00\xff\xfe" * 100)
    with pytest.raises(ConfigError, match=rf"{binary}: cannot read the web configuration file .*: not UTF-8 text"):
        load_web_config(str(binary))
    with pytest.raises(ConfigError, match=r"/dev/zero: cannot read the web configuration file .*: larger than 1 MiB"):
        load_web_config("/dev/zero")


def test_an_empty_web_config_serves_plain_http_to_anyone(tmp_path: Path) -> None:
    security = load_web_security(web_config(tmp_path, ""))
    assert security == EndpointSecurity()


# -- through the command line ---------------------------------------------------------------------

def treewatch_yaml(tmp_path: Path, **exporter: object) -> str:
    # Kafka is never reached: these tests are about the endpoint, which serves whatever Kafka does.
    path = tmp_path / "treewatch.yaml"
    path.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "request_timeout_seconds": 1}, "services": {},
        "exporter": {"refresh_interval_seconds": 1, **exporter}}))
    return str(path)


def run_treewatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treewatch", *args], capture_output=True, text=True,
                          timeout=BOUND, cwd=ROOT)


def test_a_malformed_web_config_stops_the_command_with_the_file_and_the_field(certs: Certs, tmp_path: Path) -> None:
    path = web_config(tmp_path, {"tls_server_config": tls_server_config(certs, min_version="TLS1.3")})
    result = run_treewatch("exporter", "--config", treewatch_yaml(tmp_path, listen_address="127.0.0.1:0"),
                           "--web.config.file", path)
    assert result.returncode == 2, result.stderr
    assert f"{path}: tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13" in result.stderr


def test_web_config_file_and_exporter_web_together_are_refused(tmp_path: Path) -> None:
    config = treewatch_yaml(tmp_path, listen_address="127.0.0.1:0",
                            web={"basic_auth_users": {USER: bcrypt_hash(PASSWORD)}})
    path = web_config(tmp_path, {"basic_auth_users": {USER: bcrypt_hash(PASSWORD)}})
    result = run_treewatch("exporter", "--config", config, "--web.config.file", path)
    assert result.returncode == 2, result.stderr
    assert (f"--web.config.file {path} and {config}: exporter.web both configure the exporter's TLS and basic auth"
            in result.stderr)


@contextmanager
def exporter_process(tmp_path: Path, *args: str) -> Iterator[Callable[[], str]]:
    """``treewatch exporter ARGS`` running; yields what it logged so far, for failure messages."""
    log = tmp_path / "exporter.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "treewatch", "exporter", *args], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield log.read_text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(BOUND) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()


def scrape_when_up(port: int, path: str, logged: Callable[[], str]) -> tuple[int, str]:
    deadline = time.monotonic() + BOUND
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing served on port {port}:\n{logged()}"
            threading.Event().wait(0.1)
        finally:
            connection.close()


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_telemetry_path_serves_the_metrics_there_and_the_landing_page_links_to_it(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with exporter_process(tmp_path, "--config", treewatch_yaml(tmp_path, listen_address=f"127.0.0.1:{port}"),
                          "--web.telemetry-path", "/m") as logged:
        status, body = scrape_when_up(port, "/m", logged)
        deadline = time.monotonic() + BOUND
        while "treewatch_build_info" not in body:  # the first refresh adds the exporter's own series
            assert time.monotonic() < deadline, f"no treewatch_build_info at /m:\n{body}\n{logged()}"
            threading.Event().wait(0.1)
            status, body = scrape_when_up(port, "/m", logged)
        old_status, old_body = scrape_when_up(port, "/metrics", logged)
        _, landing = scrape_when_up(port, "/", logged)
    assert status == 200
    assert old_status == 404 and "try /m" in old_body
    assert "href='/m'" in landing and "href='/metrics'" not in landing


def test_listen_address_flag_overrides_the_configuration(tmp_path: Path) -> None:
    configured, flagged = free_ports(2)
    with exporter_process(tmp_path, "--config", treewatch_yaml(tmp_path, listen_address=f"127.0.0.1:{configured}"),
                          "--web.listen-address", f"127.0.0.1:{flagged}") as logged:
        status, _ = scrape_when_up(flagged, "/-/healthy", logged)
        assert refuses_connections(configured)
    assert status == 200


def test_bad_flag_values_are_refused_naming_the_flag(tmp_path: Path) -> None:
    config = treewatch_yaml(tmp_path, listen_address="127.0.0.1:0")
    address = run_treewatch("exporter", "--config", config, "--web.listen-address", "127.0.0.1:99999")
    assert address.returncode == 2
    assert "--web.listen-address: expected host:port" in address.stderr
    path = run_treewatch("exporter", "--config", config, "--web.telemetry-path", "/-/ready")
    assert path.returncode == 2
    assert "--web.telemetry-path: expected a path starting with / other than /, /-/healthy, /-/ready" in path.stderr


def test_the_flags_are_spelt_as_the_official_exporters_spell_them() -> None:
    result = run_treewatch("exporter", "--help")
    for flag in ("--web.config.file", "--web.listen-address", "--web.telemetry-path"):
        assert flag in result.stdout
