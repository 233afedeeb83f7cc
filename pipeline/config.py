"""treewatch's one configuration file: loading, validation against the JSON Schema, defaults.

Every default is the pipeline of the operators' guide, so an empty file (or none) describes it.
A bad file fails here, at start, with a message naming the file, the field and what was
expected; nothing later has to second-guess a value.
"""

from __future__ import annotations

import ipaddress
import json
import math
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


# A configuration is a few kilobytes; files far beyond these are mistakes or attacks, refused before
# they cost anything (only limit + 1 bytes are ever read, so even /dev/zero is refused at once).
MAX_CONFIG_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 << 10
MAX_PEM_BYTES = 8 << 20  # a CA bundle of every public root is about 250 KiB

# What a YAML document may make of itself through anchors and aliases: a "billion laughs" file of a
# few hundred bytes expands to 10^9 values, so aliases are counted and their expansion measured
# while composing, before anything is built.
MAX_YAML_ALIASES = 100
MAX_YAML_VALUES = 10_000
MAX_YAML_DEPTH = 50
MAX_YAML_INTEGER_DIGITS = 30


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


def read_text_file(path: str | os.PathLike[str], limit: int) -> str:
    """The UTF-8 text of a file the configuration names, at most ``limit`` bytes of it.

    Raises a ConfigError whose message is only the reason (for the caller to put after the file
    and the field): "not found", the system's reason, "larger than ...", "not UTF-8 text (...)".
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError("not found") from None
    except OSError as error:
        raise ConfigError(error.strerror or str(error)) from None
    if len(data) > limit:
        raise ConfigError(f"larger than {_size(limit)}; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


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
    tls_key_password: str | None = field(default=None, repr=False)
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
    # Connections the exporter's endpoint serves at once; one more is answered 503 at once.
    max_connections: int = 64
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
        text = read_text_file(file, MAX_CONFIG_BYTES)
    except ConfigError as error:
        raise ConfigError(f"{file}: cannot read configuration file: {error}") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except _YamlRefused as error:
        raise ConfigError(f"{file}: refused at {_where(error.mark)}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML{_yaml_problem(error)}") from None
    if data is None:
        data = {}
    return parse_config(data, source=str(file), environ=environ)


def _where(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line, where first: its own str() spans several and repeats the text."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        context = error.context
        if context and error.context_mark and error.context_mark is not mark:
            context = f"{context} at {_where(error.context_mark)}"
        return (f" at {_where(mark)}" if mark else "") + ": " + "; ".join(filter(None, [context, error.problem]))
    if isinstance(error, yaml.reader.ReaderError):
        return f": character #x{error.character:04x} at offset {error.position}: {error.reason}"
    return ": " + " ".join(str(error).split())


class _YamlRefused(yaml.YAMLError):
    """Well-formed YAML that would cost far more to build than any configuration needs."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses, while composing and so before anything is built, what makes a
    small file expensive: more than a few aliases, aliases whose expansion would exceed
    MAX_YAML_VALUES values or MAX_YAML_DEPTH levels (billion laughs), an alias inside the very
    collection it names (a cycle), and nesting deep enough to exhaust the stack. Values are only
    what JSON has: a date-like scalar stays the text it is, and !!binary or !!set are refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._values = 0  # composed so far, each alias counted as everything it stands for
        self._depth = 0
        self._open_anchors: set[str] = set()  # anchors of collections still being composed
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) below it

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _YamlRefused(f"more than {MAX_YAML_ALIASES} aliases", event.start_mark)
            if event.anchor in self._open_anchors:
                raise _YamlRefused(f"alias *{event.anchor} is inside the collection it names", event.start_mark)
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's error to report
                values, depth = self._measure(target)
                self._count(values, self._depth + depth, event.start_mark, " with its aliases expanded")
            return super().compose_node(parent, index)
        self._count(1, self._depth + 1, event.start_mark, "")
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(event.anchor)

    def _count(self, values: int, depth: int, mark: yaml.Mark, expanded: str) -> None:
        self._values += values
        if self._values > MAX_YAML_VALUES:
            raise _YamlRefused(f"the document{expanded} has more than {MAX_YAML_VALUES} values", mark)
        if depth > MAX_YAML_DEPTH:
            raise _YamlRefused(f"the document{expanded} is nested more than {MAX_YAML_DEPTH} levels deep", mark)

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, levels) of ``node`` with its aliases expanded; each node is measured once, and
        none is deeper than MAX_YAML_DEPTH, so neither time nor recursion grows with the expansion."""
        known = self._measured.get(id(node))
        if known is None:
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            below = [self._measure(child) for child in children]
            known = (1 + sum(values for values, _ in below), 1 + max((depth for _, depth in below), default=0))
            self._measured[id(node)] = known
        return known

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # Python refuses to parse integers of more than 4300 digits with a bare ValueError, and no
        # setting needs more than 20.
        if len(node.value) > MAX_YAML_INTEGER_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"integer of {len(node.value)} characters is too large",
                                                    node.start_mark)
        return super().construct_yaml_int(node)

    def _not_a_configuration_value(self, node: yaml.Node) -> None:
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.tag} is not a configuration value (text, number, boolean, list or mapping)",
            node.start_mark)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _BoundedLoader.construct_yaml_str)
for _tag in ("binary", "set", "omap", "pairs"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _BoundedLoader._not_a_configuration_value)


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
        exporter=_exporter(data.get("exporter", {}), source),
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


def _is_finite_number(checker: jsonschema.TypeChecker, instance: Any) -> bool:
    return jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and math.isfinite(instance)


# YAML has .nan and .inf, JSON Schema's "number" takes them, and no setting means anything with
# them (a .nan grace keeps nothing, an .inf interval kills the refresh thread): "number" is finite.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _is_finite_number))


def _validate(data: dict[str, Any], source: str) -> None:
    validator = _Validator(schema(), format_checker=jsonschema.FormatChecker())
    # The type's complaint first: .inf is both "not a finite number" and "above the maximum".
    errors = sorted(validator.iter_errors(data),
                    key=lambda e: ([str(p) for p in e.absolute_path], e.validator != "type", e.message))
    by_field: dict[str, str] = {}
    for error in errors:
        by_field.setdefault(_field_name(error), _expected(error))
    if not by_field:
        return
    lines = [f"{source}: {name}: {expected}" for name, expected in list(by_field.items())[:10]]
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
        if isinstance(error.instance, float) and not math.isfinite(error.instance):
            return f"expected a finite number, got {_describe(error.instance)}"
        return f"expected {error.validator_value}, got {_describe(error.instance)}"
    if error.validator in _BOUNDS:
        return f"expected {_BOUNDS[error.validator]} {error.validator_value}, got {_describe(error.instance)}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"expected one of {allowed}, got {_describe(error.instance)}"
    if error.validator == "format" and error.validator_value == "regex":
        return f"{_describe(error.instance)} is not a valid regular expression"
    if error.validator == "pattern":
        wanted = error.schema.get("description") or f"a match for the pattern {error.validator_value}"
        return f"expected {wanted}, got {_describe(error.instance)}"
    return error.message


_BOUNDS = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most",
           "exclusiveMaximum": "less than"}


def _describe(value: Any) -> str:
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown}" if len(shown) <= 40 else kind


def _read_secret(path: str, field_name: str, source: str) -> str:
    try:
        return read_text_file(path, MAX_SECRET_BYTES).strip()
    except ConfigError as error:
        raise ConfigError(f"{source}: {field_name}: cannot read secret file {path}: {error}") from None


def _refuse_half_pair(raw: Mapping[str, Any], section: str, source: str, cert: str, key: str) -> None:
    """A certificate goes with its key: with one alone, TLS would be off (served as plain HTTP) or
    fail only when the first connection needs it."""
    given = [name for name in (cert, key) if name in raw]
    if len(given) == 1:
        missing = key if given == [cert] else cert
        raise ConfigError(f"{source}: {section}.{given[0]}: given without {section}.{missing}; TLS needs both")


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
        _refuse_half_pair(raw, "kafka.tls", source, cert="cert_file", key="key_file")
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


def _exporter(data: dict[str, Any], source: str) -> ExporterSettings:
    defaults = ExporterSettings()
    web = data.get("web", {})
    _refuse_half_pair(web, "exporter.web", source, cert="tls_cert_file", key="tls_key_file")
    if "listen_address" in data:
        _check_listen_address(data["listen_address"], source)
    scalars = {key: data[key] for key in (
        "listen_address", "refresh_interval_seconds", "stale_grace_seconds", "max_series",
        "committed_offsets_concurrency", "health_timeout_seconds", "health_max_body_bytes",
        "max_connections") if key in data}
    return ExporterSettings(
        **scalars,
        groups=_filter(data.get("groups"), defaults.groups),
        topics=_filter(data.get("topics"), defaults.topics),
        web=WebSettings(
            tls_cert_file=web.get("tls_cert_file"),
            tls_key_file=web.get("tls_key_file"),
            tls_key_password=(_read_secret(web["tls_key_password_file"], "exporter.web.tls_key_password_file", source)
                              if "tls_key_password_file" in web else None),
            basic_auth_users=dict(web.get("basic_auth_users", {})),
        ),
    )


def _check_listen_address(address: str, source: str) -> None:
    """What the schema's pattern cannot say: a bracketed host is an IPv6 address."""
    host, _ = ExporterSettings(listen_address=address).listen_host_port
    if address.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{source}: exporter.listen_address: {host!r} is not an IPv6 address") from None
