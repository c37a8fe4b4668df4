"""The deadline scheduler under a fake clock: one timer, earliest first, due-selection."""

from __future__ import annotations

import threading
import time

import pytest

from sbsync._scheduler import DeadlineScheduler

from .fakes import FakeClock


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[tuple[str, float]]]] = []

    def __call__(self, batch: list[tuple[str, float]], now: float) -> None:
        self.calls.append((now, batch))

    @property
    def keys(self) -> list[str]:
        return [k for _, batch in self.calls for k, _ in batch]


def make(slack: float = 0.0) -> tuple[FakeClock, Recorder, DeadlineScheduler[str]]:
    clock = FakeClock(start=0.0)
    rec = Recorder()
    sched: DeadlineScheduler[str] = DeadlineScheduler(
        rec, clock=clock, timer_factory=clock.timer_factory, slack=slack
    )
    return clock, rec, sched


def test_one_timer_armed_for_the_earliest() -> None:
    clock, rec, sched = make()
    sched.schedule("c", 30)
    sched.schedule("a", 10)
    sched.schedule("b", 20)
    assert len(clock.live) == 1
    assert sched.armed_for == 10
    clock.advance(10)
    assert rec.calls == [(10, [("a", 10)])]
    assert sched.armed_for == 20
    assert len(clock.live) == 1
    clock.advance(100)
    assert rec.keys == ["a", "b", "c"]
    assert [now for now, _ in rec.calls] == [10, 20, 30], "each fired at its own time"
    assert clock.live == [] and sched.armed_for is None, "nothing scheduled: no timer at all"


def test_later_key_does_not_rearm_earlier_one_does() -> None:
    clock, _, sched = make()
    sched.schedule("a", 10)
    sched.schedule("b", 50)
    assert len(clock.timers) == 1, "a later deadline keeps the armed timer"
    sched.schedule("c", 5)
    assert len(clock.timers) == 2 and clock.timers[0].cancelled
    assert sched.armed_for == 5 and clock.timers[1].fires_at == 5


def test_reschedule_replaces_previous_due_time() -> None:
    clock, rec, sched = make()
    sched.schedule("a", 10)
    sched.schedule("a", 40)
    sched.schedule("b", 20)
    clock.advance(100)
    assert rec.keys == ["b", "a"]
    assert rec.calls[1] == (40, [("a", 40)])
    assert len(sched) == 0


def test_cancel() -> None:
    clock, rec, sched = make()
    sched.schedule("a", 10)
    sched.schedule("b", 20)
    sched.cancel("a")
    clock.advance(15)
    assert rec.calls == [], "the timer for the cancelled key fires and finds nothing due"
    clock.advance(25)
    assert rec.keys == ["b"]
    sched.schedule("c", 30)
    sched.cancel("c")
    assert clock.live == [], "cancelling the last key disarms"
    sched.cancel("never-scheduled")


def test_slack_coalesces_near_deadlines() -> None:
    clock, rec, sched = make(slack=0.05)
    sched.schedule("a", 10.00)
    sched.schedule("b", 10.03)
    sched.schedule("c", 10.20)
    clock.advance(11)
    assert rec.calls[0] == (10.0, [("a", 10.0), ("b", 10.03)])
    assert rec.calls[1][1] == [("c", 10.2)]


def test_late_timer_delivers_everything_overdue_at_once() -> None:
    clock, rec, sched = make()
    for i in range(5):
        sched.schedule(f"k{i}", 10 + i)
    # The timer thread was starved (GIL held): it only runs at t=20.
    timer = clock.live[0]
    clock.now = 20
    timer.fired = True
    timer.fn()
    assert rec.calls == [(20, [(f"k{i}", 10 + i) for i in range(5)])]


def test_on_due_may_reschedule_and_rearms_once() -> None:
    clock = FakeClock(start=0.0)
    fired: list[float] = []
    sched: DeadlineScheduler[str] = DeadlineScheduler(
        lambda batch, now: [fired.append(now), *(sched.schedule(k, now + 10) for k, _ in batch)],
        clock=clock,
        timer_factory=clock.timer_factory,
    )
    for i in range(100):
        sched.schedule(f"k{i}", 5)
    clock.advance(36)
    assert fired == [5, 15, 25, 35]
    assert len(clock.timers) == 1 + 4, "the first arm, then one per wake-up: never one per key"
    assert len(clock.live) == 1


def test_many_keys_few_timers() -> None:
    clock, rec, sched = make(slack=0.01)
    for i in range(10_000):
        sched.schedule(f"k{i}", 100 + (i % 100) * 0.001)
    assert len(clock.timers) <= 2
    clock.advance(200)
    assert len(rec.keys) == 10_000
    assert len(rec.calls) <= 10
    assert max(len(clock.live), 0) == 0


def test_heap_is_compacted_when_rescheduling_a_lot() -> None:
    _, _, sched = make()
    for round_ in range(50):
        for i in range(100):
            sched.schedule(f"k{i}", 1000 + round_)
    assert len(sched._heap) <= 2 * 100 + 100


def test_stale_timer_firing_after_rearm_is_ignored() -> None:
    clock, rec, sched = make()
    sched.schedule("a", 10)
    first = clock.live[0]
    sched.schedule("b", 5)  # re-arms; suppose the first timer had already begun to fire
    clock.now = 10
    first.fn()
    assert rec.calls == [], "a superseded timer does nothing"
    clock.advance(10)
    assert rec.keys == ["b", "a"]


def test_close_disarms_and_ignores_later_schedules() -> None:
    clock, rec, sched = make()
    sched.schedule("a", 10)
    sched.close()
    assert clock.live == []
    sched.schedule("b", 1)
    assert clock.live == []
    clock.advance(100)
    assert rec.calls == []


def test_on_due_error_is_logged_and_scheduler_continues(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=0.0)
    seen: list[str] = []

    def on_due(batch: list[tuple[str, float]], now: float) -> None:
        seen.extend(k for k, _ in batch)
        if now == 1:
            raise RuntimeError("boom")

    sched: DeadlineScheduler[str] = DeadlineScheduler(
        on_due, clock=clock, timer_factory=clock.timer_factory
    )
    sched.schedule("a", 1)
    sched.schedule("b", 2)
    clock.advance(3)
    assert seen == ["a", "b"]
    assert "lock renewal dispatch failed" in caplog.text


@pytest.mark.timeout(10)
def test_real_timer_thread_fires_and_leaves_no_thread_when_idle() -> None:
    done = threading.Event()
    baseline = threading.active_count()
    fired: dict[str, float] = {}

    def on_due(batch: list[tuple[str, float]], now: float) -> None:
        # A timer thread that gets the CPU late hands over several due keys in one batch.
        fired.update((key, now) for key, _ in batch)
        if len(fired) == 3:
            done.set()

    sched: DeadlineScheduler[str] = DeadlineScheduler(on_due)
    start = time.monotonic()
    deadlines = {f"k{i}": start + 0.05 * (i + 1) for i in range(3)}
    for key, at in deadlines.items():
        sched.schedule(key, at)
    assert threading.active_count() <= baseline + 1
    assert done.wait(5)
    for key, at in fired.items():
        assert at >= deadlines[key] - 0.02, "never before its deadline (minus slack)"
    deadline = time.monotonic() + 2
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == baseline, "no timer thread left once nothing is due"
    sched.close()


def test_late_timer_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock, _, sched = make()
    sched.schedule("a", 10)
    timer = clock.live[0]
    clock.now = 12  # the timer thread got the GIL two seconds late
    timer.fired = True
    timer.fn()
    assert "lock renewal timer fired 2.00 s late" in caplog.text
