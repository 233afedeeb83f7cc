"""``make bench`` (``python -m bench``): run every benchmark, one after the other on a broker of its
own, and write docs/benchmarks.md: each benchmark's section, then the machine they ran on.

Each benchmark module has ``measure() -> dict`` (the numbers, also printed as JSON) and
``section(results) -> str`` (its part of the page).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import confluent_kafka

from bench import exporter_bench, pipeline_bench, scale_bench, soak, trace_bench
from devkafka import kafka_version

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "benchmarks.md"
BENCHMARKS = {"exporter": exporter_bench, "scale": scale_bench, "pipeline": pipeline_bench,
              "trace": trace_bench}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = {}
    for name, module in BENCHMARKS.items():
        print(f"== {name} benchmark", flush=True)
        results[name] = module.measure()
        print(json.dumps(results[name], indent=2), flush=True)
    sections = [module.section(results[name]) for name, module in BENCHMARKS.items()]
    # The soak's section is `make soak`'s, measured separately: kept as it was.
    kept = soak.current_section(args.output)
    if kept:
        sections.append(kept + "\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page(sections, machine(), time.monotonic() - started))
    print(f"wrote {args.output}")


def page(sections: list[str], host: dict[str, str], total_seconds: float) -> str:
    lines = [
        "<!-- written by `make bench` (python -m bench); re-run it to update, do not edit -->",
        "",
        "# Benchmarks",
        "",
        *sections,
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in host.items()],
        "",
        f"`make bench` took {total_seconds:.0f} s in total. The machine was shared with other work while",
        "measuring; treat the numbers as an order of magnitude.",
        "",
    ]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": cpu,
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "Python": platform.python_version(),
        "confluent-kafka / librdkafka": f"{_version(confluent_kafka.version())} / "
                                        f"{_version(confluent_kafka.libversion())}",
        "Kafka broker": f"Apache Kafka {kafka_version()} (KRaft, 1 node, devkafka; a fresh one per benchmark)",
        "load average at the end (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _version(answer: str | tuple[str, int]) -> str:
    # confluent_kafka.version() has answered a string or a (string, number) pair across releases
    return answer[0] if isinstance(answer, tuple) else answer


if __name__ == "__main__":
    main()
