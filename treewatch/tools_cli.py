"""What every operator tool's subcommand shares (status, trace, dlq, groups, bench, reindex; one
module each, ``treewatch/<group>_cli.py``): the options they have in common, the configuration
loaded once and the cluster checked before a tool starts, errors in words, and the output helpers.
The work lives in ``tools``. Exit codes: 0 all well, 1 something unhealthy or refused, 2 bad input
(a misspelled group, an unusable saved offsets file), 141 output cut short by its reader (``| head``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pipeline.config import Config, ConfigError, load_config

# A tool's work, given its arguments and the configuration they name; returns the exit code.
ToolCommand = Callable[[argparse.Namespace, Config], int]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="treewatch.yaml (default: the guide's pipeline on localhost)")


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
            config = load_config(args.config)
            if reach_cluster_first:
                check_reachable(config)
            return command(args, config)
        except (ToolError, KafkaUnreachable, RetriesExhausted) as error:
            print(f"treewatch {args.command}: {error}", file=sys.stderr)
            return getattr(error, "exit_code", 1)
        except (KafkaException, TimeoutError) as error:
            print(f"treewatch {args.command}: {error_text(error)}", file=sys.stderr)
            return 1

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
