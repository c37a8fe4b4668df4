"""Lock renewal benchmark: how late renewals run, and what keeping locks costs.

Keeps N message locks (default 1,000; 5 s locks) alive through sbsync's AutoLockRenewer
against the emulator (run as a separate process, so its CPU is not counted), first with an
idle main thread, then with a CPU-bound pure-Python main thread, and reports:

- lateness: when each renewal was submitted vs when it was scheduled (p50/p99/max, ms),
- round trip: submitted -> new expiry known (p50/p99, ms),
- losses (callbacks) and whether every message could still be completed,
- process CPU while keeping the locks, and over an idle period with no locks (renewer and
  loop thread only).

    python -m bench.renew_bench [--quick] [--locks N] [--lock-duration S] [--out PATH]

Writes JSON to bench/results/renew.json (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from bench._emulator import Emulator
from sbsync import AutoLockRenewer, ServiceBusClient, ServiceBusMessage

QUEUE = "renew-bench"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2) if values else float("nan"),
    }


def burn_cpu(seconds: float) -> None:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for i in range(10_000):
            n += i * i % 7


def keep_alive_phase(renewer: AutoLockRenewer, seconds: float, cpu_bound: bool) -> dict[str, Any]:
    renewer.lateness.clear()
    renewer.round_trips.clear()
    cpu0, wall0 = time.process_time(), time.monotonic()
    if cpu_bound:
        burn_cpu(seconds)
    else:
        time.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    lateness, round_trips = list(renewer.lateness), list(renewer.round_trips)
    result: dict[str, Any] = {
        "seconds": round(wall, 2),
        "renewals": len(round_trips),
        "lateness": summary_ms(lateness),
        "round_trip": summary_ms(round_trips),
        "threads": threading.active_count(),
    }
    if not cpu_bound:
        result["process_cpu_s"] = round(cpu, 3)
        result["cpu_ms_per_renewal"] = round(cpu / max(1, len(round_trips)) * 1000, 3)
    return result


def run(locks: int, lock_duration: float, rounds: float, idle_seconds: float) -> dict[str, Any]:
    with Emulator.running("--queue", QUEUE, "--lock-duration", str(lock_duration)) as emulator:
        conn_str = emulator.conn_str
        losses: list[Any] = []
        with ServiceBusClient.from_connection_string(conn_str) as client:
            with client.get_queue_sender(QUEUE) as sender:
                for start in range(0, locks, 100):
                    sender.send_messages([ServiceBusMessage(str(i)) for i in range(start, min(locks, start + 100))])
            renewer = AutoLockRenewer(on_lock_renew_failure=lambda r, e: losses.append(e))
            with client.get_queue_receiver(QUEUE, auto_lock_renewer=renewer, prefetch_count=200) as receiver:
                threads_before = threading.active_count()
                messages: list[Any] = []
                while len(messages) < locks:
                    batch = receiver.receive_messages(200, max_wait_time=5)
                    if not batch:
                        raise RuntimeError(f"only {len(messages)} of {locks} messages arrived")
                    messages += batch
                idle_phase = keep_alive_phase(renewer, rounds * lock_duration, cpu_bound=False)
                cpu_phase = keep_alive_phase(renewer, rounds * lock_duration, cpu_bound=True)
                completed = lost_on_complete = 0
                for message in messages:
                    try:
                        receiver.complete_message(message)
                        completed += 1
                    except Exception:
                        lost_on_complete += 1
                time.sleep(lock_duration)  # let the renewer see the settlements and go quiet
                cpu0 = time.process_time()
                time.sleep(idle_seconds)
                idle_cpu = time.process_time() - cpu0
                registered_after = len(renewer)
            renewer.close()
    return {
        "locks": locks,
        "lock_duration_s": lock_duration,
        "threads_before_receive": threads_before,
        "idle_main_thread": idle_phase,
        "cpu_bound_main_thread": cpu_phase,
        "losses": len(losses),
        "completed": completed,
        "lost_on_complete": lost_on_complete,
        "registered_after_settling": registered_after,
        "idle": {
            "seconds": idle_seconds,
            "process_cpu_s": round(idle_cpu, 4),
            "cpu_percent": round(idle_cpu / idle_seconds * 100, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 locks, 2 lock durations per phase, 5 s idle")
    parser.add_argument("--locks", type=int, default=None)
    parser.add_argument("--lock-duration", type=float, default=5.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "renew.json"))
    args = parser.parse_args()
    locks = args.locks or (200 if args.quick else 1000)
    rounds, idle = (2.0, 5.0) if args.quick else (4.0, 10.0)
    result = {
        "benchmark": "renew",
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **run(locks, args.lock_duration, rounds, idle),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
