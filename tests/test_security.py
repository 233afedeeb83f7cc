"""Secure connections, for real: Kafka over SASL/SCRAM and over TLS, the exporter over HTTPS with
basic auth. Certificates are made here with ``cryptography``; one broker with both secure
listeners serves the whole module. No secret may show up in a log line, an error, a metric or
the landing page.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devkafka import KafkaCluster, Listener, free_port
from exporter.app import build_exporter
from exporter.kafka_source import KafkaSource
from exporter.metrics import KAFKA_BROKERS, TREEWATCH_COLLECTOR_SUCCESS, Part
from exporter.refresh import Refresher
from exporter.settings import WebSettings
from exporter.web import authorizer, tls_context
from pipeline.config import ConfigError, load_config, parse_config

KAFKA_USER, KAFKA_PASSWORD = "alice", "alice-secret-7f3a"
WRONG_PASSWORD = "not-alices-password-91c2"
SCRAPE_USER, SCRAPE_PASSWORD = "prometheus", "scrape-pass-5d8e"
SERVICE_PASSWORD = "svc-pass-0b1d"  # in a health URL's user:password part
# One more user per other mechanism the configuration offers.
OTHER_USERS = {"PLAIN": ("bob", "bob-secret-3c9e"), "SCRAM-SHA-512": ("carol", "carol-secret-e41f")}
SECRETS = (KAFKA_PASSWORD, WRONG_PASSWORD, SCRAPE_PASSWORD, SERVICE_PASSWORD,
           *(password for _, password in OTHER_USERS.values()))
HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
PLAIN_USER, PLAIN_PASSWORD = OTHER_USERS["PLAIN"]
PLAIN_LOGIN = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
               f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";')
MECHANISMS = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate clients trust
    server_cert: Path  # the server certificate (SAN 127.0.0.1 and localhost) followed by the CA's
    server_key: Path  # its key, unencrypted PKCS#8
    keystore: Path  # key and chain in one PEM file, as Kafka's PEM key store reads it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR).not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR).not_valid_after(now + DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "keystore.pem")
    paths.ca.write_bytes(ca_pem)
    paths.server_cert.write_bytes(chain_pem)
    paths.server_key.write_bytes(key_pem)
    paths.keystore.write_bytes(key_pem + chain_pem)
    return paths


@pytest.fixture(scope="module")
def secure_kafka(certs: Certs) -> Iterator[KafkaCluster]:
    listeners = [
        Listener("SASL", "SASL_PLAINTEXT", {"sasl.enabled.mechanisms": MECHANISMS,
                                            "plain.sasl.jaas.config": PLAIN_LOGIN,
                                            "scram-sha-256.sasl.jaas.config": SCRAM_LOGIN,
                                            "scram-sha-512.sasl.jaas.config": SCRAM_LOGIN}),
        Listener("SSL", "SSL", {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(certs.keystore),
                                "ssl.truststore.type": "PEM", "ssl.truststore.location": str(certs.ca)}),
    ]
    scram512_user, scram512_password = OTHER_USERS["SCRAM-SHA-512"]
    with KafkaCluster(
        nodes=1, listeners=listeners,
        broker_properties={"sasl.enabled.mechanisms": MECHANISMS},
        format_args=["--add-scram", f"SCRAM-SHA-256=[name={KAFKA_USER},password={KAFKA_PASSWORD}]",
                     "--add-scram", f"SCRAM-SHA-512=[name={scram512_user},password={scram512_password}]"],
    ) as cluster:
        yield cluster


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}"


def _https_client(certs: Certs) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(certs.ca)), timeout=10)


def test_exporter_over_scram_serves_https_with_basic_auth(
        secure_kafka: KafkaCluster, certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "kafka-password"
    password_file.write_text(KAFKA_PASSWORD + "\n")
    config_file = tmp_path / "treewatch.yaml"
    config_file.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": secure_kafka.listener_bootstrap("SASL"), "request_timeout_seconds": 5,
                  "sasl": {"mechanism": "SCRAM-SHA-256", "username": KAFKA_USER,
                           "password_file": str(password_file)}},
        "services": {"bridge": {"url": f"http://ops:{SERVICE_PASSWORD}@127.0.0.1:{free_port()}/health"}},
        "exporter": {"listen_address": "127.0.0.1:0", "refresh_interval_seconds": 1,
                     "web": {"tls_cert_file": str(certs.server_cert), "tls_key_file": str(certs.server_key),
                             "basic_auth_users": {SCRAPE_USER: bcrypt.hashpw(SCRAPE_PASSWORD.encode(),
                                                                             bcrypt.gensalt(4)).decode()}}},
    }))
    config = load_config(config_file)
    assert config.kafka.security_protocol == "SASL_PLAINTEXT"
    _assert_no_secret(repr(config), "the configuration's repr")

    exporter = build_exporter(config, port=0).start()
    # A client that connects and never starts its TLS handshake must not hold up anyone else (the
    # handshake happens in the connection's own thread, not in the accept loop), nor the shutdown.
    silent = socket.create_connection(("127.0.0.1", exporter.server.port))
    try:
        assert exporter.url.startswith("https://")
        assert exporter.refresher.wait_ready(60)
        with _https_client(certs) as client:
            metrics = client.get(exporter.url + "/metrics", auth=(SCRAPE_USER, SCRAPE_PASSWORD))
            landing = client.get(exporter.url + "/", auth=(SCRAPE_USER, SCRAPE_PASSWORD))
            wrong = client.get(exporter.url + "/metrics", auth=(SCRAPE_USER, "guess"))
            unknown_user = client.get(exporter.url + "/metrics", auth=("mallory", SCRAPE_PASSWORD))
            missing = client.get(exporter.url + "/metrics")
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.TransportError):
            plain.get(exporter.url.replace("https://", "http://") + "/metrics")
        with httpx.Client(timeout=10) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(exporter.url + "/metrics")  # the test CA is not in the default store
    finally:
        exporter.stop()
        silent.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("http-")]

    assert metrics.status_code == 200
    assert 'treewatch_collector_success{collector="kafka_cluster"} 1.0' in metrics.text
    assert "kafka_brokers 1.0" in metrics.text
    assert landing.status_code == 200 and "SASL_PLAINTEXT" in landing.text
    assert "http://127.0.0.1:" in landing.text  # the service is listed, without its credentials
    assert 'tree_service_probe_failure{reason="connection_refused",service="bridge"} 1.0' in metrics.text
    for refused in (wrong, unknown_user, missing):
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert "kafka_brokers" not in refused.text
    _assert_no_secret(metrics.text, "/metrics")
    _assert_no_secret(landing.text, "the landing page")
    _assert_no_secret(caplog.text, "the log")


def test_wrong_kafka_password_fails_clearly(secure_kafka: KafkaCluster,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # The password from the environment this time, the other way secrets arrive.
    config = parse_config({"kafka": {"bootstrap_servers": secure_kafka.listener_bootstrap("SASL"),
                                     "request_timeout_seconds": 5,
                                     "sasl": {"mechanism": "SCRAM-SHA-256", "username": KAFKA_USER}},
                           "services": {}}, source="test",
                          environ={"TREEWATCH_KAFKA_SASL_PASSWORD": WRONG_PASSWORD})
    assert config.kafka.sasl is not None and config.kafka.sasl.password == WRONG_PASSWORD
    source = KafkaSource(config)
    refresher = Refresher([source], interval_seconds=1, stale_grace_seconds=0, max_series=1000,
                          build_info={"version": "test", "python_version": "3", "librdkafka_version": "x"})
    try:
        snapshot = refresher.run_once()
    finally:
        refresher.stop()
    assert snapshot.values(TREEWATCH_COLLECTOR_SUCCESS)[(Part.KAFKA_CLUSTER.value,)] == 0
    assert not snapshot.values(KAFKA_BROKERS)
    error = refresher.collector_status()[Part.KAFKA_CLUSTER.value]["error"]
    assert error is not None and "authentication" in error.lower(), error
    _assert_no_secret(error, "the collector error")
    # librdkafka retried the login several times; the log says so once, not once per retry.
    auth_lines = [r for r in caplog.records if r.name == "treewatch.kafka" and r.levelno >= logging.WARNING
                  and "authentication" in r.getMessage().lower()]
    assert len(auth_lines) == 1, [r.getMessage() for r in auth_lines]
    _assert_no_secret(caplog.text, "the log")
    _assert_no_secret("".join(str(s) for samples in snapshot.series.values() for s in samples), "a metric")


@pytest.mark.parametrize("mechanism", sorted(OTHER_USERS))
def test_other_sasl_mechanisms(secure_kafka: KafkaCluster, mechanism: str, tmp_path: Path) -> None:
    username, password = OTHER_USERS[mechanism]
    password_file = tmp_path / "password"
    password_file.write_text(password)
    config = parse_config({"kafka": {"bootstrap_servers": secure_kafka.listener_bootstrap("SASL"),
                                     "request_timeout_seconds": 5,
                                     "sasl": {"mechanism": mechanism, "username": username,
                                              "password_file": str(password_file)}},
                           "services": {}}, source="test", environ={})
    assert live_brokers(config) == 1


def live_brokers(config) -> float:
    """kafka_brokers from one gather of a KafkaSource over ``config``; fails with the collector's error."""
    source = KafkaSource(config)
    try:
        cluster = source.gather()[Part.KAFKA_CLUSTER]
    finally:
        source.close()
    assert not isinstance(cluster, BaseException), cluster
    return {s.metric: s.value for s in cluster}[KAFKA_BROKERS]


def test_kafka_over_tls(secure_kafka: KafkaCluster, certs: Certs) -> None:
    config = parse_config({"kafka": {"bootstrap_servers": secure_kafka.listener_bootstrap("SSL"),
                                     "request_timeout_seconds": 5, "tls": {"ca_file": str(certs.ca)}},
                           "services": {}}, source="test", environ={})
    assert config.kafka.security_protocol == "SSL"
    assert live_brokers(config) == 1


def test_kafka_tls_with_an_untrusted_ca_fails(secure_kafka: KafkaCluster, tmp_path: Path) -> None:
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    other_ca = (
        x509.CertificateBuilder().subject_name(_name("someone else")).issuer_name(_name("someone else"))
        .public_key(other_ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR).not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(other_ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "other-ca.pem"
    ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    config = parse_config({"kafka": {"bootstrap_servers": secure_kafka.listener_bootstrap("SSL"),
                                     "request_timeout_seconds": 3, "tls": {"ca_file": str(ca_file)}},
                           "services": {}}, source="test", environ={})
    source = KafkaSource(config)
    try:
        with pytest.raises(Exception) as failure:
            source.gather()
    finally:
        source.close()
    message = str(failure.value)
    assert "certificate verify failed" in message, message


def test_web_config_errors_name_the_problem_not_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"basic_auth_users\.ops: not a valid bcrypt hash") as bad_hash:
        authorizer(WebSettings(basic_auth_users={"ops": "$2b$10$tooshort"}))
    assert "tooshort" not in str(bad_hash.value)
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        tls_context(WebSettings(tls_cert_file=str(tmp_path / "missing.pem"),
                                tls_key_file=str(tmp_path / "missing.key")))
