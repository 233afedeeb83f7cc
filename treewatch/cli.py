"""The ``treewatch`` command: argument parsing and output only; the work lives below."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import ConfigError, load_config


def _exporter(args: argparse.Namespace) -> int:
    from exporter.app import run_exporter

    config = load_config(args.config)
    run_exporter(config)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{config.source}: ok ({len(config.stages)} stages, {len(config.services)} services)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treewatch", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    exporter = sub.add_parser("exporter", help="serve Prometheus metrics for the pipeline")
    exporter.add_argument("--config", help="treewatch.yaml (default: the guide's pipeline on localhost)")
    exporter.set_defaults(run=_exporter)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(run=_check_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(args.run(args))
    except ConfigError as error:
        print(f"treewatch: {error}", file=sys.stderr)
        sys.exit(2)
