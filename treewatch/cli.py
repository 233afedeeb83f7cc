"""The ``treewatch`` command: argument parsing and output only; the work lives below."""

# (This docstring is `treewatch --help`'s description.) Each command group has its module beside this
# one, ``<group>_cli.py``, which registers its subcommands and prints their results; this one assembles them.

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pipeline.config import ConfigError, load_config
from treewatch.bench_cli import add_bench_commands
from treewatch.demo_cli import add_demo_command
from treewatch.dlq_cli import add_dlq_commands
from treewatch.generate_cli import add_generate_command
from treewatch.groups_cli import add_groups_commands
from treewatch.incident_cli import add_incident_commands
from treewatch.rules_cli import add_rules_commands
from treewatch.simulate_cli import add_simulate_command
from treewatch.status_cli import add_status_command
from treewatch.tools_cli import add_config_option
from treewatch.trace_cli import add_trace_command


def _exporter(args: argparse.Namespace) -> int:
    from exporter.app import run_exporter

    config = load_config(args.config)
    run_exporter(config)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from exporter.app import check_startable

    config = load_config(args.config)
    check_startable(config)  # what only trying tells: certificates, keys, passwords, librdkafka's view
    print(f"{config.source}: ok ({len(config.stages)} stages, {len(config.services)} services)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treewatch", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    exporter = sub.add_parser("exporter", help="serve Prometheus metrics for the pipeline")
    add_config_option(exporter)
    exporter.set_defaults(run=_exporter)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(run=_check_config)

    add_simulate_command(sub)
    add_demo_command(sub)
    add_incident_commands(sub)
    add_generate_command(sub)
    # The operator tools.
    add_status_command(sub)
    add_trace_command(sub)
    add_dlq_commands(sub)
    add_groups_commands(sub)
    add_bench_commands(sub)
    add_rules_commands(sub)
    return parser


# What a shell reports for a writer whose reader went away (128 + SIGPIPE), as for `yes` in `yes | head -1`.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> None:
    """The command line; its exit status is the command's.

    Output cut short by its reader (``treewatch ... | head -1``) ends the command quietly with
    EXIT_BROKEN_PIPE, as other unix tools end: Python turns SIGPIPE into BrokenPipeError, which is
    caught here, and stdout is pointed at /dev/null so the interpreter's last flush at exit has
    nowhere to fail (the recipe of the Python docs, signal module, "Note on SIGPIPE").
    """
    try:
        try:
            code = _run(argv)
        finally:
            # Output still buffered is written now, inside this handler, not at interpreter exit.
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    # --log-level is accepted before or after the subcommand: people type it where they think of it.
    log_level = argparse.ArgumentParser(prog="treewatch", add_help=False)
    log_level.add_argument("--log-level", type=str.upper, default="INFO",
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    known, rest = log_level.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.log_level = known.log_level
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"treewatch: {error}", file=sys.stderr)
        return 2
