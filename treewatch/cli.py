"""The ``treewatch`` command: argument parsing and output only; the work lives below.

Each command group has its module beside this one, ``<group>_cli.py``, which registers its subcommands
and prints their results; this one assembles them, writes ``treewatch --help`` for users (SUMMARY,
the commands grouped by what they are for, the exit codes, where the configuration comes from) and
sets up logging: quiet for the operator tools, whose output is their result, unless ``-v``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import textwrap

from pipeline.config import ConfigError, load_config
from treewatch.bench_cli import add_bench_commands
from treewatch.demo_cli import add_demo_command
from treewatch.dlq_cli import add_dlq_commands
from treewatch.exit_codes import MEANINGS as EXIT_CODE_MEANINGS
from treewatch.exit_codes import ExitCode
from treewatch.generate_cli import add_generate_command
from treewatch.groups_cli import add_groups_commands
from treewatch.incident_cli import add_incident_commands
from treewatch.reconcile_cli import add_reconcile_command
from treewatch.replay_cli import add_replay_command
from treewatch.rules_cli import add_rules_commands
from treewatch.simulate_cli import add_simulate_command
from treewatch.status_cli import add_status_command
from treewatch.tools_cli import add_config_option, print_json
from treewatch.trace_cli import add_trace_command


def _exporter(args: argparse.Namespace) -> int:
    from exporter.app import WebFlags, run_exporter

    config = load_config(args.config)
    run_exporter(config, WebFlags(config_file=args.web_config_file, listen_address=args.web_listen_address,
                                  telemetry_path=args.web_telemetry_path))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from exporter.app import check_startable

    config = load_config(args.config)
    check_startable(config)  # what only trying tells: certificates, keys, passwords, librdkafka's view
    if args.json:
        print_json({"source": config.source, "ok": True, "stages": [s.name for s in config.stages],
                    "services": [s.name for s in config.services]})
    else:
        print(f"{config.source}: ok ({len(config.stages)} stages, {len(config.services)} services)")
    return ExitCode.OK


SUMMARY = ("treewatch watches the tree stamping pipeline: its Kafka stages (discover -> stamp -> index) with "
           "their dead letter queues, and its services' /health. It serves Prometheus metrics, writes the alert "
           "rules, Alertmanager routing and Grafana dashboards, and gives on-call the operators' guide's tools.")

# The commands in --help, by what they are for; a command not named here is listed under "more commands".
COMMAND_GROUPS = {
    "look at the pipeline": ("status", "trace", "dlq", "groups"),
    "run work through it": ("bench", "reindex", "replay", "reconcile"),
    "metrics, alerts, dashboards": ("exporter", "check-config", "generate", "rules"),
    "try it on this machine": ("simulate", "demo", "incident"),
}

CONFIGURATION_HELP = ("--config FILE names a treewatch.yaml (treewatch.example.yaml shows every field with its "
                      "default); without it, the guide's pipeline on localhost. TREEWATCH_KAFKA_BOOTSTRAP_SERVERS, "
                      "TREEWATCH_ENV and the other TREEWATCH_* variables override the file (README, Configuration).")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Commands whose log is what they show (servers, the demo): INFO by default. The others print their
# result; their log stays at WARNING unless -v.
LOGGING_COMMANDS = frozenset({"exporter", "simulate", "demo"})
# Libraries that log every request at INFO (httpx: each health probe): WARNING unless -v or --log-level.
CHATTY_LIBRARY_LOGGERS = ("httpx", "httpcore")


class _PrintVersion(argparse.Action):
    """--version: treewatch's and librdkafka's, the Kafka client whose version decides what it can do."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        import confluent_kafka

        from treewatch import __version__

        print(f"treewatch {__version__}\n"
              f"librdkafka {confluent_kafka.libversion()[0]} (confluent-kafka {version('confluent-kafka')})\n"
              f"Python {platform.python_version()}")
        parser.exit()


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more on stderr: -v info, -vv debug (before or after the command)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"log at this level instead: {', '.join(LOG_LEVELS)} (before or after the command)")


def _help_width() -> int:
    # argparse's own: the terminal's (COLUMNS when set), less a margin.
    return max(60, shutil.get_terminal_size().columns - 2)


def _listed(entries: dict[str, str], width: int, name_width: int = 0) -> str:
    """``name  text`` lines, the texts aligned and wrapped under each other."""
    indent = " " * (max(name_width, *map(len, entries)) + 4)
    return "\n".join(textwrap.fill(text, width, initial_indent=f"  {name}".ljust(len(indent)),
                                   subsequent_indent=indent) for name, text in entries.items())


def _commands_help(sub: argparse._SubParsersAction, width: int) -> str:
    helps = {action.dest: action.help or "" for action in sub._choices_actions}
    named = {name for names in COMMAND_GROUPS.values() for name in names}
    groups = {**COMMAND_GROUPS, "more commands": tuple(name for name in helps if name not in named)}
    name_width = max(map(len, helps))
    return "\n\n".join(f"{title}:\n" + _listed({name: helps[name] for name in names if name in helps}, width,
                                                 name_width)
                        for title, names in groups.items() if any(name in helps for name in names))


def _epilog(width: int) -> str:
    exit_codes = _listed({str(int(code)): text for code, text in EXIT_CODE_MEANINGS.items()}, width)
    return (f"exit codes (every command, text or --json):\n{exit_codes}\n\n"
            f"configuration:\n{textwrap.fill(CONFIGURATION_HELP, width, initial_indent='  ', subsequent_indent='  ')}"
            "\n\nRun `treewatch COMMAND --help` for a command's options.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treewatch", usage="%(prog)s [-h] [--version] [-v] [--log-level LEVEL] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(_help_width()))
    parser.add_argument("--version", action=_PrintVersion, help="print the versions of treewatch and librdkafka")
    _global_options(parser)
    # The commands are listed, grouped, in the description (_commands_help), not as argparse's one list.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS,
                                prog="treewatch")

    exporter = sub.add_parser("exporter", help="serve Prometheus metrics for the pipeline")
    add_config_option(exporter)
    # Spelt as every official Prometheus exporter spells them (exporter-toolkit's flags).
    exporter.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                          help="exporter-toolkit web config (TLS, client certificates, basic auth), instead of "
                               "the configuration's exporter.web")
    exporter.add_argument("--web.listen-address", dest="web_listen_address", metavar="HOST:PORT",
                          help="where to serve, over the configuration's exporter.listen_address")
    exporter.add_argument("--web.telemetry-path", dest="web_telemetry_path", metavar="PATH", default="/metrics",
                          help="path of the metrics (default: /metrics)")
    exporter.set_defaults(run=_exporter)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.add_argument("--json", action="store_true", help="print one JSON document (errors go to stderr, exit 2)")
    check.set_defaults(run=_check_config)

    add_simulate_command(sub)
    add_demo_command(sub)
    add_incident_commands(sub)
    add_generate_command(sub)
    # The operator tools.
    add_status_command(sub)
    add_trace_command(sub)
    add_dlq_commands(sub)
    add_replay_command(sub)
    add_reconcile_command(sub)
    add_groups_commands(sub)
    add_bench_commands(sub)
    add_rules_commands(sub)
    parser.description = f"{textwrap.fill(SUMMARY, _help_width())}\n\n{_commands_help(sub, _help_width())}"
    return parser


EXIT_BROKEN_PIPE = ExitCode.BROKEN_PIPE


def main(argv: list[str] | None = None) -> None:
    """The command line; its exit status is the command's.

    Output cut short by its reader (``treewatch ... | head -1``) ends the command quietly with
    BROKEN_PIPE, as other unix tools end: Python turns SIGPIPE into BrokenPipeError, which is
    caught here, and stdout is pointed at /dev/null so the interpreter's last flush at exit has
    nowhere to fail (the recipe of the Python docs, signal module, "Note on SIGPIPE"). Ctrl-C ends
    it with INTERRUPTED, without a traceback.
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
        sys.exit(ExitCode.BROKEN_PIPE)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # past the ^C the terminal echoed
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    # -v and --log-level are accepted before or after the subcommand: people type them where they think of it.
    global_options = argparse.ArgumentParser(prog="treewatch", add_help=False, allow_abbrev=False)
    _global_options(global_options)
    known, rest = global_options.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.verbose, args.log_level = known.verbose, _configure_logging(args.command, known.verbose, known.log_level)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"treewatch: {error}", file=sys.stderr)
        return ExitCode.USAGE


def _configure_logging(command: str, verbose: int, log_level: str | None) -> str:
    """The root logger's level (its name is returned): --log-level when given, else the command's
    default lowered one step per -v."""
    default = logging.INFO if command in LOGGING_COMMANDS else logging.WARNING
    level = logging.getLevelName(log_level) if log_level else max(logging.DEBUG, default - 10 * verbose)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose and not log_level:
        for name in CHATTY_LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return logging.getLevelName(level)
