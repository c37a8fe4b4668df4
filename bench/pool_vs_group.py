"""Group commit on one link vs a pool of links: many threads sending single messages, msgs/s.

    python -m bench.pool_vs_group [--threads 4 16 64] [--total 1920] [--reps 5]

Same emulator (its own process), same run, the variants interleaved repetition by repetition
(order rotated each time), links opened before timing and kept across thread counts:

- ``sync``: the sync SDK's documented way to share: one sender under a ``threading.Lock``
  (the issue's baseline);
- ``group``: one sbsync sender, threads call ``send_messages(message)``: concurrent sends
  travel together (group commit);
- ``pool-K``: K sbsync senders (one client), thread ``i`` uses sender ``i % K`` and calls
  ``send_messages([message])`` -- a list is never grouped, so this is a plain pool of links;
- ``pool-4-grouped``: 4 sbsync senders, thread ``i`` uses ``i % 4`` with group commit on each.

Connections are this process's established TCP connections to the emulator that the variant
opened (each SDK sender has its own AMQP connection). Prints a table; writes
bench/results/pool_vs_group.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import azure.servicebus as sync_sdk

import sbsync
from bench._harness import RESULTS_DIR, Emulator, Meter, connection_inodes, interleave
from bench.workloads._common import SHORT_TTL, messages
from bench.workloads.shared_sender import run_threads

QUEUE = "bench-pool"
SYNC, GROUP = "sync", "group"


class _Variant:
    """Links opened once (first setup), used for every thread count, closed by ``close``."""

    def __init__(self, conn_str: str, port: int, total: int) -> None:
        self._conn_str, self._port, self._total = conn_str, port, total
        self._opened = False
        self.threads = 1
        self.owned_sockets: set[str] = set()

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _sender_for(self, index: int) -> Callable[[Any], None]:
        raise NotImplementedError

    def setup(self) -> None:
        if not self._opened:
            before = connection_inodes(self._port)
            self._open()
            self._opened = True
            self.owned_sockets = connection_inodes(self._port) - before

    def teardown(self) -> None:
        pass  # kept for the next thread count

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def rep(self, meter: Meter) -> dict[str, Any]:
        threads = self.threads
        each = self._total // threads
        batches = [messages(each, ttl=SHORT_TTL) for _ in range(threads)]
        sends = [self._sender_for(i) for i in range(threads)]

        def work(index: int) -> None:
            send = sends[index]
            for message in batches[index]:
                send(message)

        run_threads(meter, threads, work)
        return {"msgs_per_s": each * threads / meter.regions[""][0]}


class _SyncLocked(_Variant):
    def _open(self) -> None:
        self.client = sync_sdk.ServiceBusClient.from_connection_string(self._conn_str)
        self.sender = self.client.get_queue_sender(QUEUE)
        self.sender.__enter__()
        self.sender.send_messages(messages(1, ttl=SHORT_TTL))
        self.lock = threading.Lock()

    def _sender_for(self, index: int) -> Callable[[Any], None]:
        send, lock = self.sender.send_messages, self.lock

        def locked(message: Any) -> None:
            with lock:
                send(message)

        return locked

    def _close(self) -> None:
        try:
            self.sender.close()
        finally:
            self.client.close()


class _Sbsync(_Variant):
    """``links`` sbsync senders on one client; ``as_list`` sends one-element lists (no grouping)."""

    def __init__(self, conn_str: str, port: int, total: int, links: int, as_list: bool) -> None:
        super().__init__(conn_str, port, total)
        self._links, self._as_list = links, as_list

    def _open(self) -> None:
        self.client = sbsync.ServiceBusClient.from_connection_string(self._conn_str)
        self.senders = [self.client.get_queue_sender(QUEUE) for _ in range(self._links)]
        for sender in self.senders:
            sender.__enter__()
            sender.send_messages(messages(1, ttl=SHORT_TTL))

    def _sender_for(self, index: int) -> Callable[[Any], None]:
        send = self.senders[index % self._links].send_messages
        if not self._as_list:
            return send
        return lambda message: send([message])

    def _close(self) -> None:
        try:
            for sender in self.senders:
                sender.close()
        finally:
            self.client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool_vs_group", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--total", type=int, default=1920, help="messages per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pools", type=int, nargs="+", default=[4, 16], help="pool sizes K")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    with Emulator.running("--queue", QUEUE) as emulator:
        conn, port = emulator.conn_str, emulator.port
        variants: dict[str, _Variant] = {
            SYNC: _SyncLocked(conn, port, args.total),
            GROUP: _Sbsync(conn, port, args.total, links=1, as_list=False),
            **{f"pool-{k}": _Sbsync(conn, port, args.total, links=k, as_list=True) for k in args.pools},
            "pool-4-grouped": _Sbsync(conn, port, args.total, links=4, as_list=False),
        }
        try:
            for threads in args.threads:
                log(f"{threads} threads, {args.reps} reps x {args.total} messages")
                for variant in variants.values():
                    variant.threads = threads
                runs = interleave(dict(variants), args.reps, emulator, log)
                results[str(threads)] = {
                    name: {
                        "msgs_per_s": statistics.median(r.values["msgs_per_s"] for r in reps),
                        "runs": [round(r.values["msgs_per_s"]) for r in reps],
                        "connections": max(r.connections for r in reps),
                        "client_cpu_share": round(
                            sum(r.regions[""][2] for r in reps) / sum(r.regions[""][0] for r in reps), 2
                        ),
                    }
                    for name, reps in runs.items()
                }
        finally:
            for variant in variants.values():
                variant.close()
    names = list(next(iter(results.values())))
    lines = [f"{'threads':<9}" + "".join(f"{n:>22}" for n in names)]
    for threads, row in results.items():
        base = row[SYNC]["msgs_per_s"]
        lines.append(
            f"{threads:<9}"
            + "".join(
                f"{row[n]['msgs_per_s']:>9,.0f} {row[n]['msgs_per_s'] / base:4.2f}x {row[n]['connections']:>2}c "
                f"{row[n]['client_cpu_share']:.0%}".rjust(22)
                for n in names
            )
        )
    lines.append("cells: median msgs/s, ratio to sync (one sender under a Lock), AMQP connections, client CPU")
    print("\n".join(lines))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = Path(RESULTS_DIR) / "pool_vs_group.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
