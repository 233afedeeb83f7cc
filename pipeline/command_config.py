"""``--command-config FILE``: the Java client properties file that kafka-consumer-groups.sh and the
other Kafka scripts take for security settings, read into the configuration's Kafka settings.

Only what librdkafka can do is accepted: ``security.protocol``, ``sasl.mechanism`` (librdkafka's
``sasl.mechanisms`` too), the SASL user and password as librdkafka names them
(``sasl.username``/``sasl.password``) or inside ``sasl.jaas.config`` (PlainLoginModule,
ScramLoginModule), the PEM files (``ssl.ca.location``, ``ssl.certificate.location``,
``ssl.key.location``, ``ssl.key.password``; a Java truststore of ``ssl.truststore.type=PEM`` is a
CA file too) and ``ssl.endpoint.identification.algorithm``. Anything else (a JKS or PKCS12
keystore, Kerberos, OAuth, a key this tool does not know) is refused with the key named: a
setting silently dropped would connect without the security the file asks for.

The file replaces the configuration file's security settings as a whole (protocol, SASL, TLS), as
kafka-consumer-groups.sh takes them from --command-config alone. Without ``security.protocol`` the
protocol follows from what the file gives, as in the configuration file (SASL and/or TLS).

Errors name the file, the line and the key, never a value: the file holds passwords.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pipeline.config import MAX_SECRET_BYTES, ConfigError, KafkaSettings, SaslSettings, TlsSettings, read_text_file

# A client properties file is a few lines; anything larger is not one.
MAX_COMMAND_CONFIG_BYTES = MAX_SECRET_BYTES
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The JAAS login module each SASL mechanism takes its user and password from.
LOGIN_MODULES = {
    "org.apache.kafka.common.security.plain.PlainLoginModule": ("PLAIN",),
    "org.apache.kafka.common.security.scram.ScramLoginModule": ("SCRAM-SHA-256", "SCRAM-SHA-512"),
}
SUPPORTED_KEYS = (
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password", "sasl.jaas.config",
    "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "ssl.truststore.location", "ssl.truststore.type", "ssl.endpoint.identification.algorithm",
)
# Java-only settings with the librdkafka way to say the same, for the refusal's message.
_JAVA_ONLY = {
    "ssl.truststore.password": "a PEM truststore has no password: give the CA certificates as ssl.ca.location",
    "ssl.keystore.location": "librdkafka reads PEM: export the certificate and key (openssl pkcs12 -in KEYSTORE "
                             "-nokeys / -nocerts) and give ssl.certificate.location and ssl.key.location",
    "ssl.keystore.password": "give the PEM key's password as ssl.key.password",
    "ssl.keystore.type": "give PEM files as ssl.certificate.location and ssl.key.location",
    "sasl.kerberos.service.name": "Kerberos (GSSAPI) is not supported by treewatch; use PLAIN or SCRAM",
    "sasl.login.callback.handler.class": "a Java callback class cannot be loaded by librdkafka",
    "sasl.client.callback.handler.class": "a Java callback class cannot be loaded by librdkafka",
}
# Client property names are dotted lower case words; anything else is not named in a message, since
# a stray line of a file of passwords may be one.
_PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+")
_JAAS_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^\s=;"]+)|(=)|(;))', re.S)


@dataclass(frozen=True)
class Property:
    value: str
    line: int


def read_properties(path: str | os.PathLike[str]) -> dict[str, Property]:
    """The key/value pairs of a Java properties file (java.util.Properties' syntax: ``#``/``!``
    comments, ``=``, ``:`` or blanks between key and value, a trailing backslash continues a line,
    ``\\uXXXX`` and the other escapes). A key given twice is refused: which one Java keeps (the
    last) is rarely what the writer meant."""
    try:
        text = read_text_file(path, MAX_COMMAND_CONFIG_BYTES)
    except ConfigError as error:
        raise ConfigError(f"--command-config {path}: cannot read it: {error}") from None
    found: dict[str, Property] = {}
    for number, line in _logical_lines(text):
        where = f"--command-config {path}, line {number}"
        key, value = _split(line)
        try:
            key, value = _unescape(key), _unescape(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        if len(key) > 100 or not _PROPERTY_NAME.fullmatch(key):
            raise ConfigError(f"{where}: not a property name (expected key=value; the line is not shown, it "
                              f"may hold a secret)")
        if key in found:
            raise ConfigError(f"{where}: {key} is given again (first on line {found[key].line})")
        found[key] = Property(value, number)
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines = text.splitlines()
    logical: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].lstrip(" \t\f")
        index += 1
        if not line or line[0] in "#!":
            continue
        # An odd number of trailing backslashes continues the line; the next one's leading blanks go.
        while _continues(line) and index < len(lines):
            line = line[:-1] + lines[index].lstrip(" \t\f")
            index += 1
        if _continues(line):
            line = line[:-1]
        logical.append((number, line))
    return logical


def _continues(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split(line: str) -> tuple[str, str]:
    position = 0
    while position < len(line):
        char = line[position]
        if char == "\\":
            position += 2
            continue
        if char in "=: \t\f":
            break
        position += 1
    # The key ends at the first unescaped '=', ':' or blank; blanks around one '=' or ':' separate.
    key, rest = line[:position], line[position:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "\\" or position + 1 == len(text):
            out.append(char)
            position += 1
            continue
        following = text[position + 1]
        if following == "u":
            digits = text[position + 2:position + 6]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                raise ConfigError("a malformed \\uXXXX escape")
            out.append(chr(int(digits, 16)))
            position += 6
            continue
        out.append(_ESCAPES.get(following, following))
        position += 2
    return "".join(out)


def jaas_credentials(text: str, where: str) -> tuple[str, str, str]:
    """(login module, username, password) of a ``sasl.jaas.config`` value such as
    ``org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p";``.
    Errors say what is wrong, never the value."""
    tokens = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _JAAS_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ConfigError(f"{where}: sasl.jaas.config: cannot be read at character {position + 1} (an "
                              f"unterminated quote?)")
        quoted, word, equals, semicolon = match.groups()
        if quoted is not None:
            tokens.append(("value", re.sub(r"\\(.)", r"\1", quoted, flags=re.S)))
        elif word is not None:
            tokens.append(("word", word))
        else:
            tokens.append(("=" if equals else ";", None))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    if len(tokens) < 2 or tokens[0][0] != "word" or tokens[1][0] != "word":
        raise ConfigError(f"{where}: sasl.jaas.config: expected '<LoginModule class> required key=\"value\" ...;'")
    module, flag = tokens[0][1], tokens[1][1]
    if flag not in ("required", "requisite", "sufficient", "optional"):
        raise ConfigError(f"{where}: sasl.jaas.config: expected a control flag (required) after the login module")
    options: dict[str, str] = {}
    rest = tokens[2:]
    while rest and rest[0][0] != ";":
        if len(rest) < 3 or rest[0][0] != "word" or rest[1][0] != "=" or rest[2][0] not in ("word", "value"):
            raise ConfigError(f"{where}: sasl.jaas.config: expected key=\"value\" options after the control flag")
        options[rest[0][1]] = rest[2][1]
        rest = rest[3:]
    if not rest or len(rest) > 1:
        raise ConfigError(f"{where}: sasl.jaas.config: expected one login module ending in ';'")
    if module not in LOGIN_MODULES:
        known = ", ".join(name.rsplit(".", 1)[1] for name in LOGIN_MODULES)
        raise ConfigError(f"{where}: sasl.jaas.config: login module {module} is not supported (librdkafka takes a "
                          f"user and password: {known})")
    missing = [name for name in ("username", "password") if not options.get(name)]
    if missing:
        raise ConfigError(f"{where}: sasl.jaas.config: {module.rsplit('.', 1)[1]} without {' and '.join(missing)}")
    return module, options["username"], options["password"]


def apply_command_config(kafka: KafkaSettings, path: str | os.PathLike[str]) -> KafkaSettings:
    """``kafka`` with its security settings (protocol, SASL, TLS) replaced by those of the properties
    file at ``path``; ConfigError naming the file, line and key for anything librdkafka cannot do."""
    properties = read_properties(path)
    truststore = properties.get("ssl.truststore.location")
    kind = properties["ssl.truststore.type"].value.upper() if "ssl.truststore.type" in properties else "JKS"
    if truststore is not None and kind != "PEM":
        # Said first: the truststore's password and type, refused on their own, follow from it.
        raise ConfigError(f"--command-config {path}, line {truststore.line}: ssl.truststore.location is a {kind} "
                          f"truststore, which librdkafka cannot read: export its CA certificates to PEM (keytool "
                          f"-exportcert -rfc) and give them as ssl.ca.location")
    for key, found in properties.items():
        if key not in SUPPORTED_KEYS:
            hint = _JAVA_ONLY.get(key, f"supported: {', '.join(SUPPORTED_KEYS)}")
            raise ConfigError(f"--command-config {path}, line {found.line}: {key} is not supported ({hint})")
    return _settings(kafka, properties, str(path))


def _settings(kafka: KafkaSettings, properties: Mapping[str, Property], path: str) -> KafkaSettings:
    def where(key: str) -> str:
        return f"--command-config {path}, line {properties[key].line}"

    def value(key: str) -> str | None:
        return properties[key].value if key in properties else None

    if "sasl.mechanism" in properties and "sasl.mechanisms" in properties:
        raise ConfigError(f"{where('sasl.mechanisms')}: sasl.mechanisms repeats sasl.mechanism: give one")
    mechanism_key = "sasl.mechanism" if "sasl.mechanism" in properties else "sasl.mechanisms"
    mechanism = value(mechanism_key)
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ConfigError(f"{where(mechanism_key)}: {mechanism_key} {mechanism!r} is not supported "
                          f"(expected one of {', '.join(MECHANISMS)})")
    sasl = _sasl(properties, mechanism, mechanism_key, where)
    tls = _tls(properties, where)
    protocol = value("security.protocol")
    if protocol is None:
        protocol = {(False, False): "PLAINTEXT", (False, True): "SSL", (True, False): "SASL_PLAINTEXT",
                    (True, True): "SASL_SSL"}[(sasl is not None, tls is not None)]
    elif protocol.upper() not in PROTOCOLS:
        raise ConfigError(f"{where('security.protocol')}: security.protocol {protocol!r} is not one of "
                          f"{', '.join(PROTOCOLS)}")
    protocol = protocol.upper()
    if protocol.startswith("SASL_") and sasl is None:
        raise ConfigError(f"{where('security.protocol')}: security.protocol {protocol} needs a user and password: "
                          f"sasl.jaas.config, or sasl.username and sasl.password")
    if not protocol.startswith("SASL_") and sasl is not None:
        raise ConfigError(f"--command-config {path}: SASL credentials are given, but security.protocol {protocol} "
                          f"would not use them (SASL_PLAINTEXT or SASL_SSL?)")
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and tls is not None:
        raise ConfigError(f"--command-config {path}: ssl.* settings are given, but security.protocol {protocol} "
                          f"would not use them (SSL or SASL_SSL?)")
    if protocol in ("SSL", "SASL_SSL") and tls is None:
        tls = TlsSettings()  # the system's CA certificates, as librdkafka and Java default to
    # The file's security settings replace the configuration's; what client_properties say of
    # security would override them again in client_config(), so it goes too.
    security_prefixes = ("security.", "sasl.", "ssl.")
    client_properties = {key: setting for key, setting in kafka.client_properties.items()
                         if not key.startswith(security_prefixes)}
    return replace(kafka, security_protocol=protocol, sasl=sasl, tls=tls, client_properties=client_properties)


def _sasl(properties: Mapping[str, Property], mechanism: str | None, mechanism_key: str, where) -> SaslSettings | None:
    jaas = properties.get("sasl.jaas.config")
    user, password = properties.get("sasl.username"), properties.get("sasl.password")
    if jaas is not None and (user is not None or password is not None):
        raise ConfigError(f"{where('sasl.jaas.config')}: give the user and password either in sasl.jaas.config or "
                          f"as sasl.username/sasl.password, not both")
    if jaas is not None:
        module, username, secret = jaas_credentials(jaas.value, where("sasl.jaas.config"))
        allowed = LOGIN_MODULES[module]
        if mechanism is None:
            if len(allowed) > 1:
                raise ConfigError(f"{where('sasl.jaas.config')}: {module.rsplit('.', 1)[1]} needs sasl.mechanism "
                                  f"({' or '.join(allowed)})")
            mechanism = allowed[0]
        elif mechanism not in allowed:
            raise ConfigError(f"{where(mechanism_key)}: {mechanism_key} {mechanism} does not go with "
                              f"{module.rsplit('.', 1)[1]} in sasl.jaas.config (expected {' or '.join(allowed)})")
        return SaslSettings(mechanism, username, secret)
    if user is None and password is None:
        if mechanism is not None:
            raise ConfigError(f"{where(mechanism_key)}: {mechanism_key} without a user and password (sasl.jaas.config, "
                              f"or sasl.username and sasl.password)")
        return None
    for key, given in (("sasl.username", user), ("sasl.password", password)):
        if given is None or not given.value:
            other = "sasl.password" if key == "sasl.username" else "sasl.username"
            raise ConfigError(f"{where(other)}: {other} without {key}")
    if mechanism is None:
        raise ConfigError(f"{where('sasl.username')}: sasl.username needs sasl.mechanism ({', '.join(MECHANISMS)})")
    return SaslSettings(mechanism, user.value, password.value)


def _tls(properties: Mapping[str, Property], where) -> TlsSettings | None:
    def value(key: str) -> str | None:
        return properties[key].value if key in properties else None

    ca = value("ssl.ca.location")
    truststore = value("ssl.truststore.location")
    if truststore is not None:  # of type PEM (apply_command_config refused the others)
        if ca is not None:
            raise ConfigError(f"{where('ssl.truststore.location')}: give the CA certificates once: "
                              f"ssl.ca.location or ssl.truststore.location")
        ca = truststore
    elif "ssl.truststore.type" in properties:
        raise ConfigError(f"{where('ssl.truststore.type')}: ssl.truststore.type without ssl.truststore.location")
    cert, key = value("ssl.certificate.location"), value("ssl.key.location")
    if (cert is None) != (key is None):
        given, missing = ("ssl.certificate.location", "ssl.key.location") if key is None else (
            "ssl.key.location", "ssl.certificate.location")
        raise ConfigError(f"{where(given)}: {given} without {missing}; TLS needs both")
    key_password = value("ssl.key.password")
    if key_password is not None and key is None:
        raise ConfigError(f"{where('ssl.key.password')}: ssl.key.password without ssl.key.location")
    algorithm = value("ssl.endpoint.identification.algorithm")
    if algorithm is not None and algorithm.lower() not in ("https", "", "none"):
        raise ConfigError(f"{where('ssl.endpoint.identification.algorithm')}: ssl.endpoint.identification.algorithm "
                          f"{algorithm!r}: expected https, or empty to turn the host name check off")
    if ca is None and cert is None and algorithm is None:
        return None
    for setting, path in (("ssl.ca.location", ca), ("ssl.certificate.location", cert), ("ssl.key.location", key)):
        if path is not None and not os.path.isfile(path):
            origin = "ssl.truststore.location" if setting == "ssl.ca.location" and truststore is not None else setting
            raise ConfigError(f"{where(origin)}: {origin}: no such file: {path}")
    return TlsSettings(ca_file=ca, cert_file=cert, key_file=key, key_password=key_password,
                       verify_hostname=algorithm is None or algorithm.lower() == "https")
