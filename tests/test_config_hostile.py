"""Configuration that cannot hurt: every hostile or absurd configuration is refused by the real CLI,
`treewatch check-config` and `treewatch exporter` alike, with exit code 2 and a line naming the file
and the field, never a traceback, a hang or a prompt; and at once, whatever the file holds (a YAML
bomb, megabytes, binary bytes, /dev/zero as a secret, an encrypted key with no password).
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.app import build_exporter
from pipeline.config import MAX_YAML_ALIASES, MAX_YAML_DEPTH, MAX_YAML_VALUES, load_config

# Not a speed requirement: a refusal takes well under a second; this only turns a hang (a YAML bomb
# being expanded, a pass phrase prompt) into a failure instead of a stuck test run.
HANG = 20
KEY_PASSWORD = "key-pass-6a1c"
COMMANDS = ("check-config", "exporter")

# Nothing listens on port 9 (discard): a command that got as far as Kafka would only time out.
BASE: dict[str, Any] = {"kafka": {"bootstrap_servers": "127.0.0.1:9"}, "services": {},
                        "exporter": {"listen_address": "127.0.0.1:0"}}


@dataclass(frozen=True)
class Files:
    """Files a configuration may name: TLS material made here, and hostile ones."""

    cert: Path  # self-signed, for 127.0.0.1
    key: Path  # its key, unencrypted
    encrypted_key: Path  # the same key, encrypted with KEY_PASSWORD
    other_key: Path  # a key that is not the certificate's
    der_cert: Path  # the certificate in DER, binary: not UTF-8, not PEM
    password: Path  # KEY_PASSWORD
    wrong_password: Path
    latin1: Path  # "pässword" in Latin-1: not UTF-8


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("files")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    made = Files(*(folder / name for name in ("cert.pem", "key.pem", "encrypted-key.pem", "other-key.pem",
                                              "cert.der", "password", "wrong-password", "latin1")))
    made.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    made.der_cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))

    def pem_key(private_key: ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption) -> bytes:
        return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    made.key.write_bytes(pem_key(key, serialization.NoEncryption()))
    made.encrypted_key.write_bytes(pem_key(key, serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
    made.other_key.write_bytes(pem_key(ec.generate_private_key(ec.SECP256R1()), serialization.NoEncryption()))
    made.password.write_text(KEY_PASSWORD + "\n")
    made.wrong_password.write_text("not-the-key-password\n")
    made.latin1.write_bytes("pässword\n".encode("latin-1"))
    return made


def config_with(**sections: dict[str, Any]) -> str:
    """BASE with each section's fields replaced by those given, as YAML."""
    merged = copy.deepcopy(BASE)
    for section, fields in sections.items():
        merged.setdefault(section, {}).update(fields)
    return yaml.safe_dump(merged)


def web_tls(files: Files, **fields: Any) -> str:
    return config_with(exporter={"listen_address": "127.0.0.1:0", "web": fields})


def billion_laughs() -> str:
    """Ten levels of ten aliases each: 355 bytes that expand to 10^10 strings."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 10) + "]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    name: str
    text: Callable[[Files], str | bytes]
    expected: tuple[str, ...]  # each on the line that names the file


CASES = [
    # What a file may make of itself: refused while composing, never built.
    Case("billion-laughs", lambda f: billion_laughs(), (f"more than {MAX_YAML_VALUES} values", "line 4")),
    Case("too-many-aliases",
         lambda f: "x: &x 1\nmany: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n",
         (f"more than {MAX_YAML_ALIASES} aliases",)),
    Case("alias-inside-itself", lambda f: "stages: &loop\n  again: *loop\n", ("alias *loop is inside the collection",)),
    Case("nested-deeper-than-any-configuration", lambda f: "x: " + "[" * 100_000 + "]" * 100_000 + "\n",
         (f"nested more than {MAX_YAML_DEPTH} levels",)),
    Case("larger-than-a-mebibyte", lambda f: "# " + "x" * (2 << 20) + "\n", ("larger than 1 MiB",)),
    Case("not-utf8", lambda f: "env: caf\xe9\n".encode("latin-1"), ("not UTF-8 text (byte 0xe9 at offset 8)",)),
    Case("nul-byte", lambda f: "env: a\x00b\n", ("character #x0000",)),
    Case("integer-of-5000-digits", lambda f: "exporter:\n  max_series: " + "9" * 5000 + "\n",
         ("line 2", "integer of 5000 characters is too large")),
    Case("binary-value", lambda f: "env: !!binary aGVsbG8=\n", ("is not a configuration value",)),
    # Numbers YAML has and no setting means anything with.
    Case("nan-grace", lambda f: config_with(exporter={"stale_grace_seconds": float("nan")}),
         ("exporter.stale_grace_seconds: expected a finite number, got number nan",)),
    Case("inf-interval", lambda f: config_with(exporter={"refresh_interval_seconds": float("inf")}),
         ("exporter.refresh_interval_seconds: expected a finite number, got number inf",)),
    Case("nan-client-property", lambda f: config_with(kafka={"client_properties": {"linger.ms": float("nan")}}),
         ("kafka.client_properties.linger.ms: expected a finite number",)),
    Case("negative-interval", lambda f: config_with(exporter={"refresh_interval_seconds": -1}),
         ("exporter.refresh_interval_seconds: expected at least 0.1, got integer -1",)),
    Case("zero-health-timeout", lambda f: config_with(exporter={"health_timeout_seconds": 0}),
         ("exporter.health_timeout_seconds: expected more than 0, got integer 0",)),
    Case("zero-kafka-timeout", lambda f: config_with(kafka={"request_timeout_seconds": 0}),
         ("kafka.request_timeout_seconds: expected more than 0",)),
    Case("interval-of-1e300-seconds", lambda f: config_with(exporter={"refresh_interval_seconds": 1e300}),
         ("exporter.refresh_interval_seconds: expected at most 3600",)),
    Case("grace-of-30-years", lambda f: config_with(exporter={"stale_grace_seconds": 10 ** 9}),
         ("exporter.stale_grace_seconds: expected at most 86400",)),
    Case("a-trillion-series", lambda f: config_with(exporter={"max_series": 10 ** 12}),
         ("exporter.max_series: expected at most 10000000",)),
    Case("terabyte-health-body", lambda f: config_with(exporter={"health_max_body_bytes": 10 ** 12}),
         ("exporter.health_max_body_bytes: expected at most 16777216",)),
    Case("bcrypt-cost-31", lambda f: config_with(exporter={"web": {"basic_auth_users": {
        "ops": "$2b$31$" + "a" * 53}}}), ("exporter.web.basic_auth_users.ops: expected a bcrypt hash",)),
    Case("port-99999", lambda f: config_with(exporter={"listen_address": "0.0.0.0:99999"}),
         ("exporter.listen_address: expected host:port", "(port 0 to 65535)")),
    Case("not-an-ipv6-address", lambda f: config_with(exporter={"listen_address": "[1:2:3]:9847"}),
         ("exporter.listen_address: '1:2:3' is not an IPv6 address",)),
    Case("out-of-range-librdkafka-property",
         lambda f: config_with(kafka={"client_properties": {"socket.timeout.ms": 10 ** 11}}),
         ("kafka: librdkafka refuses the client settings", "socket.timeout.ms")),
    # Files the configuration names.
    Case("secret-not-utf8", lambda f: config_with(kafka={"sasl": {
        "mechanism": "PLAIN", "username": "u", "password_file": str(f.latin1)}}),
         ("kafka.sasl.password_file: cannot read secret file", "not UTF-8 text (byte 0xe4 at offset 1)")),
    Case("secret-is-dev-zero", lambda f: config_with(kafka={"tls": {"key_password_file": "/dev/zero"}}),
         ("kafka.tls.key_password_file: cannot read secret file /dev/zero: larger than 64 KiB",)),
    Case("web-key-password-not-utf8", lambda f: web_tls(f, tls_cert_file=str(f.cert), tls_key_file=str(f.encrypted_key),
                                                        tls_key_password_file=str(f.latin1)),
         ("exporter.web.tls_key_password_file: cannot read secret file", "not UTF-8")),
    Case("web-key-without-certificate", lambda f: web_tls(f, tls_key_file=str(f.key)),
         ("exporter.web.tls_key_file: given without exporter.web.tls_cert_file",)),
    Case("web-certificate-without-key", lambda f: web_tls(f, tls_cert_file=str(f.cert)),
         ("exporter.web.tls_cert_file: given without exporter.web.tls_key_file",)),
    Case("web-certificate-in-der", lambda f: web_tls(f, tls_cert_file=str(f.der_cert), tls_key_file=str(f.key)),
         ("exporter.web: cannot load the TLS certificate and key", "tls_cert_file", "not UTF-8 text")),
    Case("web-key-is-dev-zero", lambda f: web_tls(f, tls_cert_file=str(f.cert), tls_key_file="/dev/zero"),
         ("tls_key_file /dev/zero: larger than 8 MiB",)),
    Case("web-key-encrypted-without-password",
         lambda f: web_tls(f, tls_cert_file=str(f.cert), tls_key_file=str(f.encrypted_key)),
         ("tls_key_file is encrypted; give tls_key_password_file",)),
    Case("web-key-with-the-wrong-password",
         lambda f: web_tls(f, tls_cert_file=str(f.cert), tls_key_file=str(f.encrypted_key),
                           tls_key_password_file=str(f.wrong_password)),
         ("the password from tls_key_password_file does not decrypt tls_key_file",)),
    Case("web-key-of-another-certificate",
         lambda f: web_tls(f, tls_cert_file=str(f.cert), tls_key_file=str(f.other_key)),
         ("tls_key_file is not the key of tls_cert_file",)),
    Case("kafka-key-encrypted-without-password", lambda f: config_with(kafka={
        "bootstrap_servers": "127.0.0.1:9", "tls": {"cert_file": str(f.cert), "key_file": str(f.encrypted_key)}}),
         ("kafka.tls: cannot load the TLS certificate and key", "key_file is encrypted; give key_password_file")),
    Case("kafka-key-without-certificate", lambda f: config_with(kafka={"tls": {"key_file": str(f.key)}}),
         ("kafka.tls.key_file: given without kafka.tls.cert_file",)),
    Case("kafka-ca-not-utf8", lambda f: config_with(kafka={"tls": {"ca_file": str(f.der_cert)}}),
         ("kafka.tls: cannot load the CA certificates", "ca_file", "not UTF-8 text")),
]


def treewatch(command: str, config: Path, **popen: Any) -> subprocess.CompletedProcess[str]:
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "treewatch", command, "--config", str(config)],
                          capture_output=True, text=True, timeout=HANG, **popen)


def assert_refused(result: subprocess.CompletedProcess[str], config: Path, expected: tuple[str, ...]) -> None:
    """Exit 2, and each line of stderr is one problem naming the file (under the headline schema errors
    share), one of them saying all of ``expected``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line != "treewatch: invalid configuration"]
    assert lines and all(str(config) in line for line in lines), result.stderr
    assert any(all(part in line for part in expected) for line in lines), result.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_configuration_is_refused_in_one_line(case: Case, command: str, files: Files,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "treewatch.yaml"
    text = case.text(files)
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_refused(treewatch(command, config), config, case.expected)


def test_the_exporter_never_waits_on_a_pass_phrase_prompt(files: Files, tmp_path: Path) -> None:
    """OpenSSL asks for an encrypted key's pass phrase on the controlling terminal, not on stdin: the
    exporter runs here in a session of its own whose terminal is a pseudo-terminal nobody types into."""
    config = tmp_path / "treewatch.yaml"
    config.write_text(web_tls(files, tls_cert_file=str(files.cert), tls_key_file=str(files.encrypted_key)))
    terminal, terminal_side = os.openpty()
    try:
        command = ["setsid", "--ctty", sys.executable, "-m", "treewatch", "exporter", "--config", str(config)]
        try:
            result = subprocess.run(command, stdin=terminal_side, capture_output=True, text=True, timeout=HANG)
        except subprocess.TimeoutExpired:
            os.set_blocking(terminal, False)
            pytest.fail(f"the exporter waited on the terminal: {os.read(terminal, 200)!r}")
    finally:
        os.close(terminal)
        os.close(terminal_side)
    assert_refused(result, config, ("tls_key_file is encrypted; give tls_key_password_file",))


def test_an_encrypted_key_with_its_password_file_serves_https(files: Files, tmp_path: Path) -> None:
    config = tmp_path / "treewatch.yaml"
    config.write_text(web_tls(files, tls_cert_file=str(files.cert), tls_key_file=str(files.encrypted_key),
                              tls_key_password_file=str(files.password)))
    checked = treewatch("check-config", config)
    assert checked.returncode == 0, checked.stderr
    exporter = build_exporter(load_config(config, environ={}), port=0).start()
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(files.cert)), timeout=10) as client:
            healthy = client.get(exporter.url + "/-/healthy")
    finally:
        exporter.stop()
    assert exporter.url.startswith("https://")
    assert healthy.status_code == 200


def test_anchors_and_merge_keys_within_the_bounds_still_work(tmp_path: Path) -> None:
    config = tmp_path / "treewatch.yaml"
    config.write_text("services:\n"
                      "  bridge: &probe {url: 'http://127.0.0.1:8054/health'}\n"
                      "  same: *probe\n"
                      "  merged: {<<: *probe}\n")
    loaded = load_config(config, environ={})
    assert {s.name: s.url for s in loaded.services} == dict.fromkeys(("bridge", "same", "merged"),
                                                                     "http://127.0.0.1:8054/health")
