"""A fake clock and fake timers for testing the scheduler's pure logic."""

from __future__ import annotations

from typing import Callable


class FakeTimer:
    def __init__(self, clock: FakeClock, delay: float, fn: Callable[[], None]) -> None:
        self.clock = clock
        self.fires_at = clock.now + delay
        self.fn = fn
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``now`` moves only when a test says so; ``advance`` fires timers that come due."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.timers: list[FakeTimer] = []

    def __call__(self) -> float:
        return self.now

    def timer_factory(self, delay: float, fn: Callable[[], None]) -> FakeTimer:
        assert delay >= 0
        timer = FakeTimer(self, delay, fn)
        self.timers.append(timer)
        return timer

    @property
    def live(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled and not t.fired]

    def next_fire(self) -> float | None:
        live = self.live
        return min(t.fires_at for t in live) if live else None

    def advance(self, to: float) -> None:
        """Move time forward to ``to``, firing each live timer at its own time, in order."""
        while True:
            nxt = self.next_fire()
            if nxt is None or nxt > to:
                break
            self.now = max(self.now, nxt)
            timer = min(self.live, key=lambda t: t.fires_at)
            timer.fired = True
            timer.fn()
        self.now = max(self.now, to)
