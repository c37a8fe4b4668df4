"""Many caller threads sending single messages: msgs/s, AMQP connections, threads.

For 1, 4, 16 and 64 callers, each sending its share of ``total`` messages one
``send_messages(message)`` call at a time:

- ``sync``: what the SDK documents for sharing (its clients and senders are not thread-safe):
  one sender guarded by a ``threading.Lock``;
- ``sync-per-thread``: the other documented way, one client and sender per thread;
- ``aio``: one sender, the same number of tasks on one loop (``asyncio.gather``), the sends
  under an ``asyncio.Lock``: the aio SDK's sender breaks when tasks send concurrently
  (``AttributeError: 'NoneType' object has no attribute 'listen'`` inside pyamqp, then the
  handler shuts down), so the lock is what aio code must do too;
- ``sbsync``: one client, one sender shared by the threads, no lock.

Links are opened before timing. Connections are this process's established TCP sockets to
the emulator, threads ``threading.active_count()``, both sampled while the callers run.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Callable

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
    connection_inodes,
    interleave,
    throughput_figure,
)
from bench.workloads._common import (
    SHORT_TTL,
    AioLoop,
    close_blocking,
    messages,
    open_aio,
    open_blocking,
)

PER_THREAD = "sync-per-thread"
IMPLS = (SYNC, PER_THREAD, AIO, SBSYNC)
QUEUE = "bench-shared"
EMULATOR_ARGS = ("--queue", QUEUE)


def run_threads(meter: Meter, threads: int, work: Callable[[int], None]) -> None:
    """Start ``threads`` callers, sample, then time from a common start to the last one done."""
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(i,), name=f"bench-caller-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    meter.sample()
    with meter.timing():
        start.wait()
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]


class _Kept:
    """A case whose links serve every caller count: opened by the first count's ``setup``,
    closed by ``close`` after the last. ``for_threads(n)`` is the case for ``n`` callers."""

    def __init__(self, port: int, total: int) -> None:
        self._port, self._total = port, total
        self._opened = False
        self.owned_sockets: set[str] = set()
        self.owned_threads: set[int] = set()

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _rep(self, meter: Meter, threads: int) -> dict[str, Any]:
        raise NotImplementedError

    def ensure_open(self) -> None:
        if not self._opened:
            sockets, threads = connection_inodes(self._port), _idents()
            self._open()
            self._opened = True
            self.owned_sockets = connection_inodes(self._port) - sockets
            self.owned_threads = _idents() - threads

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def for_threads(self, threads: int) -> _ForThreads:
        return _ForThreads(self, threads)


class _ForThreads:
    def __init__(self, kept: _Kept, threads: int) -> None:
        self._kept, self._threads = kept, threads

    @property
    def owned_sockets(self) -> set[str]:
        return self._kept.owned_sockets

    @property
    def owned_threads(self) -> set[int]:
        return self._kept.owned_threads

    def setup(self) -> None:
        self._kept.ensure_open()

    def rep(self, meter: Meter) -> dict[str, Any]:
        return self._kept._rep(meter, self._threads)

    def teardown(self) -> None:
        pass  # the links serve the next caller count; run() closes them


def _idents() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


class _Shared(_Kept):
    """One client and one sender shared by every caller thread (sync: under a lock)."""

    def __init__(self, sdk: Any, conn_str: str, port: int, total: int, lock: bool) -> None:
        super().__init__(port, total)
        self._sdk, self._conn_str = sdk, conn_str
        self._lock = threading.Lock() if lock else None

    def _open(self) -> None:
        self.client, self.sender = open_blocking(self._sdk, self._conn_str, lambda c: c.get_queue_sender(QUEUE))
        self.sender.send_messages(messages(1, ttl=SHORT_TTL))

    def _rep(self, meter: Meter, threads: int) -> dict[str, Any]:
        each = self._total // threads
        batches = [messages(each, ttl=SHORT_TTL) for _ in range(threads)]
        send, guard = self.sender.send_messages, self._lock

        def work(index: int) -> None:
            for message in batches[index]:
                with guard if guard is not None else nullcontext():
                    send(message)

        run_threads(meter, threads, work)
        return {"msgs_per_s": each * threads / meter.regions[""][0]}

    def _close(self) -> None:
        close_blocking(self.sender, self.client)


class _PerThread:
    """One sync client and sender per caller thread."""

    def __init__(self, conn_str: str, threads: int, total: int) -> None:
        self._conn_str, self._threads, self._total = conn_str, threads, total
        self.pairs: list[tuple[Any, Any]] = []

    def _open(self, _: int) -> tuple[Any, Any]:
        client, sender = open_blocking(sync_sdk, self._conn_str, lambda c: c.get_queue_sender(QUEUE))
        sender.send_messages(messages(1, ttl=SHORT_TTL))
        return client, sender

    def setup(self) -> None:
        with ThreadPoolExecutor(min(16, self._threads)) as pool:
            self.pairs = list(pool.map(self._open, range(self._threads)))

    def rep(self, meter: Meter) -> dict[str, Any]:
        each = self._total // self._threads
        batches = [messages(each, ttl=SHORT_TTL) for _ in range(self._threads)]

        def work(index: int) -> None:
            send = self.pairs[index][1].send_messages
            for message in batches[index]:
                send(message)

        run_threads(meter, self._threads, work)
        return {"msgs_per_s": each * self._threads / meter.regions[""][0]}

    def teardown(self) -> None:
        with ThreadPoolExecutor(min(16, max(1, len(self.pairs)))) as pool:
            list(pool.map(lambda pair: close_blocking(pair[1], pair[0]), self.pairs))


class _Aio(_Kept):
    """One aio sender, the same number of tasks as the others have threads."""

    def __init__(self, conn_str: str, port: int, total: int) -> None:
        super().__init__(port, total)
        self._conn_str = conn_str

    def _open(self) -> None:
        self.aio = AioLoop()
        self.aio.run(self._aopen())

    async def _aopen(self) -> None:
        self.client, self.sender = await open_aio(self._conn_str, lambda c: c.get_queue_sender(QUEUE))
        await self.sender.send_messages(messages(1, ttl=SHORT_TTL))

    def _rep(self, meter: Meter, threads: int) -> dict[str, Any]:
        return self.aio.run(self._arep(meter, threads))

    async def _arep(self, meter: Meter, tasks: int) -> dict[str, Any]:
        each = self._total // tasks
        batches = [messages(each, ttl=SHORT_TTL) for _ in range(tasks)]
        send, guard = self.sender.send_messages, asyncio.Lock()

        async def work(batch: list[Any]) -> None:
            for message in batch:
                async with guard:
                    await send(message)

        meter.sample()
        with meter.timing():
            await asyncio.gather(*(work(batch) for batch in batches))
        return {"msgs_per_s": each * tasks / meter.regions[""][0]}

    def _close(self) -> None:
        self.aio.close_all(self.sender, self.client)


def run(ctx: Context) -> list[Row]:
    total, reps = ctx.pick((128, 2), (1920, min(5, ctx.reps)))
    conn, port = ctx.emulator.conn_str, ctx.emulator.port
    rows = []
    kept: dict[str, _Kept] = {
        SYNC: _Shared(sync_sdk, conn, port, total, lock=True),
        AIO: _Aio(conn, port, total),
        SBSYNC: _Shared(sbsync, conn, port, total, lock=False),
    }
    try:
        for threads in (1, 4, 16, 64):
            rows.append(_one_count(ctx, kept, threads, total, reps))
    finally:
        for case in kept.values():
            case.close()
    return rows


def _one_count(ctx: Context, kept: dict[str, _Kept], threads: int, total: int, reps: int) -> Row:
    ctx.log(f"shared_sender: {threads} callers, {reps} reps x {total} messages")
    results = interleave(
        {
            SYNC: kept[SYNC].for_threads(threads),
            PER_THREAD: _PerThread(ctx.emulator.conn_str, threads, total),
            AIO: kept[AIO].for_threads(threads),
            SBSYNC: kept[SBSYNC].for_threads(threads),
        },
        reps,
        ctx.emulator,
        ctx.log,
    )
    figures = {name: throughput_figure(runs) for name, runs in results.items()}
    per_thread = figures[PER_THREAD].median
    order = (SYNC, PER_THREAD, AIO, SBSYNC)
    conns = "/".join(str(figures[n].connections or 0) for n in order)
    counts = "/".join(str(figures[n].threads or 0) for n in order)
    row = Row(
        "shared_sender",
        f"threads_{threads}",
        "msgs/s",
        higher_is_better=True,
        figures=figures,
        note=(
            f"AMQP connections sync/per-thread/aio/sbsync {conns}, threads {counts} "
            f"(aio: tasks, sends under an asyncio.Lock); "
            f"sbsync/sync-per-thread {figures[SBSYNC].median / per_thread:.2f}x"
        ),
    )
    row.bound = classify(row)
    return row
