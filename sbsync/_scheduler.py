"""A deadline scheduler: keys with due times in a heap, one ``threading.Timer`` for the earliest.

The lock renewer's clockwork, kept apart from anything that knows about locks so it can be
tested with a fake clock. However many keys are scheduled, at most one timer is armed (one
thread, sleeping in ``Event.wait``: no polling, no busy loop, no thread at all when idle).
When it fires, every key due by then (plus a little ``slack``, so near-simultaneous
deadlines share one wake-up) is handed to ``on_due`` on the timer thread, and the timer is
re-armed for the next earliest deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Hashable
from typing import Callable, Generic, Protocol, TypeVar

_log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

#: Timers firing later than this (the GIL held by a busy thread, a suspended VM) are logged.
LATE_WARNING = 0.5


class Cancellable(Protocol):
    def cancel(self) -> None: ...


#: ``timer_factory(delay, fn)`` starts something that calls ``fn()`` after ``delay`` seconds
#: unless cancelled first.
TimerFactory = Callable[[float, Callable[[], None]], Cancellable]


def start_daemon_timer(delay: float, fn: Callable[[], None]) -> Cancellable:
    """The real timer: a daemon ``threading.Timer`` (it must not keep the process alive)."""
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.name = "sbsync-renewer-timer"
    timer.start()
    return timer


class DeadlineScheduler(Generic[K]):
    """Calls ``on_due([(key, due), ...], now)`` on a timer thread once keys come due.

    ``schedule`` and ``cancel`` are thread-safe and cheap (O(log n)); scheduling a key again
    replaces its previous due time. ``on_due`` runs without the scheduler's lock held, so it
    may schedule keys again; it should return quickly (it delays every later deadline).
    """

    def __init__(
        self,
        on_due: Callable[[list[tuple[K, float]], float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        timer_factory: TimerFactory = start_daemon_timer,
        slack: float = 0.02,
    ) -> None:
        self._on_due = on_due
        self._clock = clock
        self._timer_factory = timer_factory
        self._slack = slack
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, int] = {}  # key -> sequence number of its live heap entry
        self._seq = itertools.count()
        self._timer: Cancellable | None = None
        self._armed_for: float | None = None
        self._generation = 0
        self._firing = False
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._current)

    @property
    def armed_for(self) -> float | None:
        """The clock time the armed timer fires at, or None when no timer is armed."""
        return self._armed_for

    def schedule(self, key: K, due: float) -> None:
        with self._lock:
            if self._closed:
                return
            seq = next(self._seq)
            self._current[key] = seq
            heapq.heappush(self._heap, (due, seq, key))
            self._compact_locked()
            self._arm_locked()

    def cancel(self, key: K) -> None:
        with self._lock:
            # The heap entry stays until it surfaces (lazy deletion); a stale one is skipped.
            self._current.pop(key, None)
            if not self._current:
                self._heap.clear()
                self._disarm_locked()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._heap.clear()
            self._current.clear()
            self._disarm_locked()

    def _compact_locked(self) -> None:
        # Rescheduling leaves stale entries behind; rebuild once they dominate the heap.
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._current):
            self._heap = [e for e in self._heap if self._current.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _next_due_locked(self) -> float | None:
        while self._heap:
            due, seq, key = self._heap[0]
            if self._current.get(key) == seq:
                return due
            heapq.heappop(self._heap)
        return None

    def _arm_locked(self) -> None:
        if self._firing or self._closed:
            return  # _fire re-arms once on_due is done
        due = self._next_due_locked()
        if due is None:
            self._disarm_locked()
            return
        if self._timer is not None and self._armed_for is not None and self._armed_for <= due:
            return  # the armed timer fires early enough; it re-arms for the rest
        self._disarm_locked()
        self._generation += 1
        generation = self._generation
        self._armed_for = due
        self._timer = self._timer_factory(
            max(0.0, due - self._clock()), lambda: self._fire(generation)
        )

    def _disarm_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._armed_for = None

    def _fire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._closed:
                return  # superseded by a re-arm after this timer had already started firing
            self._timer = None
            self._armed_for = None
            self._firing = True
            now = self._clock()
            batch: list[tuple[K, float]] = []
            limit = now + self._slack
            while self._heap and self._heap[0][0] <= limit:
                due, seq, key = heapq.heappop(self._heap)
                if self._current.get(key) == seq:
                    del self._current[key]
                    batch.append((key, due))
        try:
            if batch:
                lateness = now - batch[0][1]
                if lateness > LATE_WARNING:
                    _log.warning(
                        "lock renewal timer fired %.2f s late (a thread held the GIL, or the "
                        "process was stalled); %d renewal(s) due",
                        lateness,
                        len(batch),
                    )
                self._on_due(batch, now)
        except Exception:
            _log.exception("lock renewal dispatch failed")
        finally:
            with self._lock:
                self._firing = False
                self._arm_locked()
