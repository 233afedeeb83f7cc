"""``treewatch bench`` and ``treewatch reindex``: both publish a discovery request and follow it
through every stage, showing its progress on a terminal (argument parsing and output only;
tools/bench.py and tools/reindex.py do it)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from pipeline.config import Config
from treewatch.exit_codes import ExitCode
from treewatch.terminal import GREEN, RED, ProgressLine, paint
from treewatch.tools_cli import add_kafka_options, dash, guarded, positive_float, positive_int, print_json

if TYPE_CHECKING:
    from tools.request_journey import Progress


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="publish a discovery request for a project of N files, follow it through every stage "
                      "and report duration, throughput, latency and dead letters against the guide's targets",
        description="Publishes one discovery request (new correlation id) and reads each stage's completed, "
                    "failed and DLQ topic from where they ended before it, counting that correlation id's "
                    "records until every discovered file is indexed or failed. Exit 0 when the run "
                    "completed and met every target of the guide, 1 when it missed one or did not complete "
                    "within --timeout. "
                    "Against the simulator --files is how many files discovery reports; the real pipeline "
                    "discovers the files under --project-path.")
    add_kafka_options(bench)
    bench.add_argument("--files", type=positive_int, required=True, help="files in the benchmark project")
    bench.add_argument("--project-path", help="project to discover (default: /test/benchmark-<id>)")
    bench.add_argument("--timeout", type=positive_float, default=600.0, metavar="SECONDS",
                       help="give up after this long (default 600, as the guide)")
    bench.add_argument("--json", action="store_true", help="print one JSON document")
    bench.set_defaults(run=guarded(_bench))

    reindex = sub.add_parser(
        "reindex", help="re-stamp and re-index a project (discovery request with force_regenerate) and "
                        "follow it to completion",
        description="Steps 2 and 3 of the guide's reindex procedure: publishes a discovery request with "
                    "force_regenerate=true and prints the indexing progress until every discovered file is "
                    "indexed or failed (exit 0), or --timeout passes (exit 1). Step 1, clearing the project "
                    "from Qdrant and Memgraph, is NOT done: those stores are outside treewatch; clear them "
                    "first with the guide's commands if the index is corrupted.")
    add_kafka_options(reindex)
    reindex.add_argument("--project-path", required=True)
    reindex.add_argument("--project-name", required=True)
    reindex.add_argument("--timeout", type=positive_float, default=3600.0, metavar="SECONDS",
                         help="give up after this long (default 3600)")
    reindex.add_argument("--json", action="store_true", help="print one JSON document")
    reindex.set_defaults(run=guarded(_reindex))


def _progress_line(progress: Progress) -> str:
    if progress.discovered is None:
        return "discovery in progress..."
    failed = f", {progress.failed_files} failed" if progress.failed_files else ""
    return (f"indexed {progress.finished} / {progress.discovered} files ({progress.percent_indexed:.0f}%)"
            f"{failed}")


class _Progress:
    """on_progress for bench and reindex: the correlation id once on stdout (unless --json: it is in
    the document), so the operator can trace the request while it runs; the counts as a progress
    line, on a terminal only."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.announced = False
        self.line = ProgressLine()

    def __call__(self, progress: Progress) -> None:
        if not self.announced and not self.quiet:
            print(f"discovery request published, correlation id {progress.correlation_id}", flush=True)
        self.announced = True
        self.line.show(_progress_line(progress), now=progress.done)

    def done(self) -> None:
        self.line.clear()


def _not_finished(run, timeout: float) -> str:
    progress = run.progress
    if progress.discovery_failed:
        return (f"discovery of the project failed (correlation id {run.correlation_id}); see "
                f"`treewatch trace --correlation-id {run.correlation_id}`")
    return (f"timed out after {timeout:g}s: {_progress_line(progress)}, waiting on the {progress.waiting_on} "
            f"stage (correlation id {run.correlation_id}; `treewatch status` shows its consumer group's lag)")


def _bench(args: argparse.Namespace, config: Config) -> int:
    from tools.bench import run_bench

    shown = _Progress(quiet=args.json)
    try:
        result = run_bench(config, args.files, project_path=args.project_path, timeout_seconds=args.timeout,
                           on_progress=shown)
    finally:
        shown.done()
    run, progress = result.run, result.progress
    if args.json:
        print_json({
            "completed": result.completed, "targets_met": result.targets_met, "correlation_id": run.correlation_id,
            "project_name": result.project_name, "project_path": result.project_path,
            "files_requested": result.files_requested, "duration_seconds": run.elapsed_seconds,
            "files_per_second": result.files_per_second, "latency_seconds": result.latency_seconds,
            "dlq_rate": result.dlq_rate, "progress": asdict(progress),
            "targets": [asdict(t) for t in result.targets], "missing_topics": list(run.missing_topics),
        })
    else:
        print(f"=== Benchmark results ({result.project_name}, {result.project_path}) ===")
        print(f"status: {'COMPLETED' if result.completed else 'NOT COMPLETED'}")
        print(f"duration: {run.elapsed_seconds:.2f}s")
        print(f"files: {dash(progress.discovered)} discovered (requested {result.files_requested}), "
              "completed: " + ", ".join(f"{stage} {files}" for stage, files in progress.completed.items())
              + f"; {progress.failed_files} failed")
        if result.files_per_second is not None:
            print(f"throughput: {result.files_per_second:.1f} files/s")
        if result.latency_seconds:
            print("end-to-end latency per file (index-completed − request record timestamps): "
                  + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in result.latency_seconds.items()))
        rate = "" if result.dlq_rate is None else f" ({result.dlq_rate:.2%} of discovered files)"
        print(f"dead letters: {progress.dead_lettered_total}{rate}; "
              + ", ".join(f"{stage} {count}" for stage, count in progress.dead_lettered.items()))
        if progress.unreadable:
            print(f"WARNING: {progress.unreadable} record(s) of this correlation id could not be counted")
        for topic in run.missing_topics:
            print(f"note: topic {topic} does not exist, not followed")
        if result.targets:
            print("=== Performance targets (the guide's) ===")
            for t in result.targets:
                print(f"  {t.name}: {paint('PASS', GREEN) if t.passed else paint('FAIL', RED)} {t.measured} "
                      f"(target {t.target})")
    if not result.completed:
        print(f"treewatch bench: {_not_finished(run, args.timeout)}", file=sys.stderr)
        return ExitCode.FAILURE
    if progress.discovered is not None and progress.discovered != result.files_requested and not args.json:
        print(f"note: discovery found {progress.discovered} files, not the {result.files_requested} requested")
    missed = [t.name for t in result.targets if not t.passed]
    if missed:
        print(f"treewatch bench: completed, but missed {len(missed)} of the guide's {len(result.targets)} targets: "
              f"{', '.join(missed)}", file=sys.stderr)
    return ExitCode.of(result.targets_met)


def _reindex(args: argparse.Namespace, config: Config) -> int:
    from tools.reindex import NOT_CLEARED, run_reindex

    if not args.json:
        print(f"reindexing project {args.project_name} ({args.project_path})")
        print(f"note: {NOT_CLEARED}")
    shown = _Progress(quiet=args.json)
    try:
        run = run_reindex(config, args.project_path, args.project_name, timeout_seconds=args.timeout,
                          on_progress=shown)
    finally:
        shown.done()
    progress = run.progress
    if args.json:
        print_json({"completed": run.completed, "correlation_id": run.correlation_id,
                    "project_name": args.project_name, "project_path": args.project_path,
                    "duration_seconds": run.elapsed_seconds, "progress": asdict(progress),
                    "missing_topics": list(run.missing_topics), "note": NOT_CLEARED})
    if not run.completed:
        print(f"treewatch reindex: {_not_finished(run, args.timeout)}", file=sys.stderr)
        return ExitCode.FAILURE
    if not args.json:
        # The counts after settling: the progress line, on a terminal only, is gone.
        print(f"  {_progress_line(progress)}")
        print(f"reindexing complete in {run.elapsed_seconds:.1f}s")
    if progress.failed_files:
        print(f"WARNING: {progress.failed_files} file(s) failed ({progress.dead_lettered_total} dead letters); "
              "`treewatch dlq inspect --stage STAGE` shows why, for each stage of "
              + ", ".join(f"{stage} {count}" for stage, count in progress.dead_lettered.items() if count),
              file=sys.stderr if args.json else sys.stdout)
    return ExitCode.OK
