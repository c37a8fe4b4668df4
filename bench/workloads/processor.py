"""The session processor: 20 sessions (10 with --quick), a few workers, msgs/s.

Before each repetition (untimed) the sessions get ``per_session`` messages each; the
repetition runs until every message has been handled and completed.

- ``sbsync``: ``sbsync.processor.SessionProcessor(client, queue_name=..., handler=...,
  max_concurrent_sessions=W, session_idle_timeout=IDLE)``;
- ``sync`` / ``aio`` (the SDKs have no session processor): the same loop written by hand --
  W worker threads (sync: one client each, as the SDK is not thread-safe) or W tasks (aio: one
  client), each accepting ``NEXT_AVAILABLE_SESSION``, receiving one message at a time,
  completing it, and moving on after IDLE seconds without a message.

Accepting a session costs a link attach and detach (~0.5 s each in both SDKs, client-side
polling), so with few workers this measures session switching more than messaging.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import azure.servicebus as sync_sdk
import azure.servicebus.aio as aio_sdk
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

import sbsync
from bench._harness import (
    AIO,
    SBSYNC,
    SYNC,
    Context,
    Meter,
    Row,
    classify,
    interleave,
    throughput_figure,
)
from bench.workloads._common import AioLoop, Filler
from sbsync.processor import SessionProcessor

IMPLS = (SYNC, AIO, SBSYNC)
QUEUES = {name: f"bench-processor-{name}" for name in IMPLS}
EMULATOR_ARGS = tuple(arg for q in QUEUES.values() for arg in ("--session-queue", q))
SESSIONS = 20
IDLE = 0.5
ACCEPT_WAIT = 1.0
#: No repetition should take longer than this (a stuck implementation fails the workload).
REP_TIMEOUT = 300.0


class _Counter:
    """Messages handled so far; ``half`` (when to sample threads and connections) and ``done``."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0
        self._lock = threading.Lock()
        self.half = threading.Event()
        self.done = threading.Event()

    def add(self) -> None:
        with self._lock:
            self.count += 1
            if self.count * 2 >= self.total:
                self.half.set()
            if self.count >= self.total:
                self.done.set()

    def wait(self, meter: Meter) -> bool:
        """Blocking implementations: sample halfway through, then wait for the last message."""
        if self.half.wait(REP_TIMEOUT):
            meter.sample()
        return self.done.wait(REP_TIMEOUT)


def _fill(filler: Filler, queue: str, sessions: int, per_session: int) -> int:
    for s in range(sessions):
        filler.fill(queue, per_session, session_id=f"s{s}")
    return sessions * per_session


class _Sbsync:
    def __init__(
        self, conn_str: str, filler: Filler, workers: int, sessions: int, per_session: int
    ) -> None:
        self._conn_str, self._filler = conn_str, filler
        self._workers, self._sessions, self._per_session = workers, sessions, per_session

    def setup(self) -> None:
        self.client = sbsync.ServiceBusClient.from_connection_string(self._conn_str)

    def rep(self, meter: Meter) -> dict[str, Any]:
        counter = _Counter(_fill(self._filler, QUEUES[SBSYNC], self._sessions, self._per_session))
        processor = SessionProcessor(
            self.client,
            queue_name=QUEUES[SBSYNC],
            handler=lambda message, context: counter.add(),
            max_concurrent_sessions=self._workers,
            session_idle_timeout=IDLE,
        )
        with meter.timing():
            processor.start()
            finished = counter.wait(meter)
        processor.stop()
        if not finished:
            raise RuntimeError(f"sbsync processor handled {counter.count} of {counter.total}")
        return {"msgs_per_s": counter.total / meter.regions[""][0]}

    def teardown(self) -> None:
        self.client.close()


class _SyncWorkers:
    def __init__(
        self, conn_str: str, filler: Filler, workers: int, sessions: int, per_session: int
    ) -> None:
        self._conn_str, self._filler = conn_str, filler
        self._workers, self._sessions, self._per_session = workers, sessions, per_session

    def setup(self) -> None:
        # One client per worker thread: the sync SDK's objects are not thread-safe.
        self.clients = [
            sync_sdk.ServiceBusClient.from_connection_string(self._conn_str, retry_total=0)
            for _ in range(self._workers)
        ]

    def _work(self, client: Any, counter: _Counter, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with client.get_queue_receiver(
                    QUEUES[SYNC], session_id=NEXT_AVAILABLE_SESSION, max_wait_time=ACCEPT_WAIT
                ) as receiver:
                    while not stop.is_set():
                        batch = receiver.receive_messages(max_message_count=1, max_wait_time=IDLE)
                        if not batch:
                            break
                        for message in batch:
                            counter.add()
                            receiver.complete_message(message)
            except (OperationTimeoutError, SessionCannotBeLockedError):
                continue

    def rep(self, meter: Meter) -> dict[str, Any]:
        counter = _Counter(_fill(self._filler, QUEUES[SYNC], self._sessions, self._per_session))
        stop = threading.Event()
        threads = [
            threading.Thread(target=self._work, args=(client, counter, stop), name=f"bench-worker-{i}")
            for i, client in enumerate(self.clients)
        ]
        with meter.timing():
            for thread in threads:
                thread.start()
            finished = counter.wait(meter)
        stop.set()
        for thread in threads:
            thread.join()
        if not finished:
            raise RuntimeError(f"sync workers handled {counter.count} of {counter.total}")
        return {"msgs_per_s": counter.total / meter.regions[""][0]}

    def teardown(self) -> None:
        for client in self.clients:
            client.close()


class _AioWorkers:
    def __init__(
        self, conn_str: str, filler: Filler, workers: int, sessions: int, per_session: int
    ) -> None:
        self._conn_str, self._filler = conn_str, filler
        self._workers, self._sessions, self._per_session = workers, sessions, per_session

    def setup(self) -> None:
        self.aio = AioLoop()
        self.aio.run(self._open())

    async def _open(self) -> None:
        self.client = aio_sdk.ServiceBusClient.from_connection_string(self._conn_str, retry_total=0)

    async def _work(self, counter: _Counter, stop: asyncio.Event, meter: Meter) -> None:
        while not stop.is_set():
            try:
                async with self.client.get_queue_receiver(
                    QUEUES[AIO], session_id=NEXT_AVAILABLE_SESSION, max_wait_time=ACCEPT_WAIT
                ) as receiver:
                    while not stop.is_set():
                        batch = await receiver.receive_messages(max_message_count=1, max_wait_time=IDLE)
                        if not batch:
                            break
                        for message in batch:
                            counter.add()
                            if counter.count * 2 == counter.total:
                                meter.sample()
                            await receiver.complete_message(message)
                            if counter.done.is_set():
                                stop.set()
            except (OperationTimeoutError, SessionCannotBeLockedError):
                continue

    async def _rep(self, meter: Meter, counter: _Counter) -> None:
        stop = asyncio.Event()  # set by the worker that completes the last message
        with meter.timing():
            tasks = [
                asyncio.ensure_future(self._work(counter, stop, meter)) for _ in range(self._workers)
            ]
            try:
                await asyncio.wait_for(stop.wait(), REP_TIMEOUT)
            finally:
                stop.set()
        await asyncio.gather(*tasks)

    def rep(self, meter: Meter) -> dict[str, Any]:
        counter = _Counter(_fill(self._filler, QUEUES[AIO], self._sessions, self._per_session))
        self.aio.run(self._rep(meter, counter))
        return {"msgs_per_s": counter.total / meter.regions[""][0]}

    def teardown(self) -> None:
        try:
            self.aio.run(self.client.close())
        finally:
            self.aio.close()


def run(ctx: Context) -> list[Row]:
    sessions, per_session = ctx.pick((6, 4), (SESSIONS, 10))
    worker_counts = ctx.pick((8,), (2, 8))
    reps = ctx.pick(1, min(2, ctx.reps))
    conn = ctx.emulator.conn_str
    rows = []
    filler = Filler(conn)
    try:
        for workers in worker_counts:
            ctx.log(
                f"processor: {workers} workers, {reps} reps x {sessions} sessions x {per_session} messages"
            )
            results = interleave(
                {
                    SYNC: _SyncWorkers(conn, filler, workers, sessions, per_session),
                    AIO: _AioWorkers(conn, filler, workers, sessions, per_session),
                    SBSYNC: _Sbsync(conn, filler, workers, sessions, per_session),
                },
                reps,
                ctx.emulator,
                ctx.log,
            )
            row = Row(
                "processor",
                f"workers_{workers}",
                "msgs/s",
                higher_is_better=True,
                figures={name: throughput_figure(reps_) for name, reps_ in results.items()},
                note=f"{sessions} sessions x {per_session} msgs; session switch = link attach+detach",
            )
            row.bound = classify(row)
            rows.append(row)
    finally:
        filler.close()
    return rows
