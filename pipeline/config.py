"""treewatch's one configuration file: loading, validation against the JSON Schema, defaults.

Every default is the pipeline of the operators' guide, so an empty file (or none) describes it.
A bad file fails here, at start, with a message naming the file, the field and what was
expected; nothing later has to second-guess a value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_ENV = "dev"

# stage -> (request, completed, failed, dead letter) topic templates and consumer group.
DEFAULT_STAGES: dict[str, dict[str, str]] = {
    "discover": {
        "request_topic": "{env}.archon-intelligence.tree.discover.v1",
        "completed_topic": "{env}.archon-intelligence.tree.discover-completed.v1",
        "failed_topic": "{env}.archon-intelligence.tree.discover-failed.v1",
        "dlq_topic": "{env}.archon-intelligence.tree.discover.v1.dlq",
        "group": "tree-discovery-group",
    },
    "stamp": {
        "request_topic": "{env}.archon-intelligence.stamping.generate.v1",
        "completed_topic": "{env}.archon-intelligence.stamping.generate-completed.v1",
        "failed_topic": "{env}.archon-intelligence.stamping.generate-failed.v1",
        "dlq_topic": "{env}.archon-intelligence.stamping.generate.v1.dlq",
        "group": "stamping-generator-group",
    },
    "index": {
        "request_topic": "{env}.archon-intelligence.tree.index.v1",
        "completed_topic": "{env}.archon-intelligence.tree.index-completed.v1",
        "failed_topic": "{env}.archon-intelligence.tree.index-failed.v1",
        "dlq_topic": "{env}.archon-intelligence.tree.index.v1.dlq",
        "group": "indexing-processor-group",
    },
}

DEFAULT_SERVICES: dict[str, str] = {
    "intelligence": "http://localhost:8053/health",
    "bridge": "http://localhost:8054/health",
    "onextree": "http://localhost:8058/health",
    "metadata-stamping": "http://localhost:8057/health",
}

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9847"

# Environment variables that override the file, for containers and secrets managers.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "TREEWATCH_ENV": ("env",),
    "TREEWATCH_KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "TREEWATCH_KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "TREEWATCH_KAFKA_SASL_MECHANISM": ("kafka", "sasl", "mechanism"),
    "TREEWATCH_KAFKA_SASL_USERNAME": ("kafka", "sasl", "username"),
    "TREEWATCH_KAFKA_SASL_PASSWORD": ("kafka", "sasl", "password"),
    "TREEWATCH_KAFKA_TLS_KEY_PASSWORD": ("kafka", "tls", "key_password"),
    "TREEWATCH_LISTEN_ADDRESS": ("exporter", "listen_address"),
}


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


@dataclass(frozen=True)
class Stage:
    name: str
    request_topic: str
    completed_topic: str
    failed_topic: str
    dlq_topic: str
    group: str

    @property
    def topics(self) -> dict[str, str]:
        """role -> topic, for every topic the stage owns."""
        return {
            "request": self.request_topic,
            "completed": self.completed_topic,
            "failed": self.failed_topic,
            "dlq": self.dlq_topic,
        }


@dataclass(frozen=True)
class Service:
    name: str
    url: str = field(repr=False)  # may carry user:password; pipeline.health.redact_url shows it safely


@dataclass(frozen=True)
class SaslSettings:
    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    verify_hostname: bool = True


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    request_timeout_seconds: float = 10.0
    sasl: SaslSettings | None = None
    tls: TlsSettings | None = None
    client_properties: Mapping[str, Any] = field(default_factory=dict)

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties for any client (admin, consumer, producer)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl is not None:
            config["sasl.mechanism"] = self.sasl.mechanism
            config["sasl.username"] = self.sasl.username
            config["sasl.password"] = self.sasl.password
        if self.tls is not None:
            optional = {
                "ssl.ca.location": self.tls.ca_file,
                "ssl.certificate.location": self.tls.cert_file,
                "ssl.key.location": self.tls.key_file,
                "ssl.key.password": self.tls.key_password,
            }
            config.update({key: value for key, value in optional.items() if value is not None})
            config["ssl.endpoint.identification.algorithm"] = "https" if self.tls.verify_hostname else "none"
        config.update(self.client_properties)
        return config


@dataclass(frozen=True)
class NameFilter:
    """Allow-list then deny-list of regular expressions, matched against the whole name."""

    allow: tuple[re.Pattern[str], ...] = (re.compile(".*"),)
    deny: tuple[re.Pattern[str], ...] = ()

    def __call__(self, name: str) -> bool:
        return any(p.fullmatch(name) for p in self.allow) and not any(p.fullmatch(name) for p in self.deny)


@dataclass(frozen=True)
class WebSettings:
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ExporterSettings:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    refresh_interval_seconds: float = 15.0
    # How long series of a failing collector keep their last values before they disappear.
    stale_grace_seconds: float = 120.0
    max_series: int = 200_000
    committed_offsets_concurrency: int = 8
    health_timeout_seconds: float = 5.0
    health_max_body_bytes: int = 65_536
    groups: NameFilter = NameFilter()
    # Kafka's internal topics say nothing about the pipeline.
    topics: NameFilter = NameFilter(deny=(re.compile("__.*"),))
    web: WebSettings = WebSettings()

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen_address.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class Config:
    env: str = DEFAULT_ENV
    kafka: KafkaSettings = KafkaSettings()
    stages: tuple[Stage, ...] = ()
    services: tuple[Service, ...] = ()
    exporter: ExporterSettings = ExporterSettings()
    source: str = "<defaults>"

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; configured: {', '.join(s.name for s in self.stages)}")

    @property
    def pipeline_topics(self) -> dict[str, tuple[Stage, str]]:
        """topic -> (stage, role) for every topic of every stage."""
        return {topic: (stage, role) for stage in self.stages for role, topic in stage.topics.items()}


def schema() -> dict[str, Any]:
    return json.loads(resources.files("pipeline").joinpath("config.schema.json").read_text())


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and complete the configuration at ``path`` (None: defaults only)."""
    environ = os.environ if environ is None else environ
    if path is None:
        return parse_config({}, source="<defaults>", environ=environ)
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{file}: configuration file not found") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read configuration file: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if data is None:
        data = {}
    return parse_config(data, source=str(file), environ=environ)


def parse_config(data: Any, source: str, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = _apply_env_overrides(data, environ)
    _validate(data, source)
    env = data.get("env", DEFAULT_ENV)
    return Config(
        env=env,
        kafka=_kafka(data.get("kafka", {}), source),
        stages=_stages(data.get("stages", {}), env, source),
        services=_services(data.get("services")),
        exporter=_exporter(data.get("exporter", {})),
        source=source,
    )


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = json.loads(json.dumps(data))  # deep copy; the caller's mapping stays as it was
    for variable, path in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        node = merged
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = environ[variable]
        # A secret given in the environment wins over the file the YAML names for it.
        node.pop(f"{path[-1]}_file", None)
    return merged


def _validate(data: dict[str, Any], source: str) -> None:
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if not errors:
        return
    lines = [f"{source}: {_field_name(e)}: {_expected(e)}" for e in errors[:10]]
    raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))


def _field_name(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, unknown[0] if unknown else ""])) or "<top level>"
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        return ".".join(filter(None, [path, missing.group(1) if missing else ""]))
    return path or "<top level>"


def _expected(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field (expected one of: {allowed})"
    if error.validator == "required":
        return "required field is missing"
    if error.validator == "type":
        return f"expected {error.validator_value}, got {_describe(error.instance)}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"expected one of {allowed}, got {_describe(error.instance)}"
    if error.validator == "format" and error.validator_value == "regex":
        return f"{_describe(error.instance)} is not a valid regular expression"
    if error.validator == "pattern":
        wanted = error.schema.get("description") or f"a match for the pattern {error.validator_value}"
        return f"expected {wanted}, got {_describe(error.instance)}"
    return error.message


def _describe(value: Any) -> str:
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown}" if len(shown) <= 40 else kind


def _read_secret(path: str, field_name: str, source: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"{source}: {field_name}: cannot read secret file {path}:"
                          f" {error.strerror}") from None


def _kafka(data: dict[str, Any], source: str) -> KafkaSettings:
    sasl = None
    if "sasl" in data:
        raw = data["sasl"]
        if "password_file" in raw:
            password = _read_secret(raw["password_file"], "kafka.sasl.password_file", source)
        elif "password" in raw:
            password = raw["password"]
        else:
            raise ConfigError(f"{source}: kafka.sasl: expected password or password_file")
        sasl = SaslSettings(mechanism=raw["mechanism"], username=raw["username"], password=password)
    tls = None
    if "tls" in data:
        raw = data["tls"]
        key_password = raw.get("key_password")
        if "key_password_file" in raw:
            key_password = _read_secret(raw["key_password_file"], "kafka.tls.key_password_file", source)
        tls = TlsSettings(
            ca_file=raw.get("ca_file"),
            cert_file=raw.get("cert_file"),
            key_file=raw.get("key_file"),
            key_password=key_password,
            verify_hostname=raw.get("verify_hostname", True),
        )
    protocol = data.get("security_protocol")
    if protocol is None:
        by_security = {(False, False): "PLAINTEXT", (False, True): "SSL",
                       (True, False): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}
        protocol = by_security[(sasl is not None, tls is not None)]
    defaults = KafkaSettings()
    return KafkaSettings(
        bootstrap_servers=data.get("bootstrap_servers", defaults.bootstrap_servers),
        security_protocol=protocol,
        request_timeout_seconds=float(data.get("request_timeout_seconds", defaults.request_timeout_seconds)),
        sasl=sasl,
        tls=tls,
        client_properties=dict(data.get("client_properties", {})),
    )


def _stages(data: dict[str, dict[str, str]], env: str, source: str) -> tuple[Stage, ...]:
    names = list(DEFAULT_STAGES) + [name for name in data if name not in DEFAULT_STAGES]
    stages = []
    for name in names:
        fields = {**DEFAULT_STAGES.get(name, {}), **data.get(name, {})}
        missing = [key for key in ("request_topic", "completed_topic", "failed_topic", "dlq_topic", "group")
                   if key not in fields]
        if missing:
            raise ConfigError(f"{source}: stages.{name}: a new stage needs {', '.join(missing)}")
        stages.append(Stage(name=name, **{key: _expand(value, env, f"stages.{name}.{key}", source)
                                          for key, value in fields.items()}))
    _refuse_shared_names(stages, source)
    return tuple(stages)


def _refuse_shared_names(stages: list[Stage], source: str) -> None:
    """Each topic and group belongs to one stage: a metric, an alert or a replay that finds a
    topic or group must be able to tell which stage it is."""
    owner: dict[str, str] = {}
    for stage in stages:
        for field_name, name in [*((f"{role}_topic", topic) for role, topic in stage.topics.items()),
                                 ("group", stage.group)]:
            if name in owner:
                raise ConfigError(f"{source}: stages.{stage.name}.{field_name}: {name!r} is already used by "
                                  f"{owner[name]}; every stage needs its own topics and group")
            owner[name] = f"stages.{stage.name}.{field_name}"


def _expand(template: str, env: str, field_name: str, source: str) -> str:
    try:
        return template.format(env=env)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"{source}: {field_name}: {template!r} is not a valid name template"
                          f" ({type(error).__name__}: {error}); the only placeholder is {{env}},"
                          f" and a literal brace is written twice") from None


def _services(data: dict[str, dict[str, str]] | None) -> tuple[Service, ...]:
    if data is None:
        return tuple(Service(name, url) for name, url in DEFAULT_SERVICES.items())
    return tuple(Service(name, spec["url"]) for name, spec in data.items())


def _filter(data: dict[str, list[str]] | None, default: NameFilter) -> NameFilter:
    if data is None:
        return default
    allow = tuple(re.compile(p) for p in data.get("allow", [".*"]))
    deny = tuple(re.compile(p) for p in data.get("deny", []))
    return NameFilter(allow=allow, deny=deny)


def _exporter(data: dict[str, Any]) -> ExporterSettings:
    defaults = ExporterSettings()
    web = data.get("web", {})
    scalars = {key: data[key] for key in (
        "listen_address", "refresh_interval_seconds", "stale_grace_seconds", "max_series",
        "committed_offsets_concurrency", "health_timeout_seconds", "health_max_body_bytes") if key in data}
    return ExporterSettings(
        **scalars,
        groups=_filter(data.get("groups"), defaults.groups),
        topics=_filter(data.get("topics"), defaults.topics),
        web=WebSettings(
            tls_cert_file=web.get("tls_cert_file"),
            tls_key_file=web.get("tls_key_file"),
            basic_auth_users=dict(web.get("basic_auth_users", {})),
        ),
    )
