"""``treewatch incident list|start|stop``: the guide's incidents, started and stopped in a running
``treewatch simulate --control`` (argument parsing and output only; simulator/control.py does it)."""

from __future__ import annotations

import argparse
import json
import sys

from treewatch.exit_codes import ExitCode
from treewatch.tools_cli import print_json

DEFAULT_CONTROL = "127.0.0.1:9850"
DEFAULT_SIMULATOR_URL = f"http://{DEFAULT_CONTROL}"

# Command-line option -> the incident parameter it sets (only incidents that have it accept it).
PARAMETER_OPTIONS = {
    "stage": ("--stage", str, "the stage it acts on (discover, stamp, index)"),
    "service": ("--service", str, "the service it acts on (intelligence, bridge, onextree, metadata-stamping)"),
    "error_type": ("--error-type", str, "dlq-burst: FILE_NOT_FOUND, INTELLIGENCE_SERVICE_ERROR or ENCODING_ERROR"),
    "records": ("--records", int, "dlq-burst: dead letters in the burst, one of them malformed"),
    "share": ("--share", float, "failure-rate: the share of requests that fail, e.g. 0.2"),
    "seconds_per_request": ("--seconds-per-request", float, "stage-slow: processing time per request"),
}


def control_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. {DEFAULT_CONTROL}; got {text!r}")
    return host, int(port)


def add_incident_commands(sub: argparse._SubParsersAction) -> None:
    incident = sub.add_parser(
        "incident", help="start or stop one of the guide's incidents in a running `treewatch simulate --control` "
                         "(docs/incidents.md says what each pages)")
    actions = incident.add_subparsers(dest="action", required=True)
    for action, text in (("list", "the catalogue, and the incidents active now"),
                         ("start", "start an incident"), ("stop", "stop an incident")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("--simulator", default=DEFAULT_SIMULATOR_URL, metavar="URL",
                            help=f"the simulator's control address (default {DEFAULT_SIMULATOR_URL})")
        parser.add_argument("--json", action="store_true", help="print the simulator's answer as JSON")
        if action != "list":
            parser.add_argument("name", metavar="NAME", help="an incident of the catalogue (`treewatch incident list`)")
        if action == "start":
            for dest, (option, kind, what) in PARAMETER_OPTIONS.items():
                parser.add_argument(option, dest=dest, type=kind, help=what)
        parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from simulator.control import ControlClient, ControlError

    client = ControlClient(args.simulator)
    try:
        if args.action == "list":
            answer = client.describe()
        elif args.action == "start":
            parameters = {dest: getattr(args, dest) for dest in PARAMETER_OPTIONS if getattr(args, dest) is not None}
            answer = client.start(args.name, **parameters)
        else:
            answer = client.stop(args.name)
    except ControlError as error:
        print(f"treewatch incident {args.action}: {error}", file=sys.stderr)
        return ExitCode.FAILURE
    if args.json:
        print_json(answer)
    elif args.action == "list":
        _print_list(answer)
    else:
        done = {"start": "started", "stop": "stopped"}[args.action]  # the answer's key, as it says it
        print(f"{done} {answer[done]}")
    return ExitCode.OK


def _print_list(described: dict) -> None:
    active = {entry["name"]: entry for entry in described["active"]}
    for entry in described["catalogue"]:
        state = "ACTIVE " if entry["name"] in active else "       "
        parameters = (active.get(entry["name"]) or entry)["parameters"]
        print(f"{state}{entry['name']:<18} {entry['summary']}")
        if parameters:
            print(f"{'':25}parameters: {json.dumps(parameters)}")
