"""The configuration file: defaults are the guide's pipeline, and every bad file is refused at start
with a message naming the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DEFAULT_STAGES, ConfigError, load_config, parse_config


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
     "services.bridge.url: expected an http:// or https:// URL, got string 'localhost:8054'"),
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
