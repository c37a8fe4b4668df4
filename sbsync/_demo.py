"""``sbsync demo``: sessions, state checkpoints and lock renewal end to end, with a FIFO check."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage

from ._cli_args import CliError
from .client import ServiceBusClient
from .processor import SessionContext, SessionProcessor

# The embedded emulator needs python-qpid-proton (the [emulator] extra).
Emulator: Any
try:
    from .emulator import Emulator
except ImportError:
    Emulator = None

DEMO_QUEUE = "sbsync-demo"


@dataclass
class DemoResult:
    """What the demo observed; ``ok`` is False if anything was lost, duplicated or reordered."""

    sent: int
    sessions: int
    seconds: float
    received: dict[str, list[int]] = field(default_factory=dict)
    checkpoints: dict[str, int | None] = field(default_factory=dict)
    lock_renewals: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return sum(len(seqs) for seqs in self.received.values())

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        fifo = "ok" if not self.problems else f"FAILED ({len(self.problems)} problems)"
        lines = [
            f"messages   {self.processed}/{self.sent} processed in {self.seconds:.1f} s "
            f"({rate:.0f} msgs/s)",
            f"sessions   {len(self.received)}/{self.sessions}",
            f"renewals   {self.lock_renewals} lock renewals",
            f"FIFO       {fifo}: every session in order, exactly once, checkpoint = last message",
        ]
        lines.extend(f"  - {problem}" for problem in self.problems[:20])
        return "\n".join(lines)


class _Progress:
    """A progress bar on a terminal, a plain line per second elsewhere."""

    def __init__(self, total: int, out: TextIO) -> None:
        self._total = total
        self._out = out
        self._tty = out.isatty()
        self._start = time.monotonic()
        self._last = 0.0

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self._tty else 1.0):
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        text = f"{done}/{self._total} messages, {done / elapsed:.0f} msgs/s"
        if self._tty:
            width = 30
            filled = int(width * done / max(self._total, 1))
            bar = "#" * filled + "." * (width - filled)
            self._out.write(f"\r[{bar}] {text}" + ("\n" if final else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()


def _session_id(index: int) -> str:
    return f"session-{index:03d}"


def send_demo_messages(
    client: ServiceBusClient, queue: str, messages: int, sessions: int
) -> None:
    """Send ``messages`` JSON messages round-robin over ``sessions`` sessions, in batches."""
    per_session: dict[str, list[ServiceBusMessage]] = defaultdict(list)
    for n in range(messages):
        sid = _session_id(n % sessions)
        seq = len(per_session[sid])
        body = json.dumps({"session": sid, "seq": seq})
        per_session[sid].append(ServiceBusMessage(body, session_id=sid))
    with client.get_queue_sender(queue) as sender:
        for batch_source in per_session.values():
            batch = sender.create_message_batch()
            for message in batch_source:
                try:
                    batch.add_message(message)
                except ValueError:  # batch full: send it and start the next
                    sender.send_messages(batch)
                    batch = sender.create_message_batch()
                    batch.add_message(message)
            sender.send_messages(batch)


def run_demo(
    client: ServiceBusClient,
    *,
    queue: str = DEMO_QUEUE,
    messages: int = 2000,
    sessions: int = 20,
    workers: int = 8,
    out: TextIO = sys.stdout,
) -> DemoResult:
    """Send, then process with a SessionProcessor, checking order and checkpoints."""
    send_demo_messages(client, queue, messages, sessions)
    received: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    done = threading.Event()
    progress = _Progress(messages, out)

    def handler(message: ServiceBusReceivedMessage, context: SessionContext) -> None:
        payload = json.loads(str(message))
        with lock:
            received[context.session_id].append(payload["seq"])
            count = sum(len(v) for v in received.values())
        context.session.set_state(str(payload["seq"]).encode())  # the checkpoint
        progress.show(count)
        if count >= messages:
            done.set()

    processor = SessionProcessor(
        client,
        queue_name=queue,
        handler=handler,
        max_concurrent_sessions=workers,
        session_idle_timeout=1.0,
    )
    start = time.monotonic()
    with processor:
        done.wait(timeout=max(60.0, messages / 20))
    seconds = time.monotonic() - start
    progress.show(sum(len(v) for v in received.values()), final=True)

    result = DemoResult(
        sent=messages,
        sessions=sessions,
        seconds=seconds,
        received=dict(received),
        lock_renewals=processor.renewals,
    )
    _check(client, queue, messages, sessions, result)
    return result


def _check(
    client: ServiceBusClient, queue: str, messages: int, sessions: int, result: DemoResult
) -> None:
    def check_session(index: int) -> list[str]:
        sid = _session_id(index)
        expected = list(range(len(range(index, messages, sessions))))
        got = result.received.get(sid, [])
        problems = []
        if got != expected:
            problems.append(
                f"{sid}: got {len(got)} messages, expected {len(expected)} in order"
                + ("" if sorted(got) == expected else " (lost or duplicated)")
            )
        with client.get_queue_receiver(queue, session_id=sid, max_wait_time=1) as receiver:
            raw = receiver.session.get_state()
        state = int(raw) if raw else None
        result.checkpoints[sid] = state
        last = expected[-1] if expected else None
        if state != last:
            problems.append(f"{sid}: checkpoint {state}, expected {last}")
        return problems

    # One shared client, many threads: each check opens its own session receiver at once.
    with ThreadPoolExecutor(max_workers=min(sessions, 32)) as pool:
        for problems in pool.map(check_session, range(sessions)):
            result.problems.extend(problems)


@contextlib.contextmanager
def demo_client(connection_string: str | None, queue: str) -> Iterator[ServiceBusClient]:
    """A client on ``connection_string``, or on an embedded emulator with ``queue`` created."""
    if connection_string:
        with ServiceBusClient.from_connection_string(connection_string) as client:
            yield client
        return
    if Emulator is None:
        raise CliError("the embedded emulator needs python-qpid-proton: pip install 'sbsync[emulator]'")
    # Short session locks, so that the renewer has work to do even in a short demo.
    with Emulator(session_queues=[queue], lock_duration=5) as emulator:
        with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
            yield client


def main_demo(args: Any, connection_string: str | None) -> int:
    """Entry point of ``sbsync demo``; returns the exit status."""
    with demo_client(connection_string, args.queue) as client:
        result = run_demo(
            client,
            queue=args.queue,
            messages=args.messages,
            sessions=args.sessions,
            workers=args.workers,
        )
    print(result.summary())
    return 0 if result.ok else 1
