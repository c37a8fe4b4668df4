"""Throughput and memory of the sbsync emulator on this machine.

    python -m bench.emulator_bench [--quick] [--runs N] [--no-tls] [--output FILE]

The emulator runs in its own process (``python -m sbsync.emulator``), so its CPU and RSS are
its own; the load driver is the official sync SDK (azure-servicebus) in this process, one
client, links opened before the clock starts. Each figure is the median of several runs,
each on a fresh queue. Message bodies are 1 KB.

Every scenario but the two-driver one runs again over TLS (rows ``... tls``): the same SDK
with TLS to the emulator's port, verifying its certificate (``connection_verify``), as
production clients connect. ``--no-tls`` skips them.

Scenarios:
  single send     one ``send_messages(message)`` call per message
  batch send      ``send_messages(list of 100)``
  batch send, 2 drivers  the same from two SDK processes at once (one SDK client is the
                  bottleneck: this shows the emulator's own headroom)
  receive+complete  peek-lock ``receive_messages(100)`` then ``complete_message`` each
  session receive+complete  the same on one session of a session-enabled queue
  memory          emulator RSS idle and with 100,000 queued messages (10,000 in --quick)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from azure.servicebus import ServiceBusClient, ServiceBusMessage, TransportType

from bench._emulator import REPO, Emulator, cpu_seconds, rss_bytes
from sbsync.emulator._tls import development_pair

DEFAULT_OUTPUT = REPO / "bench" / "results" / "emulator.json"
BODY = b"x" * 1024
BATCH = 100
TARGETS = {
    "batch_send": 5000.0,
    "batch_send_2_drivers": 5000.0,
    "receive_complete": 2000.0,
}


@dataclass(frozen=True)
class Sizes:
    """Messages per run for each scenario, and for the memory measurement."""

    single: int
    batch: int
    receive: int
    session: int
    memory: int


FULL = Sizes(single=2000, batch=20000, receive=10000, session=10000, memory=100_000)
QUICK = Sizes(single=200, batch=3000, receive=2000, session=2000, memory=10_000)


class Clock:
    """Times a region, and the CPU the emulator and this driver used within it."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.wall = self.cpu = self.driver_cpu = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        cpu, driver, wall = cpu_seconds(self._pid), time.process_time(), time.perf_counter()
        yield
        self.wall = time.perf_counter() - wall
        self.cpu = cpu_seconds(self._pid) - cpu
        self.driver_cpu = time.process_time() - driver


def _messages(count: int, session_id: str | None = None) -> list[ServiceBusMessage]:
    return [ServiceBusMessage(BODY, session_id=session_id) for _ in range(count)]


def fill(client: ServiceBusClient, queue: str, count: int, session_id: str | None = None) -> None:
    with client.get_queue_sender(queue) as sender:
        for start in range(0, count, BATCH):
            sender.send_messages(_messages(min(BATCH, count - start), session_id))


def single_send(client: ServiceBusClient, clock: Clock, queue: str, count: int) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(BODY))  # warm the link
        with clock.timing():
            for _ in range(count):
                sender.send_messages(ServiceBusMessage(BODY))


def batch_send(client: ServiceBusClient, clock: Clock, queue: str, count: int) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(BODY))
        with clock.timing():
            for start in range(0, count, BATCH):
                sender.send_messages(_messages(min(BATCH, count - start)))


def _batch_sender_process(
    conn_str: str, queue: str, count: int, ready: Any, go: Any, out: Any
) -> None:
    """One driver process of ``batch_send_2_drivers``: sends when told, reports its times."""
    with ServiceBusClient.from_connection_string(conn_str) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage(BODY))
            ready.set()
            go.wait()
            cpu, started = time.process_time(), time.perf_counter()
            for start in range(0, count, BATCH):
                sender.send_messages(_messages(min(BATCH, count - start)))
            out.put((started, time.perf_counter(), time.process_time() - cpu))


def batch_send_2_drivers(conn_str: str, clock: Clock, queue: str, count: int) -> None:
    """``batch_send`` from two SDK processes at once: one client alone is the bottleneck."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    workers = [
        ctx.Process(
            target=_batch_sender_process, args=(conn_str, queue, count // 2, ready, go, out)
        )
        for ready in readies
    ]
    for worker in workers:
        worker.start()
    try:
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError("a driver process did not get ready")
        with clock.timing():
            go.set()
            reports = [out.get(timeout=120) for _ in workers]
        # perf_counter is the system-wide monotonic clock, comparable across processes.
        clock.wall = max(end for _, end, _ in reports) - min(start for start, _, _ in reports)
        clock.driver_cpu = sum(cpu for _, _, cpu in reports)
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()


def _drain(receiver: Any, clock: Clock, count: int) -> None:
    got = 0
    with clock.timing():
        while got < count:
            msgs = receiver.receive_messages(max_message_count=BATCH, max_wait_time=10)
            if not msgs:
                raise RuntimeError(f"only {got} of {count} messages arrived")
            for msg in msgs:
                receiver.complete_message(msg)
            got += len(msgs)


def receive_complete(client: ServiceBusClient, clock: Clock, queue: str, count: int) -> None:
    fill(client, queue, count)
    with client.get_queue_receiver(queue) as receiver:
        _drain(receiver, clock, count)


def session_receive_complete(
    client: ServiceBusClient, clock: Clock, queue: str, count: int
) -> None:
    fill(client, queue, count, session_id="bench")
    with client.get_queue_receiver(queue, session_id="bench") as receiver:
        _drain(receiver, clock, count)


Scenario = Callable[[ServiceBusClient, Clock, str, int], None]


def _tls_client(conn_str: str, port: int, ca_file: str) -> ServiceBusClient:
    """The SDK over TLS to the emulator's port, trusting its development CA."""
    settings = [p for p in conn_str.split(";")
                if p and not p.startswith(("Endpoint=", "UseDevelopmentEmulator="))]
    return ServiceBusClient.from_connection_string(
        ";".join(["Endpoint=sb://localhost/", *settings]),
        transport_type=TransportType.Amqp,  # a custom endpoint alone means websockets
        custom_endpoint_address=f"sb://localhost:{port}",
        connection_verify=ca_file,
    )


def throughput(sizes: Sizes, runs: int, log: Callable[[str], None],
               tls: bool = False) -> dict[str, Any]:
    session_queues = [f"bench-sessions-{i}" for i in range(runs)]
    args = ["--auto-create"]
    for name in session_queues:
        args += ["--session-queue", name]
    ca_file = ""
    if tls:
        ca_file, cert, key = development_pair()
        args += ["--tls-cert", cert, "--tls-key", key]
    scenarios: list[tuple[str, int, Scenario, Callable[[int], str]]] = [
        ("single_send", sizes.single, single_send, lambda i: f"single-{i}"),
        ("batch_send", sizes.batch, batch_send, lambda i: f"batch-{i}"),
        ("receive_complete", sizes.receive, receive_complete, lambda i: f"receive-{i}"),
        (
            "session_receive_complete",
            sizes.session,
            session_receive_complete,
            lambda i: session_queues[i],
        ),
    ]
    results: dict[str, Any] = {}
    with Emulator.running(*args) as emulator:
        conn_str = emulator.conn_str
        clock = Clock(emulator.pid)
        if not tls:
            scenarios.insert(
                2,
                (
                    "batch_send_2_drivers",
                    sizes.batch,
                    lambda _, clock, queue, count: batch_send_2_drivers(
                        conn_str, clock, queue, count),
                    lambda i: f"batch2-{i}",
                ),
            )
        client = _tls_client(conn_str, emulator.port, ca_file) if tls else \
            ServiceBusClient.from_connection_string(conn_str)
        with client:
            for name, count, scenario, queue_of in scenarios:
                if tls:
                    name += " tls"
                log(f"{name}: {runs} runs of {count} messages ...")
                rates, emulator_cpu, driver_cpu, emulator_us = [], [], [], []
                for i in range(runs):
                    scenario(client, clock, queue_of(i), count)
                    rates.append(count / clock.wall)
                    emulator_cpu.append(clock.cpu / clock.wall)
                    driver_cpu.append(clock.driver_cpu / clock.wall)
                    emulator_us.append(clock.cpu / count * 1e6)
                results[name] = {
                    "messages_per_run": count,
                    "msgs_per_s": round(statistics.median(rates), 1),
                    "runs": [round(r, 1) for r in rates],
                    # Shares of one core used while the driver ran flat out: which side is
                    # the bottleneck (the machine has two cores, shared).
                    "emulator_cpu_share": round(statistics.median(emulator_cpu), 2),
                    "driver_cpu_share": round(statistics.median(driver_cpu), 2),
                    # Emulator CPU per message: its own cost, whatever the driver manages.
                    "emulator_cpu_us_per_msg": round(statistics.median(emulator_us), 1),
                }
    return results


def memory(count: int, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"memory: queueing {count} messages of 1 KB ...")
    with Emulator.running("--queue", "memory") as emulator:
        conn_str = emulator.conn_str
        time.sleep(0.5)
        idle = rss_bytes(emulator.pid)
        with ServiceBusClient.from_connection_string(conn_str) as client:
            started = time.perf_counter()
            fill(client, "memory", count)
            fill_rate = count / (time.perf_counter() - started)
            with client.get_queue_receiver("memory") as receiver:
                # The last message is there: nothing was lost on the way in.
                peeked = receiver.peek_messages(max_message_count=1, sequence_number=count)
                if len(peeked) != 1:
                    raise RuntimeError("the queue does not hold every message")
        loaded = rss_bytes(emulator.pid)
    return {
        "messages": count,
        "body_bytes": len(BODY),
        "rss_idle_mib": round(idle / 2**20, 1),
        "rss_loaded_mib": round(loaded / 2**20, 1),
        "bytes_per_message": round((loaded - idle) / count),
        "fill_msgs_per_s": round(fill_rate, 1),
    }


def render(results: dict[str, Any], mem: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<30}{'msgs/s (median)':>16}{'msgs/run':>10}{'target':>12}"
        f"{'emu CPU':>9}{'SDK CPU':>9}{'emu us/msg':>12}  runs"
    ]
    for name, row in results.items():
        target = TARGETS.get(name)
        verdict = (
            ""
            if target is None
            else f"{target:.0f} {'ok' if row['msgs_per_s'] >= target else 'MISS'}"
        )
        runs = ", ".join(f"{r:.0f}" for r in row["runs"])
        lines.append(
            f"{name:<30}{row['msgs_per_s']:>16.0f}{row['messages_per_run']:>10}{verdict:>12}"
            f"{row['emulator_cpu_share']:>9.0%}{row['driver_cpu_share']:>9.0%}"
            f"{row['emulator_cpu_us_per_msg']:>12.0f}  {runs}"
        )
    lines.append(
        f"memory: {mem['messages']} x 1 KB queued -> emulator RSS {mem['rss_loaded_mib']} MiB "
        f"(idle {mem['rss_idle_mib']} MiB, {mem['bytes_per_message']} B/message)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emulator_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 30 s)")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (5; 3 quick)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS rows")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or (3 if args.quick else 5)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = throughput(sizes, runs, log)
    if not args.no_tls:
        results.update(throughput(sizes, runs, log, tls=True))
    mem = memory(sizes.memory, log)
    elapsed = time.perf_counter() - started
    print(render(results, mem))
    document = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.emulator_bench" + (" --quick" if args.quick else "")
        + (" --no-tls" if args.no_tls else ""),
        "mode": "quick" if args.quick else "full",
        "runs_per_scenario": runs,
        "elapsed_s": round(elapsed, 1),
        "driver": "sync azure-servicebus SDK in the bench process, one client; "
        "emulator in its own process (python -m sbsync.emulator)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "throughput": results,
        "memory": mem,
        "targets_msgs_per_s": TARGETS,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {args.output} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
