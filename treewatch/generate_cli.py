"""``treewatch generate``: every file a deployment needs, from its configuration file's ``monitoring:``
section (argument parsing and output only; alerts/deployment.py builds them). Without a file and an
output folder it rewrites the repository's generated rules, Alertmanager files and dashboards
(``make generate``)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.config import load_config
from treewatch.exit_codes import ExitCode
from treewatch.tools_cli import print_json

_LABEL = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_./]*)=([-A-Za-z0-9_.]*)$")
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def add_generate_command(sub: argparse._SubParsersAction) -> None:
    generate = sub.add_parser(
        "generate", help="write a deployment's alert rules, Alertmanager config, dashboards, Prometheus scrape "
                         "config, promtool tests and Kubernetes objects from its monitoring section",
        description=__doc__)
    generate.add_argument("--config", help="treewatch.yaml whose monitoring section to use (default: the defaults)")
    generate.add_argument("--out", type=Path, metavar="DIR",
                          help="output folder (default, without --config only: the repository's generated files)")
    generate.add_argument("--exporter-target", metavar="HOST:PORT",
                          help="where Prometheus scrapes the exporter (default: from exporter.listen_address, "
                               "localhost for a wildcard address)")
    generate.add_argument("--cluster", help="the cluster label of the exporter's series (default: the env)")
    generate.add_argument("--namespace", type=_dns_label, default="monitoring",
                          help="namespace of the Kubernetes objects (default %(default)s)")
    generate.add_argument("--kubernetes-label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                          help="a label of every Kubernetes object, e.g. release=kube-prometheus-stack for its "
                               "rule and ServiceMonitor selectors (repeatable)")
    generate.add_argument("--json", action="store_true", help="print the files written (and alerts no test fires) "
                                                              "as one JSON document")
    generate.set_defaults(run=_generate)


def _label(text: str) -> tuple[str, str]:
    match = _LABEL.fullmatch(text)
    if match is None or len(match.group(2)) > 63:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Kubernetes label key and value, got {text!r}")
    return match.group(1), match.group(2)


def _dns_label(text: str) -> str:
    if not _DNS_1123_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a DNS-1123 label (lower case letters, digits and '-'), "
                                         f"got {text!r}")
    return text


def _generate(args: argparse.Namespace) -> int:
    from alerts.deployment import Deployment, deployment_files, repository_files, write
    from alerts.rule_tests import untested_alerts

    if args.out is None:
        if args.config is not None:
            print("treewatch generate: --config writes a deployment's files: give --out DIR (the repository's "
                  "generated files are the defaults')", file=sys.stderr)
            return ExitCode.USAGE
        return _written(args, write(repository_files(), Path("/")))
    config = load_config(args.config)
    deployment = Deployment(config, origin=args.config, exporter_target=args.exporter_target, cluster=args.cluster,
                            namespace=args.namespace, kubernetes_labels=dict(args.kubernetes_label))
    written = write(deployment_files(deployment), args.out)
    untested = untested_alerts(config.monitoring)
    if untested:
        print(f"WARNING: no generated promtool test makes {', '.join(untested)} fire with these values; "
              f"review them by hand", file=sys.stderr)
    return _written(args, written, untested)


def _written(args: argparse.Namespace, paths: Iterable[Path], untested: Sequence[str] = ()) -> ExitCode:
    if args.json:
        print_json({"written": [str(path) for path in paths], "untested_alerts": list(untested)})
    else:
        for path in paths:
            print(path)
    return ExitCode.OK
