"""What every operator tool's subcommand shares (status, trace, dlq, groups, bench, reindex; one
module each, ``treewatch/<group>_cli.py``): the options they have in common, the configuration
loaded once and the cluster checked before a tool starts, errors in words, and the output helpers.
The work lives in ``tools``; exit codes are treewatch.exit_codes' (a tool's error says which it means:
a misspelled group or an unusable saved offsets file is bad input, USAGE)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pipeline.config import Config, ConfigError, load_config
from treewatch.exit_codes import ExitCode

# A tool's work, given its arguments and the configuration they name; returns the exit code.
ToolCommand = Callable[[argparse.Namespace, Config], int]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="treewatch.yaml (default: the guide's pipeline on localhost)")


def add_kafka_options(parser: argparse.ArgumentParser) -> None:
    """--config and the flags kafka-consumer-groups.sh, rpk and kcat users type for the cluster and
    its security, which override the configuration file's (applied by guarded())."""
    add_config_option(parser)
    parser.add_argument("-b", "--bootstrap-server", metavar="HOST:PORT[,...]",
                        help="the brokers to bootstrap from, over the configuration's kafka.bootstrap_servers")
    parser.add_argument("--command-config", metavar="FILE",
                        help="a Java client properties file, as kafka-consumer-groups.sh takes: security.protocol, "
                             "sasl.mechanism, sasl.jaas.config (PLAIN, SCRAM) or sasl.username/sasl.password, "
                             "ssl.ca.location, ssl.certificate.location, ssl.key.location; it replaces the "
                             "configuration's security settings")


def with_command_line_kafka(config: Config, args: argparse.Namespace) -> Config:
    """The configuration with -b and --command-config applied (each recorded in kafka.overridden_by,
    so an unreachable cluster's message names the option, not the file)."""
    from dataclasses import replace

    from pipeline.command_config import apply_command_config

    kafka = config.kafka
    command_config = getattr(args, "command_config", None)
    if command_config is not None:
        kafka = apply_command_config(kafka, command_config)
        kafka = replace(kafka, overridden_by={**kafka.overridden_by, "security": f"--command-config {command_config}"})
    bootstrap = getattr(args, "bootstrap_server", None)
    if bootstrap is not None:
        if not bootstrap.strip() or any(not entry.strip() for entry in bootstrap.split(",")):
            raise ConfigError(f"-b/--bootstrap-server {bootstrap!r}: expected host:port[,host:port...]")
        # A bootstrap.servers in client_properties would win in client_config(): the flag must.
        properties = {key: value for key, value in kafka.client_properties.items() if key != "bootstrap.servers"}
        kafka = replace(kafka, bootstrap_servers=bootstrap.strip(), client_properties=properties,
                        overridden_by={**kafka.overridden_by, "bootstrap_servers": "-b/--bootstrap-server"})
    return config if kafka is config.kafka else replace(config, kafka=kafka)


def add_retry_timeout(parser: argparse.ArgumentParser) -> None:
    from pipeline.kafka_errors import DEFAULT_RETRY_SECONDS

    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_RETRY_SECONDS, metavar="SECONDS",
                        help="while Kafka is in a passing state (a leader election, a coordinator loading), keep "
                             "asking for this long before giving up (default %(default)g)")


def guarded(command: ToolCommand, *, reach_cluster_first: bool = True) -> Callable[[argparse.Namespace], int]:
    """The command, given its configuration, with the errors a tool reports on purpose (and Kafka's)
    printed in words.

    Every tool builds its Kafka clients from the same configuration, so it is loaded here, once, and
    whether the cluster can be reached at all is checked before a tool starts: a wrong bootstrap
    address fails within the request timeout with what answers there (pipeline.kafka_probe), rather
    than after a tool retried for its whole timeout, or as a bare KafkaError{...}.
    """
    from confluent_kafka import KafkaException

    from pipeline.kafka_errors import RetriesExhausted, error_text
    from pipeline.kafka_probe import KafkaUnreachable, check_reachable
    from tools import ToolError

    def run(args: argparse.Namespace) -> int:
        try:
            config = with_command_line_kafka(load_config(args.config), args)
            if reach_cluster_first:
                check_reachable(config)
            return command(args, config)
        except (ToolError, KafkaUnreachable, RetriesExhausted) as error:
            print(f"treewatch {args.command}: {error}", file=sys.stderr)
            return ExitCode(getattr(error, "exit_code", ExitCode.FAILURE))
        except (KafkaException, TimeoutError) as error:
            print(f"treewatch {args.command}: {error_text(error)}", file=sys.stderr)
            return ExitCode.FAILURE

    return run


# -- option values ---------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def deadline(args: argparse.Namespace) -> float:
    return time.monotonic() + args.timeout


def stage_name(config: Config, name: str) -> str:
    try:
        return config.stage(name).name
    except KeyError as error:
        raise ConfigError(error.args[0]) from None


# -- output ----------------------------------------------------------------------------------------


def utc_time(seconds: float | None) -> str:
    if seconds is None:
        return "-" * 23
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dash(value: object) -> str:
    return "-" if value is None else str(value)


def indented(text: str, prefix: str) -> str:
    """A message of several lines (an unreachable cluster's) under a line that starts with ``prefix``."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([prefix + first, *(prefix + "  " + line.strip() for line in rest)])


def print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    print()
