"""Single sends and batch sends from one thread: msgs/s.

Each implementation has one client and one sender (opened before timing) on its own queue.
One repetition sends ``single`` messages one ``send_messages(message)`` call each, then
``batch`` messages as lists of 100.
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
from bench.workloads._common import (
    SHORT_TTL,
    AioLoop,
    close_blocking,
    messages,
    open_aio,
    open_blocking,
)

IMPLS = (SYNC, AIO, SBSYNC)
QUEUES = {name: f"bench-send-{name}" for name in IMPLS}
EMULATOR_ARGS = tuple(arg for q in QUEUES.values() for arg in ("--queue", q))


class _Blocking:
    def __init__(self, sdk: Any, conn_str: str, queue: str, single: int, batch: int) -> None:
        self._sdk, self._conn_str, self._queue = sdk, conn_str, queue
        self._single, self._batch = single, batch

    def setup(self) -> None:
        self.client, self.sender = open_blocking(self._sdk, self._conn_str, lambda c: c.get_queue_sender(self._queue))
        self.sender.send_messages(messages(1))

    def rep(self, meter: Meter) -> dict[str, Any]:
        singles = [messages(1, ttl=SHORT_TTL)[0] for _ in range(self._single)]
        batches = [messages(BATCH, ttl=SHORT_TTL) for _ in range(self._batch // BATCH)]
        send = self.sender.send_messages
        with meter.timing("single"):
            for message in singles:
                send(message)
        with meter.timing("batch"):
            for batch in batches:
                send(batch)
        return {
            "single": self._single / meter.regions["single"][0],
            "batch": len(batches) * BATCH / meter.regions["batch"][0],
        }

    def teardown(self) -> None:
        close_blocking(self.sender, self.client)


class _Aio:
    def __init__(self, conn_str: str, queue: str, single: int, batch: int) -> None:
        self._conn_str, self._queue = conn_str, queue
        self._single, self._batch = single, batch

    def setup(self) -> None:
        self.aio = AioLoop()
        self.aio.run(self._open())

    async def _open(self) -> None:
        self.client, self.sender = await open_aio(self._conn_str, lambda c: c.get_queue_sender(self._queue))
        await self.sender.send_messages(messages(1))

    def rep(self, meter: Meter) -> dict[str, Any]:
        return self.aio.run(self._rep(meter))

    async def _rep(self, meter: Meter) -> dict[str, Any]:
        singles = [messages(1, ttl=SHORT_TTL)[0] for _ in range(self._single)]
        batches = [messages(BATCH, ttl=SHORT_TTL) for _ in range(self._batch // BATCH)]
        send = self.sender.send_messages
        with meter.timing("single"):
            for message in singles:
                await send(message)
        with meter.timing("batch"):
            for batch in batches:
                await send(batch)
        return {
            "single": self._single / meter.regions["single"][0],
            "batch": len(batches) * BATCH / meter.regions["batch"][0],
        }

    def teardown(self) -> None:
        self.aio.close_all(self.sender, self.client)


def run(ctx: Context) -> list[Row]:
    single, batch = ctx.pick((60, 600), (600, 5000))
    conn = ctx.emulator.conn_str
    ctx.log(f"send: {ctx.reps} reps x ({single} single sends, {batch} messages in batches of {BATCH})")
    results = interleave(
        {
            SYNC: _Blocking(sync_sdk, conn, QUEUES[SYNC], single, batch),
            AIO: _Aio(conn, QUEUES[AIO], single, batch),
            SBSYNC: _Blocking(sbsync, conn, QUEUES[SBSYNC], single, batch),
        },
        ctx.reps,
        ctx.emulator,
        ctx.log,
    )
    rows = []
    for case in ("single", "batch"):
        row = Row(
            "send",
            case,
            "msgs/s",
            higher_is_better=True,
            figures={name: throughput_figure(reps, case) for name, reps in results.items()},
        )
        row.bound = classify(row)
        rows.append(row)
    return rows
