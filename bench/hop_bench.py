"""Per-call cost of sbsync's thread hop: ``session.get_state()`` four ways, same emulator, same run.

- ``sync-sdk``: ``azure.servicebus`` (the synchronous SDK), called directly;
- ``aio-in-loop``: ``azure.servicebus.aio`` awaited inside its own loop (no hop at all);
- ``sbsync``: this package, called from the main thread (one hop there and back per call);
- ``naive-hop``: the aio SDK on a loop thread via ``asyncio.run_coroutine_threadsafe(...).result()``.

The emulator runs in its own process so it does not compete for this process's GIL. Rounds
alternate between the variants (each holding its own session) to spread drift over all of them. Prints a table and writes
``bench/results/hop.json``. Last, the hop alone (a coroutine that returns at once) through
sbsync's portal and through ``run_coroutine_threadsafe``, without I/O noise.

    python -m bench.hop_bench [--calls 4000] [--chunk 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import azure.servicebus as sync_sdk
import azure.servicebus.aio as aio_sdk

import sbsync
from bench._emulator import Emulator
from bench.workloads._common import timed

QUEUE = "bench-sessions"
RESULTS = Path(__file__).parent / "results" / "hop.json"


async def timed_async(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await call()  # type: ignore[misc]
        samples.append(clock() - start)
    return samples


class AioInLoop:
    """The aio SDK on a loop run by this (main) thread: awaited directly, no hop."""

    def __init__(self, conn_str: str, session: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aio_sdk.ServiceBusClient.from_connection_string(conn_str)
        self.receiver = self.client.get_queue_receiver(QUEUE, session_id=session)
        self.loop.run_until_complete(self.receiver.__aenter__())

    def measure(self, n: int) -> list[float]:
        return self.loop.run_until_complete(timed_async(self.receiver.session.get_state, n))

    def close(self) -> None:
        self.loop.run_until_complete(self.receiver.close())
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


class NaiveHop:
    """The aio SDK on a loop thread, reached with run_coroutine_threadsafe (the naive facade)."""

    def __init__(self, conn_str: str, session: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="naive-hop", daemon=True)
        self.thread.start()
        self.client = self.run(self._make_client(conn_str))
        self.receiver = self.client.get_queue_receiver(QUEUE, session_id=session)
        self.run(self.receiver.__aenter__())

    @staticmethod
    async def _make_client(conn_str: str) -> aio_sdk.ServiceBusClient:
        return aio_sdk.ServiceBusClient.from_connection_string(conn_str)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def measure(self, n: int) -> list[float]:
        session = self.receiver.session
        return timed(lambda: self.run(session.get_state()), n)

    def close(self) -> None:
        self.run(self.receiver.close())
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncSdk:
    def __init__(self, conn_str: str, session: str) -> None:
        self.client = sync_sdk.ServiceBusClient.from_connection_string(conn_str)
        self.receiver = self.client.get_queue_receiver(QUEUE, session_id=session)
        self.receiver.__enter__()

    def measure(self, n: int) -> list[float]:
        return timed(self.receiver.session.get_state, n)

    def close(self) -> None:
        self.receiver.close()
        self.client.close()


class Sbsync:
    def __init__(self, conn_str: str, session: str) -> None:
        self.client = sbsync.ServiceBusClient.from_connection_string(conn_str)
        self.receiver = self.client.get_queue_receiver(QUEUE, session_id=session)
        self.receiver.__enter__()

    def measure(self, n: int) -> list[float]:
        return timed(self.receiver.session.get_state, n)

    def close(self) -> None:
        self.receiver.close()
        self.client.close()


def percentile(sorted_samples: list[float], q: float) -> float:
    index = min(len(sorted_samples) - 1, round(q * (len(sorted_samples) - 1)))
    return sorted_samples[index]


def hop_only(calls: int, chunk: int) -> dict[str, dict[str, float]]:
    """The hop alone (a coroutine that returns at once): sbsync's portal vs the naive hop.

    Per way: wall-clock p50 and p99, and the process's CPU per call (both threads' share of
    the hand-over and the two wake-ups; the floor any blocking call on the loop pays)."""
    from sbsync._portal import Portal

    async def noop() -> None:
        return None

    portal = Portal()
    loop = portal.loop
    ways = {
        "sbsync-portal": lambda: portal.call(noop),
        "naive-hop": lambda: asyncio.run_coroutine_threadsafe(noop(), loop).result(),
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    cpu = dict.fromkeys(ways, 0.0)
    try:
        for call in ways.values():
            timed(call, chunk)
        for _ in range(max(1, calls // chunk)):
            for name, call in ways.items():
                started = time.process_time()
                samples[name].extend(timed(call, chunk))
                cpu[name] += time.process_time() - started
    finally:
        portal.shutdown()
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {
            "p50_us": percentile(values, 0.5) * 1e6,
            "p99_us": percentile(values, 0.99) * 1e6,
            "cpu_us": cpu[name] / len(values) * 1e6,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="measured calls per variant")
    parser.add_argument("--chunk", type=int, default=200, help="calls per variant before switching")
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()

    with Emulator.running("--session-queue", QUEUE) as emulator:
        conn_str = emulator.conn_str
        variants = {"sync-sdk": SyncSdk, "aio-in-loop": AioInLoop, "sbsync": Sbsync, "naive-hop": NaiveHop}
        runners = {}
        try:
            with sync_sdk.ServiceBusClient.from_connection_string(conn_str) as seed:
                with seed.get_queue_sender(QUEUE) as sender:
                    sender.send_messages([sync_sdk.ServiceBusMessage("x", session_id=f"bench-{n}") for n in variants])
            # Each variant holds its own session, all open at once; measuring alternates between them
            # in chunks, so drift in machine load is shared by all.
            for name, make in variants.items():
                runners[name] = make(conn_str, f"bench-{name}")
                runners[name].measure(args.warmup)
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(max(1, args.calls // args.chunk)):
                for name, runner in runners.items():
                    samples[name].extend(runner.measure(args.chunk))
        finally:
            for runner in runners.values():
                runner.close()

    rows = {}
    for name, values in samples.items():
        values.sort()
        rows[name] = {
            "p50_ms": percentile(values, 0.50) * 1e3,
            "p99_ms": percentile(values, 0.99) * 1e3,
            "mean_ms": statistics.fmean(values) * 1e3,
            "calls": len(values),
        }
    base_sync, base_aio = rows["sync-sdk"], rows["aio-in-loop"]
    for row in rows.values():
        row["p50_vs_sync"] = row["p50_ms"] / base_sync["p50_ms"]
        row["p50_vs_aio"] = row["p50_ms"] / base_aio["p50_ms"]
        row["p50_added_us_vs_aio"] = (row["p50_ms"] - base_aio["p50_ms"]) * 1e3
        row["p99_added_us_vs_aio"] = (row["p99_ms"] - base_aio["p99_ms"]) * 1e3

    header = f"{'variant':<12} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50/sync':>9} {'p50/aio':>8} {'+p50 us vs aio':>15}"
    print(f"session.get_state(), {args.calls} calls per variant in chunks of {args.chunk}, emulator on loopback")
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<12} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['mean_ms']:>8.3f} "
            f"{r['p50_vs_sync']:>9.2f} {r['p50_vs_aio']:>8.2f} {r['p50_added_us_vs_aio']:>15.1f}"
        )
    hop = hop_only(args.calls * 5, args.chunk * 5)
    print("\nthe hop alone (no I/O):")
    for name, r in hop.items():
        print(f"{name:<14} p50 {r['p50_us']:>6.1f} us   p99 {r['p99_us']:>6.1f} us   CPU {r['cpu_us']:>6.1f} us")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "operation": "ServiceBusSession.get_state",
                "calls_per_variant": args.calls,
                "chunk": args.chunk,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "results": rows,
                "hop_only_us": hop,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
