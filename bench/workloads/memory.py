"""Memory: RSS of a fresh process holding one client and N open receivers (N = 100).

Each implementation runs in its own new process (``python -m bench.workloads.memory
--child IMPL CONN_STR N``), which reports its RSS after imports, and after opening one client
and N receivers of one queue (links attached; opened 16 at a time: threads for sync and
sbsync, ``asyncio.gather`` for aio), with its thread and AMQP connection counts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._harness import (
    AIO,
    REPO,
    SBSYNC,
    SYNC,
    Context,
    Figure,
    Row,
    established_connections,
    rss_bytes,
)

IMPLS = (SYNC, AIO, SBSYNC)
QUEUE = "bench-memory"
EMULATOR_ARGS = ("--queue", QUEUE)
PARALLEL = 16
CHILD_TIMEOUT = 240.0


def _port(conn_str: str) -> int:
    return int(conn_str.split(";", 1)[0].rstrip("/").rsplit(":", 1)[1])


def _measure(base: int, conn_str: str) -> dict[str, Any]:
    gc.collect()
    return {
        "rss_base_mib": round(base / 2**20, 1),
        "rss_mib": round(rss_bytes(os.getpid()) / 2**20, 1),
        "threads": threading.active_count(),
        "amqp_connections": established_connections(_port(conn_str)),
    }


def _blocking(sdk: Any, conn_str: str, count: int, base: int) -> dict[str, Any]:
    client = sdk.ServiceBusClient.from_connection_string(conn_str)
    receivers = [client.get_queue_receiver(QUEUE) for _ in range(count)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda r: r.__enter__(), receivers))
    result = _measure(base, conn_str)  # the pool's threads have ended
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda r: r.close(), receivers))
    client.close()
    return result


async def _aio(conn_str: str, count: int, base: int) -> dict[str, Any]:
    import azure.servicebus.aio as aio_sdk

    client = aio_sdk.ServiceBusClient.from_connection_string(conn_str)
    receivers = [client.get_queue_receiver(QUEUE) for _ in range(count)]
    gate = asyncio.Semaphore(PARALLEL)

    async def bounded(coro: Any) -> Any:
        async with gate:
            return await coro

    await asyncio.gather(*(bounded(r.__aenter__()) for r in receivers))
    result = _measure(base, conn_str)
    await asyncio.gather(*(bounded(r.close()) for r in receivers))
    await client.close()
    return result


def child(impl: str, conn_str: str, count: int) -> dict[str, Any]:
    """In the fresh process: import the implementation, then open a client and receivers."""
    if impl == SYNC:
        import azure.servicebus as sdk

        gc.collect()
        return _blocking(sdk, conn_str, count, rss_bytes(os.getpid()))
    if impl == SBSYNC:
        import sbsync as sdk  # type: ignore[no-redef]

        gc.collect()
        return _blocking(sdk, conn_str, count, rss_bytes(os.getpid()))
    import azure.servicebus.aio  # noqa: F401  (counted in the base RSS)

    gc.collect()
    return asyncio.run(_aio(conn_str, count, rss_bytes(os.getpid())))


def run(ctx: Context) -> list[Row]:
    count = ctx.pick(10, 100)
    ctx.log(f"memory: a fresh process per implementation, one client + {count} receivers")
    out: dict[str, dict[str, Any]] = {}
    for impl in IMPLS:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.workloads.memory", "--child", impl, ctx.emulator.conn_str, str(count)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            cwd=REPO,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {impl} failed: {proc.stderr[-2000:]}")
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = {
        impl: Figure(
            median=r["rss_mib"],
            threads=r["threads"],
            connections=r["amqp_connections"],
            extra={"rss_base_mib": r["rss_base_mib"], "receivers": count},
        )
        for impl, r in out.items()
    }
    summary = ", ".join(
        f"{impl} base {r['rss_base_mib']} MiB/{r['threads']} thr/{r['amqp_connections']} conns"
        for impl, r in out.items()
    )
    return [
        Row(
            "memory",
            f"rss_{count}_receivers",
            "MiB",
            higher_is_better=False,
            figures=figures,
            note=summary,
            bound="one sample per implementation (fresh process each)",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memory workload child process")
    parser.add_argument("--child", required=True, choices=IMPLS)
    parser.add_argument("conn_str")
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(child(args.child, args.conn_str, args.count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
