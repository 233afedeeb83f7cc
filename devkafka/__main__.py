"""``python -m devkafka fetch`` resolves the jars; ``python -m devkafka run`` serves a broker
in the foreground until interrupted (for poking at the exporter by hand)."""

from __future__ import annotations

import argparse
import signal
import threading

from devkafka import KafkaCluster, fetch_jars


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devkafka")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the pinned Kafka jars from Maven Central")
    run = sub.add_parser("run", help="run a local KRaft cluster until interrupted")
    run.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()

    if args.command == "fetch":
        print(fetch_jars())
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with KafkaCluster(nodes=args.nodes) as kafka:
        print(f"bootstrap.servers={kafka.bootstrap_servers}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
