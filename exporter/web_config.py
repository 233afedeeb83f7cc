"""The exporter-toolkit web config file (``treewatch exporter --web.config.file FILE``): the YAML that
node_exporter and every official Prometheus exporter read for TLS, client certificates, basic auth
and response headers, so one file serves them all.

Its fields are declared below and checked like the configuration file (pipeline.config): a
malformed file is refused at start with the file, the field and what was expected; a field
exporter-toolkit has but treewatch does not honour is refused by name with the reason, never
silently ignored. Unlike exporter-toolkit, the file is read once, at start: a change needs a restart.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import bcrypt
from pydantic import Field

from exporter.settings import BcryptHash
from exporter.web import EndpointSecurity, PasswordCheck, basic_auth, server_context
from pipeline.config import MAX_CONFIG_BYTES, ConfigError, build_document, parse_bounded_yaml, read_text_file
from pipeline.tls import load_ca_file, load_cert_chain

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

# Go's policies (crypto/tls ClientAuthType), as exporter-toolkit names them.
ClientAuthType = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                         "RequireAndVerifyClientCert"]
_VERIFY_MODES = {
    # A requested certificate is never checked nor used by anything here: not asking for it is the same.
    "NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

# The cipher suites Go's crypto/tls offers (tls.CipherSuites()), by Go's name -> OpenSSL's. Go ignores
# the list for TLS 1.3, whose suites are not configurable there: they are accepted and ignored here too.
_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CipherSuite = Literal[tuple(_CIPHER_SUITES)]  # type: ignore[valid-type]

# The only headers exporter-toolkit lets a file set, and the values it allows where it restricts them.
HeaderName = Literal["Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "X-XSS-Protection",
                     "Strict-Transport-Security"]
_HEADER_VALUES = {"X-Frame-Options": ("deny", "sameorigin"), "X-Content-Type-Options": ("nosniff",)}

# Fields of exporter-toolkit's format that treewatch does not honour -> what to do instead.
_UNSUPPORTED = {
    ("tls_server_config", "cert"): "give the certificate in a file, cert_file",
    ("tls_server_config", "key"): "give the key in a file, key_file",
    ("tls_server_config", "client_ca"): "give the CA certificates in a file, client_ca_file",
    ("tls_server_config", "client_allowed_sans"): "a client certificate is checked against client_ca_file only",
    ("tls_server_config", "curve_preferences"): "OpenSSL's default curves are used",
    ("rate_limit",): "put a limit in front of the exporter if it needs one (exporter.max_connections bounds "
                     "the connections served at once)",
}
# pipeline.tls names this field when the key is encrypted: the format has no password for it.
_NO_KEY_PASSWORD = "an unencrypted key_file (the web configuration has no password field)"


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: Annotated[str, Field(min_length=1, description=(
        "PEM certificate the endpoint presents, followed by its chain."))]
    key_file: Annotated[str, Field(min_length=1, description="PEM key of cert_file, not encrypted.")]
    client_auth_type: Annotated[ClientAuthType, Field(description=(
        "Client certificates: RequireAndVerifyClientCert (checked against client_ca_file) is the one that "
        "authenticates; RequireAnyClientCert is not supported (Python's ssl checks every certificate it "
        "asks for)."))] = "NoClientCert"
    client_ca_file: Annotated[str | None, Field(min_length=1, description=(
        "PEM CA certificates client certificates are checked against."))] = None
    min_version: Annotated[TlsVersion, Field(description="Oldest TLS version accepted.")] = "TLS12"
    max_version: Annotated[TlsVersion, Field(description="Newest TLS version accepted.")] = "TLS13"
    cipher_suites: Annotated[tuple[CipherSuite, ...], Field(description=(
        "Cipher suites for TLS 1.2 and older, by Go's names (default: OpenSSL's)."))] = ()
    prefer_server_cipher_suites: Annotated[bool, Field(description=(
        "Choose the cipher by the order of cipher_suites rather than the client's."))] = True

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> TlsServerConfig:
        where = f"{source}: {path}"
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ConfigError(f"{where}.max_version: {self.max_version} is older than min_version {self.min_version}")
        if self.client_auth_type == "RequireAnyClientCert":
            raise ConfigError(f"{where}.client_auth_type: RequireAnyClientCert (a certificate required, never "
                              f"checked) is not supported by treewatch: Python's ssl checks every client "
                              f"certificate it asks for; use RequireAndVerifyClientCert with client_ca_file")
        verifies = _VERIFY_MODES[self.client_auth_type] != ssl.CERT_NONE
        if verifies and self.client_ca_file is None:
            raise ConfigError(f"{where}.client_ca_file: required with client_auth_type {self.client_auth_type}: "
                              f"the CA certificates client certificates are checked against")
        if not verifies and self.client_ca_file is not None:
            raise ConfigError(f"{where}.client_ca_file: given, but client_auth_type {self.client_auth_type} "
                              f"checks no client certificate; set client_auth_type: RequireAndVerifyClientCert")
        return replace(self, cipher_suites=tuple(self.cipher_suites))


@dataclass(frozen=True)
class HttpServerConfig:
    http2: Annotated[bool, Field(description=(
        "HTTP/2; the exporter serves HTTP/1.1 only, so only false is accepted."))] = False
    headers: Annotated[Mapping[HeaderName, str], Field(description=(
        "Headers added to every answer; an empty value adds none."))] = field(default_factory=dict)

    def settle(self, given: Mapping[str, Any], path: str, source: str) -> HttpServerConfig:
        if self.http2:
            raise ConfigError(f"{source}: {path}.http2: HTTP/2 is not supported by treewatch (it serves "
                              f"HTTP/1.1, which Prometheus scrapes); remove the field or set it to false")
        for name, allowed in _HEADER_VALUES.items():
            value = self.headers.get(name)
            if value and value not in allowed:
                raise ConfigError(f"{source}: {path}.headers.{name}: expected one of {', '.join(allowed)}, "
                                  f"got {value!r}")
        return self


@dataclass(frozen=True)
class WebConfig:
    """exporter-toolkit's web configuration: every field optional, an empty file serves plain HTTP
    to anyone."""

    tls_server_config: Annotated[TlsServerConfig | None, Field(description="HTTPS instead of HTTP.")] = None
    http_server_config: Annotated[HttpServerConfig, Field(description="HTTP options.")] = HttpServerConfig()
    basic_auth_users: Annotated[Mapping[str, BcryptHash], Field(description=(
        "user name -> bcrypt hash of the password; none: no basic auth"))] = field(default_factory=dict, repr=False)


def load_web_config(path: str) -> WebConfig:
    """The web configuration file at ``path``, read within the configuration file's bounds and checked;
    a ConfigError names the file and the field at fault."""
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES)
    except ConfigError as error:
        raise ConfigError(f"{path}: cannot read the web configuration file (--web.config.file): {error}") from None
    data = parse_bounded_yaml(text, path)
    _refuse_unsupported(data, path)
    return build_document(WebConfig, data, path, "web configuration")


def load_web_security(path: str, check: PasswordCheck = bcrypt.checkpw) -> EndpointSecurity:
    """The endpoint's security from the web configuration file at ``path``, every file it names loaded
    now; ``check`` verifies a password against its bcrypt hash."""
    web = load_web_config(path)
    return EndpointSecurity(
        authorize=basic_auth(web.basic_auth_users, f"{path}: basic_auth_users", check),
        tls_context=None if web.tls_server_config is None else _tls_context(web.tls_server_config, path),
        headers={name: value for name, value in web.http_server_config.headers.items() if value},
    )


def _refuse_unsupported(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        return  # the schema's message says what the top level must be
    for (*parents, name), instead in _UNSUPPORTED.items():
        section = data
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section:
            raise ConfigError(f"{source}: {'.'.join([*parents, name])}: exporter-toolkit's, but not supported by "
                              f"treewatch: {instead}")


def _tls_context(tls: TlsServerConfig, source: str) -> ssl.SSLContext:
    section = f"{source}: tls_server_config"
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0 and 1.1; the file asked for them by name (OpenSSL's security
        # level may still refuse them).
        warnings.simplefilter("ignore", DeprecationWarning)
        context = server_context(_TLS_VERSIONS[tls.min_version])
    context.maximum_version = _TLS_VERSIONS[tls.max_version]
    load_cert_chain(context, section, ("cert_file", tls.cert_file), ("key_file", tls.key_file),
                    (_NO_KEY_PASSWORD, None))
    if tls.client_ca_file is not None:
        load_ca_file(context, section, ("client_ca_file", tls.client_ca_file))
    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    suites = [name for name in (_CIPHER_SUITES[suite] for suite in tls.cipher_suites) if name]
    if suites:
        try:
            context.set_ciphers(":".join(suites))
        except ssl.SSLError:
            raise ConfigError(f"{section}.cipher_suites: {ssl.OPENSSL_VERSION} offers none of them") from None
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
