"""Settling received messages without a loop round trip per message.

Settling a message received on the receive link sends a disposition frame; the broker's
verdict (the SDK awaits it: lock lost, message gone) comes back a round trip later. A receive
loop that waited for it on every message would spend most of its time waiting, so the
settlement returns once its frame is *written*, and the verdict is collected by the caller's
next call on the same receiver. The guarantee, per settlement made this way:

- Everything the SDK checks before sending (message already settled, peeked or deferred,
  lock already expired, session lock lost, receiver closed or its link gone, wrong receive
  mode) is raised by that call itself, in the caller's thread: such calls take the ordinary
  blocking path, which raises exactly what it always raised.
- Errors while sending the frame are raised by that call too (it waits for the write).
- The broker's verdict, which only the loop can know, is raised by the *next* call the same
  thread makes on that receiver (any call: receive, settle, renew, peek, session state,
  ``close()``), before that call does anything else -- or, for the next settlement, once its
  own frame is written. It is the exception the SDK raised for that settlement, with a note
  naming the message; none is dropped. If a thread never calls the receiver again, a failed
  verdict is logged as a WARNING when the receiver or client closes.
- ``close()`` (and ``client.close()``) let settlements in flight finish before the link
  detaches, so a settlement that returned is never cut off by the close.
- A settlement is *confirmed* once a later call on the receiver from the same thread has
  returned without raising its error. sbsync never reports as done a settlement the SDK
  reported as failed.

Deferred messages (settled with a management request) and calls given a ``timeout`` take
the blocking path: they return once the broker's verdict is in, as with the sync SDK.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from typing import Any, Callable

from ._portal import Portal, _Call
from ._sdk import SETTLEMENT_PAUSE

__all__ = ["Settlements"]

_LOGGER = logging.getLogger(__name__)

#: How long a written settlement waits for its caller's next call before its verdict is read
#: anyway (a caller that never comes back must not keep it pending).
PAUSE_LIMIT = 0.25


class _Settlement:
    """One settlement in flight, seen from both threads.

    Its caller waits on ``wake`` once per call: released (loop thread) when the frame is
    written *and* the caller's previous settlement has ended, so the caller then collects
    that one's verdict without sleeping again; or when this one ended without the hook
    seeing a frame go out. Loop side it holds the pause between writing and reading the
    verdict (:meth:`written`, :meth:`resume`).
    """

    __slots__ = (
        "_gate",
        "_woken",
        "call",
        "ended_flag",
        "next",
        "operation",
        "previous",
        "resumed",
        "sequence_number",
        "wake",
        "wrote",
    )

    def __init__(self, operation: str, sequence_number: Any, previous: _Settlement | None) -> None:
        self.operation = operation
        self.sequence_number = sequence_number
        self.wake = threading.Lock()
        self.wake.acquire()
        self._woken = False
        self.wrote = False
        self.ended_flag = False
        self.resumed = False
        self.call: _Call | None = None
        self.previous = previous
        self.next: _Settlement | None = None
        self._gate: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            self.wake.release()

    async def written(self, connection_intact: bool) -> None:
        """Loop thread (the SDK hook, see :mod:`sbsync._sdk`): the frame is out. Wake the
        caller (once its previous settlement has ended too), then wait until the verdict is
        wanted (:meth:`resume`). On a connection that already looks broken the verdict is
        read at once, and the caller gets it from this call, as from the sync SDK."""
        if not connection_intact:
            return
        self.wrote = True
        previous = self.previous
        if previous is None or previous.ended_flag:
            self._wake()
        if self.resumed:
            return
        self._gate = asyncio.get_running_loop().create_future()
        await self._gate

    def resume(self) -> None:
        """Loop thread: read the verdict now."""
        self.resumed = True
        gate = self._gate
        if gate is not None and not gate.done():
            gate.set_result(None)

    def ended(self) -> None:
        """Loop thread: the settlement's task ends."""
        self.ended_flag = True
        self.previous = None
        if not self.wrote:
            self._wake()  # no frame went out through the hook: the caller takes the outcome
        following = self.next
        if following is not None and following.wrote:
            following._wake()

    def annotate(self, error: BaseException) -> None:
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(
                f"Raised by {self.operation}(message with sequence_number={self.sequence_number}), "
                "made earlier on this receiver: the broker's verdict arrived after that call returned."
            )


class Settlements:
    """One receiver's settlements in flight, per caller thread (see the module docstring)."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._local = threading.local()
        #: Loop thread: settlements whose task is running, and those tasks (for close).
        self.in_flight: set[_Settlement] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Every thread's uncollected settlements, for close to report failures nobody collected.
        self._all: set[_Settlement] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def _mine(self) -> list[_Settlement]:
        mine: list[_Settlement] | None = getattr(self._local, "pending", None)
        if mine is None:
            mine = self._local.pending = []
        return mine

    def send(self, operation: str, sequence_number: Any, run: Callable[[], Awaitable[None]]) -> None:
        """Post ``run()`` (the settlement, on the loop); return once its frame is written.

        If it ended without a frame going out (refused, or settled another way), its own
        outcome is this call's. Then this thread's earlier verdicts are collected.
        """
        mine = self._mine()
        earlier = list(mine)
        previous = earlier[-1] if earlier else None
        settlement = _Settlement(operation, sequence_number, previous)

        async def settle() -> None:
            task = asyncio.current_task()
            assert task is not None
            for older in earlier:  # their verdicts are wanted now: read them after this write
                older.resume()
            if previous is not None:
                if previous.ended_flag:
                    settlement.previous = None
                else:
                    previous.next = settlement
            self.tasks.add(task)
            self.in_flight.add(settlement)
            self._arm_sweep()
            SETTLEMENT_PAUSE.set(settlement)  # this task's own context
            try:
                await run()
            finally:
                settlement.ended()
                self.tasks.discard(task)
                self.in_flight.discard(settlement)

        settlement.call = self._portal.post(settle)
        mine.append(settlement)
        self._all.add(settlement)
        settlement.wake.acquire()  # KeyboardInterrupt: the next call collects it
        if settlement.wrote:
            self._collect(mine, keep=1)  # all but this one
        else:
            self._collect(mine, keep=0)  # this one too: it has ended

    def _arm_sweep(self) -> None:
        """Loop thread: make sure paused settlements are resumed within ``PAUSE_LIMIT``
        even if their callers never call again (one timer per receiver, not per message)."""
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(PAUSE_LIMIT, self._sweep_now)

    def _sweep_now(self) -> None:
        self._sweep = None
        for settlement in list(self.in_flight):
            settlement.resume()

    def collect(self) -> None:
        """Wait for the verdicts of this thread's settlements in flight; raise the first
        failure (the SDK's exception, with a note naming the message), keeping the rest
        for the next call."""
        mine: list[_Settlement] | None = getattr(self._local, "pending", None)
        if not mine:
            return
        waiting = [s for s in mine if s.call is not None and not s.call.finished]
        if waiting:
            self._portal.post(lambda: _resume(waiting))
        self._collect(mine, keep=0)

    def _collect(self, mine: list[_Settlement], *, keep: int) -> None:
        while len(mine) > keep:
            settlement = mine[0]
            call = settlement.call
            assert call is not None
            call.done.acquire()  # interruptible; nothing is taken off the list until it returns
            call.done.release()
            del mine[0]
            self._all.discard(settlement)
            try:
                self._portal.join(call)
            except BaseException as exc:
                settlement.annotate(exc)
                raise

    async def aclose(self) -> None:
        """Loop thread, at close: read every verdict still pending and let the settlements
        finish; log failed ones no thread has collected yet (its next call still raises it)."""
        self._sweep_now()
        tasks = set(self.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=PAUSE_LIMIT * 20)
        for settlement in list(self._all):
            call = settlement.call
            if call is not None and call.finished and call.error is not None:
                _LOGGER.warning(
                    "%s of the message with sequence_number=%s failed after it returned: %r",
                    settlement.operation,
                    settlement.sequence_number,
                    call.error,
                )


async def _resume(settlements: list[_Settlement]) -> None:
    for settlement in settlements:
        settlement.resume()
