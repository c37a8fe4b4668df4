"""Session state round trip: ``session.get_state()`` and ``session.set_state()``, latency per call.

Each implementation holds its own session of one session queue (links opened before timing).
One repetition is ``calls`` get_state calls then ``calls`` set_state calls. This is the
per-call cost figure: sbsync's added latency is its p50 minus aio's (the loop hop).
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
    latency_figure,
)
from bench.hop_bench import hop_only
from bench.workloads._common import (
    AioLoop,
    close_blocking,
    open_aio,
    open_blocking,
    timed,
    timed_async,
)

QUEUE = "bench-state"
EMULATOR_ARGS = ("--session-queue", QUEUE)
IMPLS = (SYNC, AIO, SBSYNC)
STATE = b"s" * 64
WARMUP = 20
MGMT_CREDIT = 10_000


class _Blocking:
    """The sync SDK or sbsync: the same code, different import."""

    def __init__(self, sdk: Any, conn_str: str, session: str, calls: int) -> None:
        self._sdk, self._conn_str, self._session, self._calls = sdk, conn_str, session, calls

    def setup(self) -> None:
        self.client, self.receiver = open_blocking(self._sdk, self._conn_str, lambda c: c.get_queue_receiver(QUEUE, session_id=self._session))
        session = self.receiver.session
        session.set_state(STATE)
        timed(session.get_state, WARMUP)

    def rep(self, meter: Meter) -> dict[str, Any]:
        session = self.receiver.session
        with meter.timing("get_state"):
            get = timed(session.get_state, self._calls)
        with meter.timing("set_state"):
            put = timed(lambda: session.set_state(STATE), self._calls)
        return {"get_state": get, "set_state": put}

    def teardown(self) -> None:
        close_blocking(self.receiver, self.client)


class _Aio:
    def __init__(self, conn_str: str, session: str, calls: int) -> None:
        self._conn_str, self._session, self._calls = conn_str, session, calls

    def setup(self) -> None:
        self.aio = AioLoop()
        self.aio.run(self._open())

    async def _open(self) -> None:
        self.client, self.receiver = await open_aio(self._conn_str, lambda c: c.get_queue_receiver(QUEUE, session_id=self._session))
        await self.receiver.session.set_state(STATE)
        await timed_async(self.receiver.session.get_state, WARMUP)

    def rep(self, meter: Meter) -> dict[str, Any]:
        return self.aio.run(self._rep(meter))

    async def _rep(self, meter: Meter) -> dict[str, Any]:
        session = self.receiver.session
        with meter.timing("get_state"):
            get = await timed_async(session.get_state, self._calls)
        with meter.timing("set_state"):
            put = await timed_async(lambda: session.set_state(STATE), self._calls)
        return {"get_state": get, "set_state": put}

    def teardown(self) -> None:
        self.aio.close_all(self.receiver, self.client)


def run(ctx: Context) -> list[Row]:
    # Each call is one request on the receiver's $management link, and the SDK (pyamqp, sync
    # and aio) grants that link 10,000 credits once and never tops them up: the emulator
    # then stops answering and call 10,001 hangs (aio) or times out (sync). Stay below it.
    calls = ctx.pick(50, 600)
    assert 2 * calls * ctx.reps + WARMUP < MGMT_CREDIT, "too many calls for one link"
    conn = ctx.emulator.conn_str
    ctx.log(f"session_state: {ctx.reps} reps x {calls} get_state + {calls} set_state calls")
    results = interleave(
        {
            SYNC: _Blocking(sync_sdk, conn, "state-sync", calls),
            AIO: _Aio(conn, "state-aio", calls),
            SBSYNC: _Blocking(sbsync, conn, "state-sbsync", calls),
        },
        ctx.reps,
        ctx.emulator,
        ctx.log,
    )
    hop = hop_only(2000, 200)["sbsync-portal"]  # the hop alone (no I/O), for comparison
    rows = []
    for op in ("get_state", "set_state"):
        figures = {name: latency_figure(reps, op) for name, reps in results.items()}
        added = {
            other: (figures[SBSYNC].median - figures[other].median) * 1e3 for other in (AIO, SYNC)
        }
        for fig in figures.values():
            fig.extra["added_p50_us_vs_aio"] = round((fig.median - figures[AIO].median) * 1e3, 1)
        figures[SBSYNC].extra["bare_hop_us"] = {k: round(v, 1) for k, v in hop.items()}
        row = Row(
            "session_state",
            op,
            "ms",
            higher_is_better=False,
            figures=figures,
            note=(
                f"sbsync adds {added[AIO]:+.0f} us vs aio, {added[SYNC]:+.0f} us vs sync (p50); "
                f"the bare loop hop (no I/O) p50 {hop['p50_us']:.0f} us, p99 {hop['p99_us']:.0f} us, "
                f"{hop['cpu_us']:.0f} us of CPU"
            ),
        )
        row.bound = classify(row)
        rows.append(row)
    return rows
