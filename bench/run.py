"""sbsync's benchmark harness: ``python -m bench [--quick] [--only NAME ...]``.

Starts the emulator in its own process, runs every workload for every implementation --
``sync`` (the official ``azure.servicebus``), ``aio`` (``azure.servicebus.aio`` awaited on an
event loop driven by the main thread, no hop) and ``sbsync`` -- interleaved repetition by
repetition (the order rotates each repetition, so machine drift is shared), and prints a
table of medians (latency rows: p50 / p99) with the ratios sbsync/aio and sbsync/sync. The
same goes to bench/results/bench.json and bench.txt (and bench.png if matplotlib is
installed). Every row says what bounds it, from the CPU each process used while it ran: a
figure taken while the emulator used about a whole core measures the emulator.

Workloads (module in bench/workloads/):
  session_state   get_state / set_state latency per call                    (state.py)
  send            single sends and batches of 100, msgs/s                   (send.py)
  drain           receive + complete draining one session, msgs/s           (drain.py)
  shared_sender   1/4/16/64 caller threads on one sender, msgs/s, AMQP
                  connections and threads                                    (shared_sender.py)
  per_request     open a sender, send one message, close it; latency         (per_request.py)
  processor       session processor, 20 sessions, 2..8 workers, msgs/s      (processor.py)
  renewer         1,000 message locks kept: lateness p50/p99, threads, CPU  (renewer.py)
  memory          RSS of a fresh process with one client, 100 receivers     (memory.py)

``--quick`` shrinks every workload (about a minute; CI runs it to prove the harness works,
its numbers are not meant to be compared).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as a script (python bench/run.py): find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import (
    AIO,
    RESULTS_DIR,
    SBSYNC,
    SYNC,
    Context,
    Emulator,
    Row,
    render_table,
    write_json,
    write_png,
)

#: Workload name -> module in bench/workloads, in running order. Renewer and memory start
#: their own processes.
WORKLOADS: dict[str, str] = {
    "session_state": "state",
    "send": "send",
    "drain": "drain",
    "shared_sender": "shared_sender",
    "per_request": "per_request",
    "processor": "processor",
    "renewer": "renewer",
    "memory": "memory",
}

#: Longest a workload may run (the full renewer and processor take ~2-3 minutes).
WORKLOAD_LIMIT = 420.0

#: Column order in the table (variants some workloads add come after these).
COLUMNS = (SYNC, "sync-per-thread", "sync-1-worker", AIO, SBSYNC)


def check_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Issue 17's goals, as ratios measured in this run."""
    by_name = {row.name: row for row in rows}
    out: list[dict[str, Any]] = []

    def add(target: str, row_name: str, value: float | None, ok: bool | None) -> None:
        out.append({"target": target, "row": row_name, "value": value, "met": ok})

    for name in ("session_state.get_state", "session_state.set_state"):
        row = by_name.get(name)
        if row is not None and SYNC in row.figures and SBSYNC in row.figures:
            added = (row.figures[SBSYNC].median - row.figures[SYNC].median) * 1e3
            add("p50 within 100 us of sync (sbsync p50 - sync p50, us)", name, round(added, 1), added <= 100)
    for name, floor in (("drain.session", 1.0), ("send.single", 0.9), ("send.batch", 0.9)):
        row = by_name.get(name)
        if row is not None:
            ratio = row.ratio(SYNC)
            add(f"throughput >= {floor}x sync (sbsync/sync)", name, ratio, None if ratio is None else ratio >= floor)
    row = by_name.get("shared_sender.threads_16")
    if row is not None:
        ratio = row.ratio(SYNC)
        add("16 threads on one sender >= 3x sync with the documented lock", row.name,
            ratio, None if ratio is None else ratio >= 3.0)
    for name in ("send.single", "send.batch", "drain.session", "session_state.get_state", "session_state.set_state"):
        row = by_name.get(name)
        if row is None or AIO not in row.figures or SBSYNC not in row.figures:
            continue
        ours, aio = row.figures[SBSYNC].cpu_us_per_op(row.unit), row.figures[AIO].cpu_us_per_op(row.unit)
        ratio = None if not ours or not aio else round(ours / aio, 3)
        add("client CPU per op <= 1.2x aio's (sbsync/aio)", name, ratio, None if ratio is None else ratio <= 1.2)
    return out


def render_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["Targets (ratios from this run):"]
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = t["value"]
        shown = "-" if value is None else f"{value:.3g}"
        lines.append(f"  {verdict:<7} {t['row']:<28} {shown:>8}  {t['target']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small runs, about a minute")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per workload (3 quick, 7 full)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="run only these workloads")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="directory for bench.json/txt/png")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    chosen: dict[str, ModuleType] = {
        name: importlib.import_module(f"bench.workloads.{WORKLOADS[name]}")
        for name in (args.only or WORKLOADS)
    }

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    # The SDKs log expected failures (no session free to accept, links closed under them)
    # with tracebacks, and sbsync's renewer a warning per lost lock; the figures (which
    # count losses) are the output here.
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    logging.getLogger("sbsync").setLevel(logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    started = time.perf_counter()
    emulator_args: list[str] = []
    for module in chosen.values():
        emulator_args += getattr(module, "EMULATOR_ARGS", ())
    rows: list[Row] = []
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    # A stuck call (a reply that never comes) must not hang CI: `kill -USR1 PID` prints every
    # thread's stack, and a workload running past WORKLOAD_LIMIT prints them and exits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with Emulator.running(*emulator_args) as emulator:
        log(f"emulator pid {emulator.pid} on port {emulator.port}; bench pid {os.getpid()}")
        ctx = Context(emulator, quick=args.quick, reps=reps, log=log)
        for name, module in chosen.items():
            begun = time.perf_counter()
            faulthandler.dump_traceback_later(WORKLOAD_LIMIT, exit=True)
            try:
                rows += module.run(ctx)
            except Exception as exc:  # one broken workload must not lose the others' figures
                errors[name] = repr(exc)
                log(f"{name} FAILED: {exc!r}")
                if os.environ.get("BENCH_RAISE"):
                    raise
            finally:
                faulthandler.cancel_dump_traceback_later()
            timings[name] = round(time.perf_counter() - begun, 1)
            log(f"{name} done in {timings[name]:.1f} s")
    elapsed = time.perf_counter() - started
    targets = check_targets(rows)
    text = "\n\n".join(
        [
            f"python -m bench{' --quick' if args.quick else ''}: {reps} interleaved repetitions, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {elapsed:.0f} s",
            render_table(rows, [c for c in COLUMNS if any(c in r.figures for r in rows)]),
            render_targets(targets),
        ]
        + ([f"FAILED workloads: {errors}"] if errors else [])
    )
    print(text)
    document = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "mode": "quick" if args.quick else "full",
        "reps": reps,
        "elapsed_s": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "setup": "emulator in its own process (python -m sbsync.emulator) on loopback; "
        "sync = azure.servicebus, aio = azure.servicebus.aio awaited on a loop run by the "
        "main thread, sbsync = this package; 1 KB message bodies; implementations interleaved "
        "repetition by repetition with the order rotated each time",
        "workloads": {
            name: {
                "implementations": list(module.IMPLS),
                "rows": [r.name for r in rows if r.workload == name],
                "seconds": timings.get(name),
                **({"error": errors[name]} if name in errors else {}),
            }
            for name, module in chosen.items()
        },
        "rows": {row.name: row.as_json() for row in rows},
        "targets": targets,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "bench.json", document)
    (args.output / "bench.txt").write_text(text + "\n")
    if write_png(args.output / "bench.png", rows, COLUMNS):
        log(f"wrote {args.output / 'bench.png'}")
    log(f"wrote {args.output / 'bench.json'} and bench.txt in {elapsed:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
