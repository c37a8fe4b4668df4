"""The lock renewer: N message locks kept alive; renewal lateness, threads, idle CPU.

Runs against its own emulator (short ``--lock-duration``, which would disturb the other
workloads). Each repetition, per implementation: fill its queue with N messages, receive them
all on a receiver given ``auto_lock_renewer=`` (so each message is registered as the SDK
does it), then keep them for ``keep`` seconds with the calling thread idle, then stop the
renewer and complete the messages (untimed).

- lateness: how long after a renewal became due it started. Each renewer has its own policy
  (when a lock is due): the SDKs renew when ``renew_period`` is left (``0.75 x`` the whole
  seconds left at registration for locks under 10.5 s, else 10 s) and look at each lock every
  0.5 s (sync: a dispatcher thread feeding a thread pool) or 1 s (aio: one task per lock);
  sbsync arms one timer for the earliest lock due (at half the lock left) and submits due
  renewals to its loop. SDK renewals are timed by wrapping ``receiver.renew_message_lock``;
  sbsync's from ``AutoLockRenewer.lateness`` (timer due -> submit).
- threads: ``threading.active_count()``-style count of this implementation's threads during
  the keep phase (the calling thread included).
- idle CPU: this process's CPU over the keep phase, as a share of one core.

Both SDK renewers, as documented (sync: default thread pool; aio: one task per lock), renew
several locks of one receiver at the same time. Their AMQP stacks cannot run two management
requests at once on one connection (out-of-order delivery ids; the emulator closes the
connection with a sequencing error), so locks are lost and the receiver is shut down: the
row's ``losses``/``unsettled`` say how many. ``sync-1-worker`` (``max_workers=1``) is the
sync configuration that keeps them.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import azure.servicebus as sync_sdk
import azure.servicebus.aio as aio_sdk
from azure.servicebus.exceptions import ServiceBusError

import sbsync
from bench._harness import (
    AIO,
    SBSYNC,
    SYNC,
    Context,
    Emulator,
    Figure,
    Meter,
    Row,
    interleave,
    latency_figure,
    throughput_figure,
)
from bench.workloads._common import AioLoop, Filler
from sbsync import AutoLockRenewer as SbsyncRenewer

#: The sync SDK's renewer with ``max_workers=1``: renewals run one at a time in its dispatcher
#: thread. With the default pool (6 threads here) the threads renew locks of one receiver
#: concurrently, which breaks the connection (see the module docstring).
SERIAL = "sync-1-worker"
IMPLS = (SYNC, SERIAL, AIO, SBSYNC)
QUEUES = {name: f"bench-renew-{name}" for name in IMPLS}
RECEIVE_BATCH = 200
#: Long enough never to be reached during the benchmark.
MAX_RENEWAL = 3600.0


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _sdk_renew_period(message: Any) -> float:
    """The SDK renewer's ``renew_period`` for a message just registered (its own rule)."""
    left = message.locked_until_utc - _utcnow()
    if left <= datetime.timedelta(seconds=10 + 0.5):
        return left.seconds * 0.75
    return 10.0


def _complete_all(receiver: Any, held: list[Any]) -> int:
    """Complete every message; how many could not be (their lock was lost)."""
    unsettled = 0
    for message in held:
        try:
            receiver.complete_message(message)
        except (ServiceBusError, ValueError):  # ValueError: the SDK closed the receiver
            unsettled += 1
    return unsettled


class _Tracker:
    """Lateness of SDK renewals: wraps the receiver's ``renew_message_lock``."""

    def __init__(self) -> None:
        self.periods: dict[int, float] = {}
        self.lateness: list[float] = []
        self.losses = 0

    def note(self, messages: list[Any]) -> None:
        for message in messages:
            self.periods[id(message)] = _sdk_renew_period(message)

    def late_by(self, message: Any) -> float:
        due = message.locked_until_utc - datetime.timedelta(seconds=self.periods[id(message)])
        return (_utcnow() - due).total_seconds()

    def lost(self, renewable: Any, error: BaseException | None) -> None:
        self.losses += 1

    async def lost_async(self, renewable: Any, error: BaseException | None) -> None:
        self.losses += 1


class _Sync:
    def __init__(
        self, conn_str: str, filler: Filler, locks: int, keep: float, max_workers: int | None = None
    ) -> None:
        self._conn_str, self._filler, self._locks, self._keep = conn_str, filler, locks, keep
        self._max_workers = max_workers
        self._queue = QUEUES[SYNC if max_workers is None else SERIAL]

    def setup(self) -> None:
        self.client = sync_sdk.ServiceBusClient.from_connection_string(self._conn_str)

    def rep(self, meter: Meter) -> dict[str, Any]:
        self._filler.fill(self._queue, self._locks)
        tracker = _Tracker()
        renewer = sync_sdk.AutoLockRenewer(
            max_lock_renewal_duration=MAX_RENEWAL,
            on_lock_renew_failure=tracker.lost,
            max_workers=self._max_workers,
        )
        with self.client.get_queue_receiver(self._queue, auto_lock_renewer=renewer) as receiver:
            original = receiver.renew_message_lock

            def renew(message: Any, **kwargs: Any) -> Any:
                tracker.lateness.append(tracker.late_by(message))
                return original(message, **kwargs)

            receiver.renew_message_lock = renew  # type: ignore[method-assign]
            held: list[Any] = []
            while len(held) < self._locks:
                batch = receiver.receive_messages(RECEIVE_BATCH, max_wait_time=5)
                if not batch:
                    raise RuntimeError(f"only {len(held)} of {self._locks} messages arrived")
                tracker.note(batch)
                held += batch
            tracker.lateness.clear()
            with meter.timing():
                time.sleep(self._keep / 2)
                meter.sample()
                time.sleep(self._keep / 2)
            lateness, losses = list(tracker.lateness), tracker.losses
            renewer.close()
            unsettled = _complete_all(receiver, held)
        return {"lateness": lateness, "renewals": len(lateness), "losses": losses, "unsettled": unsettled}

    def teardown(self) -> None:
        self.client.close()


class _Aio:
    def __init__(self, conn_str: str, filler: Filler, locks: int, keep: float) -> None:
        self._conn_str, self._filler, self._locks, self._keep = conn_str, filler, locks, keep

    def setup(self) -> None:
        self.aio = AioLoop()
        self.client = self.aio.run(self._client())

    async def _client(self) -> aio_sdk.ServiceBusClient:
        return aio_sdk.ServiceBusClient.from_connection_string(self._conn_str)

    def rep(self, meter: Meter) -> dict[str, Any]:
        self._filler.fill(QUEUES[AIO], self._locks)
        return self.aio.run(self._rep(meter))

    async def _rep(self, meter: Meter) -> dict[str, Any]:
        tracker = _Tracker()
        renewer = aio_sdk.AutoLockRenewer(
            max_lock_renewal_duration=MAX_RENEWAL, on_lock_renew_failure=tracker.lost_async
        )
        async with self.client.get_queue_receiver(QUEUES[AIO], auto_lock_renewer=renewer) as receiver:
            original = receiver.renew_message_lock

            async def renew(message: Any, **kwargs: Any) -> Any:
                tracker.lateness.append(tracker.late_by(message))
                return await original(message, **kwargs)

            receiver.renew_message_lock = renew  # type: ignore[method-assign]
            held: list[Any] = []
            while len(held) < self._locks:
                batch = await receiver.receive_messages(RECEIVE_BATCH, max_wait_time=5)
                if not batch:
                    raise RuntimeError(f"only {len(held)} of {self._locks} messages arrived")
                tracker.note(batch)
                held += batch
            tracker.lateness.clear()
            with meter.timing():
                await asyncio.sleep(self._keep / 2)
                meter.sample()
                await asyncio.sleep(self._keep / 2)
            lateness, losses = list(tracker.lateness), tracker.losses
            await renewer.close()
            unsettled = 0
            for message in held:
                try:
                    await receiver.complete_message(message)
                except (ServiceBusError, ValueError):
                    unsettled += 1
        return {"lateness": lateness, "renewals": len(lateness), "losses": losses, "unsettled": unsettled}

    def teardown(self) -> None:
        try:
            self.aio.run(self.client.close())
        finally:
            self.aio.close()


class _Sbsync:
    def __init__(self, conn_str: str, filler: Filler, locks: int, keep: float) -> None:
        self._conn_str, self._filler, self._locks, self._keep = conn_str, filler, locks, keep

    def setup(self) -> None:
        self.client = sbsync.ServiceBusClient.from_connection_string(self._conn_str)

    def rep(self, meter: Meter) -> dict[str, Any]:
        self._filler.fill(QUEUES[SBSYNC], self._locks)
        losses: list[Any] = []
        renewer = SbsyncRenewer(
            max_lock_renewal_duration=MAX_RENEWAL, on_lock_renew_failure=lambda r, e: losses.append(e)
        )
        with self.client.get_queue_receiver(QUEUES[SBSYNC], auto_lock_renewer=renewer) as receiver:
            held: list[Any] = []
            while len(held) < self._locks:
                batch = receiver.receive_messages(RECEIVE_BATCH, max_wait_time=5)
                if not batch:
                    raise RuntimeError(f"only {len(held)} of {self._locks} messages arrived")
                held += batch
            renewer.lateness.clear()
            with meter.timing():
                time.sleep(self._keep / 2)
                meter.sample()
                time.sleep(self._keep / 2)
            lateness = list(renewer.lateness)
            renewer.close()
            unsettled = _complete_all(receiver, held)
        return {
            "lateness": lateness,
            "renewals": len(lateness),
            "losses": len(losses),
            "unsettled": unsettled,
        }

    def teardown(self) -> None:
        self.client.close()


def run(ctx: Context) -> list[Row]:
    locks, lock_duration, keep = ctx.pick((50, 2.0, 2.5), (1000, 10.0, 12.0))
    reps = 1  # a repetition is long (the locks kept for ``keep``) and yields ~2 renewals per lock
    ctx.log(
        f"renewer: {locks} locks of {lock_duration:.0f} s kept {keep:.0f} s, {reps} reps "
        "(own emulator)"
    )
    args = ["--lock-duration", str(lock_duration)]
    for queue in QUEUES.values():
        args += ["--queue", queue]
    with Emulator.running(*args) as emulator:
        filler = Filler(emulator.conn_str)
        try:
            results = interleave(
                {
                    SYNC: _Sync(emulator.conn_str, filler, locks, keep),
                    SERIAL: _Sync(emulator.conn_str, filler, locks, keep, max_workers=1),
                    AIO: _Aio(emulator.conn_str, filler, locks, keep),
                    SBSYNC: _Sbsync(emulator.conn_str, filler, locks, keep),
                },
                reps,
                emulator,
                ctx.log,
            )
        finally:
            filler.close()
    lateness = {name: latency_figure(r, "lateness") for name, r in results.items()}
    cpu: dict[str, Figure] = {}
    for name, reps_ in results.items():
        for rep in reps_:
            rep.values["cpu_share"] = rep.cpu_shares("")[1] * 100
        cpu[name] = throughput_figure(reps_, "cpu_share")
        for fig in (lateness[name], cpu[name]):
            fig.extra["renewals"] = sum(rep.values["renewals"] for rep in reps_)
            fig.extra["losses"] = sum(rep.values["losses"] for rep in reps_)
            fig.extra["unsettled"] = sum(rep.values["unsettled"] for rep in reps_)
    summary = ", ".join(
        f"{name} {lateness[name].threads} thr/{lateness[name].extra['renewals']} renewals/"
        f"{lateness[name].extra['losses']} lost/{lateness[name].extra['unsettled']} not completable"
        for name in IMPLS
    )
    rows = [
        Row(
            "renewer",
            "lateness",
            "ms",
            higher_is_better=False,
            figures=lateness,
            note=f"{locks} locks of {lock_duration:.0f} s; {summary}",
        ),
        Row(
            "renewer",
            "idle_cpu",
            "% core",
            higher_is_better=False,
            figures=cpu,
            note="process CPU keeping the locks, calling thread idle",
        ),
    ]
    rows[0].bound = (
        "each renewer's own scheduling: sync polls every 0.5 s (dispatcher thread + pool), "
        "aio sleeps 1 s per lock task, sbsync arms one timer for the earliest lock due"
    )
    rows[1].bound = f"client CPU (emulator {max(f.emulator_cpu for f in cpu.values()):.0%} of a core at most)"
    return rows
