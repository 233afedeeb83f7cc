"""Loading the certificates and keys a configuration names, so a bad one is refused at start by
name instead of failing the first connection (or the first scrape).

OpenSSL asks for the pass phrase of an encrypted key on the process' terminal when nobody gives it
one: an exporter started from a shell would wait there forever, silently. Every key here is loaded
with a password callback instead, which answers with the configured password or refuses.
librdkafka loads the Kafka client's files itself and only says "PEM lib"; loading them here first,
with Python's ssl, is what lets the message name the field and the file.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from pipeline.config import MAX_PEM_BYTES, ConfigError, TlsSettings, read_text_file


class _NoPassword(Exception):
    """The key is encrypted and no password was configured."""


def load_cert_chain(context: ssl.SSLContext, section: str, cert: tuple[str, str], key: tuple[str, str | None],
                    password: tuple[str, str | None]) -> None:
    """Load a certificate chain and its key into ``context``; each argument is (field, value), the
    field's name relative to ``section`` ("exporter.web", "kafka.tls").

    Raises a ConfigError naming the section, the files and the field at fault, never prompting.
    """
    (cert_field, cert_file), (key_field, key_file), (password_field, key_password) = cert, key, password
    files = ", ".join(filter(None, [cert_file, key_file]))

    def refused(reason: str) -> ConfigError:
        return ConfigError(f"{section}: cannot load the TLS certificate and key ({files}): {reason}")

    for field_name, path in ((cert_field, cert_file), (key_field, key_file)):
        if path is not None:
            _check_pem(path, field_name, refused)
    asked = False

    def password_callback() -> str:
        nonlocal asked
        asked = True
        if key_password is None:
            raise _NoPassword
        return key_password

    try:
        context.load_cert_chain(cert_file, key_file, password=password_callback)
    except _NoPassword:
        raise refused(f"{key_field} is encrypted; give {password_field}") from None
    except OSError as error:  # ssl.SSLError is one
        if asked:
            raise refused(f"the password from {password_field} does not decrypt {key_field}") from None
        if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
            raise refused(f"{key_field} is not the key of {cert_field}") from None
        raise refused(_ssl_reason(error)) from None


def check_client_files(tls: TlsSettings | None) -> None:
    """Load the Kafka client's CA, certificate and key the way librdkafka will, so a bad file is
    named before any client starts."""
    if tls is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # librdkafka's ssl.ca.location also takes a directory, or "probe" for the system's usual places.
    if tls.ca_file is not None and tls.ca_file != "probe" and not Path(tls.ca_file).is_dir():
        load_ca_file(context, "kafka.tls", ("ca_file", tls.ca_file))
    if tls.cert_file is not None:
        load_cert_chain(context, "kafka.tls", ("cert_file", tls.cert_file), ("key_file", tls.key_file),
                        ("key_password_file", tls.key_password))


def load_ca_file(context: ssl.SSLContext, section: str, ca: tuple[str, str]) -> None:
    """Load the CA certificates of the file ``ca`` (field, path) names into ``context``; a ConfigError
    names the section, the file and the field when it is unreadable, too large or not PEM."""
    field_name, path = ca

    def refused(reason: str) -> ConfigError:
        return ConfigError(f"{section}: cannot load the CA certificates ({path}): {reason}")

    _check_pem(path, field_name, refused)
    try:
        context.load_verify_locations(cafile=path)
    except OSError as error:
        raise refused(_ssl_reason(error)) from None


def _check_pem(path: str, field_name: str, refused: Callable[[str], ConfigError]) -> None:
    """Readable, bounded, UTF-8 and PEM: OpenSSL would read /dev/zero forever and says only
    "PEM lib" about a binary (DER) file."""
    try:
        text = read_text_file(path, MAX_PEM_BYTES)
    except ConfigError as error:
        raise refused(f"{field_name} {path}: {error}") from None
    if "-----BEGIN " not in text:
        raise refused(f"{field_name} {path}: not a PEM file (no -----BEGIN line)")


def _ssl_reason(error: OSError) -> str:
    return getattr(error, "reason", None) or error.strerror or str(error)
