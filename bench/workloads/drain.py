"""Draining one session with receive + complete: msgs/s.

Each implementation keeps one session receiver (its own session of one session queue) open
for the whole workload. Before each repetition (untimed) the session gets ``count`` messages;
the repetition is ``receive_messages(max_message_count=100)`` then ``complete_message`` for
each, until all have been completed.
"""

from __future__ import annotations

from typing import Any

import azure.servicebus as sync_sdk

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
from bench.emulator_bench import BATCH
from bench.workloads._common import AioLoop, Filler, close_blocking, open_aio, open_blocking

IMPLS = (SYNC, AIO, SBSYNC)
QUEUE = "bench-drain"
EMULATOR_ARGS = ("--session-queue", QUEUE)


class _Blocking:
    def __init__(self, sdk: Any, conn_str: str, filler: Filler, session: str, count: int) -> None:
        self._sdk, self._conn_str, self._filler = sdk, conn_str, filler
        self._session, self._count = session, count

    def setup(self) -> None:
        self.client, self.receiver = open_blocking(self._sdk, self._conn_str, lambda c: c.get_queue_receiver(QUEUE, session_id=self._session))

    def rep(self, meter: Meter) -> dict[str, Any]:
        self._filler.fill(QUEUE, self._count, self._session)
        receiver, got = self.receiver, 0
        with meter.timing():
            while got < self._count:
                batch = receiver.receive_messages(max_message_count=BATCH, max_wait_time=10)
                if not batch:
                    raise RuntimeError(f"only {got} of {self._count} messages arrived")
                for message in batch:
                    receiver.complete_message(message)
                got += len(batch)
        return {"msgs_per_s": got / meter.regions[""][0]}

    def teardown(self) -> None:
        close_blocking(self.receiver, self.client)


class _Aio:
    def __init__(self, conn_str: str, filler: Filler, session: str, count: int) -> None:
        self._conn_str, self._filler = conn_str, filler
        self._session, self._count = session, count

    def setup(self) -> None:
        self.aio = AioLoop()
        self.aio.run(self._open())

    async def _open(self) -> None:
        self.client, self.receiver = await open_aio(self._conn_str, lambda c: c.get_queue_receiver(QUEUE, session_id=self._session))

    def rep(self, meter: Meter) -> dict[str, Any]:
        self._filler.fill(QUEUE, self._count, self._session)
        return self.aio.run(self._rep(meter))

    async def _rep(self, meter: Meter) -> dict[str, Any]:
        receiver, got = self.receiver, 0
        with meter.timing():
            while got < self._count:
                batch = await receiver.receive_messages(max_message_count=BATCH, max_wait_time=10)
                if not batch:
                    raise RuntimeError(f"only {got} of {self._count} messages arrived")
                for message in batch:
                    await receiver.complete_message(message)
                got += len(batch)
        return {"msgs_per_s": got / meter.regions[""][0]}

    def teardown(self) -> None:
        self.aio.close_all(self.receiver, self.client)


def run(ctx: Context) -> list[Row]:
    count = ctx.pick(200, 3000)
    conn = ctx.emulator.conn_str
    ctx.log(f"drain: {ctx.reps} reps x {count} messages of one session, receive + complete")
    filler = Filler(conn)
    try:
        results = interleave(
            {
                SYNC: _Blocking(sync_sdk, conn, filler, "drain-sync", count),
                AIO: _Aio(conn, filler, "drain-aio", count),
                SBSYNC: _Blocking(sbsync, conn, filler, "drain-sbsync", count),
            },
            ctx.reps,
            ctx.emulator,
            ctx.log,
        )
    finally:
        filler.close()
    row = Row(
        "drain",
        "session",
        "msgs/s",
        higher_is_better=True,
        figures={name: throughput_figure(reps) for name, reps in results.items()},
    )
    row.bound = classify(row)
    return [row]
