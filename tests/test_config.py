"""The configuration file: defaults are the guide's pipeline, and every bad file is refused at start
with a message naming the file, the field and what was expected."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pytest
import yaml
from pydantic import Field

import pipeline.config
from pipeline.config import (
    DEFAULT_STAGES,
    SECTIONS,
    Config,
    ConfigError,
    NotInFile,
    Secret,
    config_schema,
    config_section,
    load_config,
    parse_config,
)
from treewatch import config_schema as schema_generator

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "treewatch.yaml"
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return str(caught.value)


def test_an_empty_file_is_the_guides_pipeline(tmp_path):
    config = load_config(write(tmp_path, ""), environ={})
    assert [stage.name for stage in config.stages] == ["discover", "stamp", "index"]
    stamp = config.stage("stamp")
    assert stamp.request_topic == "dev.archon-intelligence.stamping.generate.v1"
    assert stamp.dlq_topic == "dev.archon-intelligence.stamping.generate.v1.dlq"
    assert stamp.group == "stamping-generator-group"
    assert {s.group for s in config.stages} == {"tree-discovery-group", "stamping-generator-group",
                                                "indexing-processor-group"}
    assert {s.name: s.url for s in config.services}["metadata-stamping"] == "http://localhost:8057/health"
    assert config.exporter.refresh_interval_seconds == 15
    assert config.source == str(tmp_path / "treewatch.yaml")


def test_env_and_a_partial_stage_override_change_only_what_they_name(tmp_path):
    config = load_config(write(tmp_path, "env: prod\nstages:\n  stamp:\n    group: stampers\n"), environ={})
    stamp = config.stage("stamp")
    assert stamp.group == "stampers"
    assert stamp.request_topic == DEFAULT_STAGES["stamp"]["request_topic"].format(env="prod")
    assert config.stage("index").request_topic == "prod.archon-intelligence.tree.index.v1"


def test_environment_variables_override_the_file_and_secrets_come_from_files(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    path = write(tmp_path, f"kafka:\n  bootstrap_servers: file:9092\n  sasl:\n    mechanism: PLAIN\n"
                           f"    username: watcher\n    password_file: {secret}\n")
    config = load_config(path, environ={"TREEWATCH_KAFKA_BOOTSTRAP_SERVERS": "env:9093"})
    assert config.kafka.bootstrap_servers == "env:9093"
    assert config.kafka.security_protocol == "SASL_PLAINTEXT"
    client = config.kafka.client_config()
    assert client["sasl.password"] == "s3cret"
    assert "s3cret" not in repr(config)


def test_a_missing_file_is_named(tmp_path):
    message = refused(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in message
    assert "not found" in message


def test_a_wrong_type_names_the_file_the_field_and_the_expected_type(tmp_path):
    path = write(tmp_path, "exporter:\n  refresh_interval_seconds: fast\n")
    message = refused(path)
    assert f"{path}: exporter.refresh_interval_seconds: expected number, got string 'fast'" in message


def test_an_unknown_stage_field_is_named_with_the_fields_allowed(tmp_path):
    path = write(tmp_path, "stages:\n  stamp:\n    dlq_topik: x.dlq\n")
    message = refused(path)
    assert f"{path}: stages.stamp.dlq_topik: unknown field" in message
    assert "dlq_topic" in message  # what was meant is among those listed


def test_every_problem_of_a_file_is_listed_at_once(tmp_path):
    path = write(tmp_path, "exporter:\n  max_series: many\nkafka:\n  security_protocol: CARRIER_PIGEON\n")
    message = refused(path)
    assert "exporter.max_series: expected integer" in message
    assert "kafka.security_protocol: expected one of PLAINTEXT" in message


@pytest.mark.parametrize("text, expected", [
    ("kafka: [\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "the top level must be a mapping, got list"),
    ("stages:\n  enrich:\n    request_topic: e.v1\n",
     "stages.enrich: a new stage needs completed_topic"),
    ("stages:\n  stamp:\n    group: '{environment}-g'\n",
     "stages.stamp.group: '{environment}-g' is not a valid"),
    ("exporter:\n  groups:\n    allow: ['(unclosed']\n",
     "exporter.groups.allow.0: string '(unclosed' is not a valid regular expression"),
    ("kafka:\n  sasl:\n    mechanism: PLAIN\n    username: u\n",
     "kafka.sasl: expected password or password_file"),
    ("services:\n  bridge:\n    url: localhost:8054\n",
     "services.bridge.url: expected an http:// or https:// URL, or tcp://host:port for kind tcp, got string "
     "'localhost:8054'"),
])
def test_bad_values_are_refused_with_the_file_and_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = refused(path)
    assert str(path) in message
    assert expected in message


def test_a_secret_file_that_cannot_be_read_is_named(tmp_path):
    missing = tmp_path / "nope"
    message = refused(write(tmp_path, f"kafka:\n  sasl:\n    mechanism: PLAIN\n    username: u\n"
                                      f"    password_file: {missing}\n"))
    assert f"kafka.sasl.password_file: cannot read secret file {missing}" in message


def test_parse_config_refuses_what_the_schema_refuses():
    with pytest.raises(ConfigError, match="exporter.committed_offsets_concurrency"):
        parse_config({"exporter": {"committed_offsets_concurrency": 0}}, source="inline", environ={})


def test_a_secret_in_the_environment_wins_over_the_file_the_yaml_names(tmp_path):
    secret = tmp_path / "kafka-password"
    secret.write_text("from-file\n")
    key_secret = tmp_path / "key-password"
    key_secret.write_text("key-from-file\n")
    data = {"kafka": {"sasl": {"mechanism": "SCRAM-SHA-512", "username": "u", "password_file": str(secret)},
                      "tls": {"ca_file": "/ca.pem", "key_password_file": str(key_secret)}}}
    environ = {"TREEWATCH_KAFKA_SASL_PASSWORD": "from-env", "TREEWATCH_KAFKA_TLS_KEY_PASSWORD": "key-from-env"}

    from_env = parse_config(data, "t.yaml", environ=environ).kafka
    from_files = parse_config(data, "t.yaml", environ={}).kafka

    assert (from_env.sasl.password, from_env.tls.key_password) == ("from-env", "key-from-env")
    assert (from_files.sasl.password, from_files.tls.key_password) == ("from-file", "key-from-file")
    assert "from-env" not in repr(from_env) and "key-from-env" not in repr(from_env)


@pytest.mark.parametrize("address, host_port", [
    ("0.0.0.0:9847", ("0.0.0.0", 9847)),
    ("[::]:9847", ("::", 9847)),
    (":9847", ("", 9847)),
])
def test_listen_addresses_take_ipv4_ipv6_and_any(address, host_port):
    assert parse_config({"exporter": {"listen_address": address}}, "t.yaml").exporter.listen_host_port == host_port


def test_a_listen_address_without_a_port_says_what_is_expected():
    with pytest.raises(ConfigError, match=r"exporter.listen_address: expected host:port, \[ipv6\]:port"):
        parse_config({"exporter": {"listen_address": "localhost"}}, "t.yaml")


def test_two_stages_sharing_a_group_are_refused_with_both_fields_named():
    with pytest.raises(ConfigError, match=r"t.yaml: stages.index.group: 'stamping-generator-group' is already "
                                          r"used by stages.stamp.group"):
        parse_config({"stages": {"index": {"group": "stamping-generator-group"}}}, "t.yaml")


def test_a_date_like_value_is_the_text_it_looks_like(tmp_path):
    # YAML 1.1 makes 2024-01-01 a date, which JSON (and so the schema) has no word for.
    assert load_config(write(tmp_path, "env: 2024-01-01\n"), environ={}).env == "2024-01-01"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_parse_config_refuses_numbers_that_are_not_finite(value):
    with pytest.raises(ConfigError, match=r"t.yaml: exporter.stale_grace_seconds: expected a finite number"):
        parse_config({"exporter": {"stale_grace_seconds": value}}, "t.yaml", environ={})


def test_an_infinite_value_is_one_problem_not_two(tmp_path):
    path = write(tmp_path, "exporter:\n  refresh_interval_seconds: .inf\n  max_series: 0\n")
    lines = refused(path).splitlines()[1:]
    assert lines == [f"  {path}: exporter.max_series: expected at least 1, got integer 0",
                     f"  {path}: exporter.refresh_interval_seconds: expected a finite number, got number inf"]


# -- one declaration per field --------------------------------------------------------------------

def test_the_committed_schema_is_the_one_the_declarations_make():
    assert schema_generator.SCHEMA_FILE.read_text() == schema_generator.render(), "run make generate"


def declared_fields(declaration: type, schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(path, its schema or None) for every field the file may set, walking the declarations."""
    found = []
    hints = typing.get_type_hints(declaration, include_extras=True)
    for item in dataclasses.fields(declaration):
        annotation = hints[item.name]
        markers = typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()
        if any(isinstance(m, NotInFile) for m in markers) or path.endswith("*") and item.name == "name":
            continue  # not the file's to set (filled in by the loader, or set by code), or the entry's key
        name = f"{item.name}_file" if any(isinstance(m, Secret) and not m.inline for m in markers) else item.name
        node = schema["properties"].get(name)
        found.append((f"{path}.{name}".lstrip("."), node))
        kind = typing.get_args(annotation)[0] if markers else annotation
        if isinstance(kind, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if node is None:
            continue
        if dataclasses.is_dataclass(kind):
            found += declared_fields(kind, node, f"{path}.{name}")
        elif typing.get_origin(kind) is tuple and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            found += declared_fields(typing.get_args(kind)[0], node["additionalProperties"], f"{path}.{name}.*")
    return found


def test_every_declared_field_is_in_the_schema_with_its_description():
    schema = config_schema()
    found = declared_fields(Config, schema, "")
    for name, section in SECTIONS.items():
        found.append((name, schema["properties"].get(name)))
        found += declared_fields(section.declaration, schema["properties"][name], name)
    paths = {path for path, _ in found}
    assert {"kafka.sasl.password", "stages.*.dlq_topic", "services.*.url", "exporter.max_series",
            "exporter.groups.deny", "exporter.web.tls_key_password_file"} <= paths
    assert [path for path, node in found if node is None] == []
    assert [path for path, node in found if not node.get("description")] == []


def example_lines(text: str) -> str:
    """treewatch.example.yaml with its commented-out examples (``#   key: value``) made live."""
    live = re.compile(r"^(\s*)# ?(\s*[a-z_]+:(\s.*)?)$")
    return "\n".join(live.sub(r"\1\2", line) for line in text.splitlines()) + "\n"


def test_the_example_file_and_every_example_it_comments_out_validate():
    text = (REPO / "treewatch.example.yaml").read_text()
    assert load_config(REPO / "treewatch.example.yaml", environ={}).exporter.max_series == 200_000
    everything = yaml.safe_load(example_lines(text))
    assert {"sasl", "tls"} <= set(everything["kafka"])  # the commented-out blocks were found
    assert {"tls_cert_file", "tls_key_file", "tls_key_password_file"} <= set(everything["exporter"]["web"])
    validator = jsonschema.Draft202012Validator(config_schema(), format_checker=jsonschema.FormatChecker())
    assert [error.message for error in validator.iter_errors(everything)] == []


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sections registered in a test go away with it."""
    monkeypatch.setattr(pipeline.config, "SECTIONS", dict(SECTIONS))
    monkeypatch.setattr(pipeline.config, "ENV_OVERRIDES", dict(pipeline.config.ENV_OVERRIDES))


def test_a_new_section_or_knob_is_one_declaration(registry, tmp_path):
    @config_section("archive", "Where old snapshots go.", environment={"TREEWATCH_ARCHIVE_URL": ("url",)})
    @dataclasses.dataclass(frozen=True)
    class ArchiveSettings:
        url: Annotated[str, Field(pattern="^s3://", description="an s3:// URL")] = "s3://treewatch"
        keep_days: Annotated[int, Field(ge=1, le=3650, description="How long a snapshot is kept.")] = 30
        token: Annotated[str | None, Field(description="Archive token."), Secret()] = None
        labels: Annotated[Mapping[str, str], Field(description="Extra object labels.")] = dataclasses.field(
            default_factory=dict)

    schema = config_schema()["properties"]["archive"]
    assert schema["description"] == "Where old snapshots go."
    assert schema["properties"]["keep_days"] == {"description": "How long a snapshot is kept.", "maximum": 3650,
                                                 "minimum": 1, "type": "integer", "default": 30}
    assert {"token", "token_file", "labels"} <= set(schema["properties"]) and not schema["additionalProperties"]

    assert parse_config({}, "t.yaml", environ={}).archive == ArchiveSettings()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    given = {"archive": {"keep_days": 7, "token_file": str(token), "labels": {"team": "ops"}}}
    archive = parse_config(given, "t.yaml", environ={"TREEWATCH_ARCHIVE_URL": "s3://elsewhere"}).archive
    assert archive == ArchiveSettings(url="s3://elsewhere", keep_days=7, token="t0ken", labels={"team": "ops"})

    with pytest.raises(ConfigError) as caught:
        parse_config({"archive": {"keep_days": 0, "url": "ftp://x", "kept_days": 1}}, "t.yaml", environ={})
    assert str(caught.value).splitlines()[1:] == [
        "  t.yaml: archive.kept_days: unknown field (expected one of: keep_days, labels, token, token_file, url)",
        "  t.yaml: archive.keep_days: expected at least 1, got integer 0",
        "  t.yaml: archive.url: expected an s3:// URL, got string 'ftp://x'"]


def test_a_section_is_declared_once(registry):
    with pytest.raises(ValueError, match="'exporter' is declared twice"):
        config_section("exporter", "again")(type("Again", (), {}))


def test_a_tool_run_validates_the_exporter_section_too(tmp_path):
    path = write(tmp_path, "exporter:\n  max_series: many\n")
    result = subprocess.run([sys.executable, "-m", "treewatch", "status", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert f"{path}: exporter.max_series: expected integer, got string 'many'" in result.stderr


def test_the_ground_floor_imports_nothing_above_it():
    probe = ("import sys, pipeline.config; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'exporter', 'tools', 'simulator', 'alerts', "
             "'dashboards', 'treewatch', 'localbundle'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stderr


def test_name_filters_from_the_file_are_matched_whole_allow_then_deny():
    exporter = parse_config({"exporter": {"topics": {"allow": ["dev\\..*"], "deny": [".*\\.dlq"]}}}, "t.yaml",
                            environ={}).exporter
    assert [exporter.topics(name) for name in ("dev.a.v1", "dev.a.v1.dlq", "prod.dev.a", "__consumer_offsets")] == [
        True, False, False, False]
    assert exporter.groups("any-group") and not parse_config({}, "t.yaml", environ={}).exporter.topics("__offsets")
