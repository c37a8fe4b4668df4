"""AutoLockRenewer's decisions under a fake clock, with fake lock targets (pure logic).

When to renew, what counts as a loss and how it is pushed. The real thing, over AMQP against
the emulator, is in test_renewer_emulator.py.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
from typing import Any, Callable

import pytest
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    AutoLockRenewTimeout,
    ServiceBusError,
    ServiceBusServerBusyError,
)

from sbsync._renewer import AutoLockRenewer, guard, renew_margin
from sbsync._scheduler import DeadlineScheduler

from .fakes import FakeClock

EPOCH = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def wall(t: float) -> datetime.datetime:
    return EPOCH + datetime.timedelta(seconds=t)


class InlineExecutor(concurrent.futures.Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


class FakeLock:
    """A lock the 'broker' grants for ``duration`` s; ``auto`` answers renewals at once.

    Locks sharing a ``group`` are renewed by one request, which fails as a whole if any of
    them has ``fail_with`` set (as one bad lock token fails a real renew-lock request).
    """

    def __init__(
        self, clock: FakeClock, duration: float, *, auto: bool = True, age: float = 0.0, group: Any = None
    ) -> None:
        self.clock = clock
        self.duration = duration
        self.auto = auto
        self.group = self if group is None else group
        self.until = clock.now + duration - age
        self.start = clock.now - age
        self.gone_reason: str | None = None
        self.pending: list[tuple[list[FakeLock], concurrent.futures.Future[list[Any]]]] = []
        self.requests = 0
        self.renewed_at: list[float] = []
        self.deadlines: list[float] = []
        self.fail_with: BaseException | None = None
        self.auto_renew_error: BaseException | None = None
        self.lost_error: BaseException | None = None

    def locked_until(self) -> datetime.datetime | None:
        return wall(self.until)

    def started(self) -> datetime.datetime:
        return wall(self.start)

    def gone(self) -> str | None:
        return self.gone_reason

    def renew_batch(self, targets: list[FakeLock], deadline: float) -> concurrent.futures.Future[list[Any]]:
        future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        assert all(t.group is self.group for t in targets)
        self.requests += 1
        self.deadlines.append(deadline)
        self.pending.append((targets, future))
        if self.auto:
            self.answer()
        return future

    def answer(self) -> None:
        targets, future = self.pending.pop(0)
        for target in targets:
            if target.fail_with is not None:
                future.set_exception(target.fail_with)
                return
        for target in targets:
            assert self.clock.now < target.until, "renewed after the lock had already expired"
            target.renewed_at.append(self.clock.now)
            target.until = self.clock.now + target.duration
        future.set_result([wall(t.until) for t in targets])

    def record(self, error: Exception) -> None:
        self.auto_renew_error = error

    def lost(self, error: Exception) -> None:
        self.lost_error = error


class FakeRenewer(AutoLockRenewer):
    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        self.fake = clock
        kwargs.setdefault("executor", InlineExecutor())
        super().__init__(**kwargs)

    def _new_scheduler(self) -> DeadlineScheduler[Any]:
        return DeadlineScheduler(self._on_due, clock=self.fake, timer_factory=self.fake.timer_factory)

    def _scheduler_clock(self) -> Callable[[], float]:
        return self.fake

    def _utcnow(self) -> datetime.datetime:
        return wall(self.fake.now)

    def _target(self, receiver: Any, renewable: Any) -> Any:
        return renewable  # the fake lock is its own target


class Losses:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, BaseException | None, float]] = []
        self.clock: FakeClock | None = None

    def __call__(self, renewable: Any, error: BaseException | None) -> None:
        assert self.clock is not None
        self.calls.append((renewable, error, self.clock.now))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0)


@pytest.fixture
def losses(clock: FakeClock) -> Losses:
    lost = Losses()
    lost.clock = clock
    return lost


def test_margin_design() -> None:
    assert renew_margin(5) == 2.5
    assert renew_margin(60) == 30
    assert renew_margin(300) == 30
    assert guard(5) == 0.5 and guard(300) == 2.0


def test_short_lock_is_kept_alive_at_half_life(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    clock.advance(60)
    assert lock.renewed_at[:4] == pytest.approx([2.5, 5.0, 7.5, 10.0])
    assert len(lock.renewed_at) == 24
    assert renewer.renewals == 24
    assert losses.calls == []
    assert lock.deadlines[0] == pytest.approx(2.5 - guard(5))
    assert len(clock.live) == 1


def test_long_lock_renewed_30_s_ahead(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock, max_lock_renewal_duration=3600)
    lock = FakeLock(clock, 300)
    renewer.register(None, lock)
    clock.advance(600)
    assert lock.renewed_at == pytest.approx([270, 540])


def test_message_that_waited_in_prefetch_is_renewed_early(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock)
    lock = FakeLock(clock, 5, age=4)  # 1 s of its lock left when registered
    renewer.register(None, lock)
    clock.advance(0.6)
    assert lock.renewed_at == pytest.approx([0.5])


def test_renewal_failure_is_pushed_everywhere(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    clock.advance(3)
    lock.fail_with = ServiceBusServerBusyError()
    clock.advance(10)
    ((renewable, error, at),) = losses.calls
    assert renewable is lock and at == 5.0
    assert isinstance(error, AutoLockRenewFailed)
    assert isinstance(error.inner_exception, ServiceBusServerBusyError)
    assert lock.auto_renew_error is error and lock.lost_error is error
    assert len(renewer) == 0 and clock.live == []


def test_renewal_that_never_returns_is_a_loss_at_expiry(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5, auto=False)
    renewer.register(None, lock)
    clock.advance(4.9)
    assert len(lock.pending) == 1 and losses.calls == []
    clock.advance(5.0)
    ((_, error, at),) = losses.calls
    assert at == 5.0 and "expired before its renewal completed" in str(error)


def test_late_answer_after_watchdog_is_ignored(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5, auto=False)
    renewer.register(None, lock)
    clock.advance(5.5)
    assert len(losses.calls) == 1
    lock.fail_with = ServiceBusServerBusyError()
    lock.answer()  # the answer comes after the watchdog reported the loss
    assert len(losses.calls) == 1, "the late answer changes nothing"
    assert len(renewer) == 0


def test_max_duration_reached_is_reported_when_the_lock_expires(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, max_lock_renewal_duration=12, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    clock.advance(12.6)
    assert lock.renewed_at == pytest.approx([2.5, 5, 7.5, 10])
    assert isinstance(lock.auto_renew_error, AutoLockRenewTimeout), "recorded when renewal stops"
    assert losses.calls == [] and lock.lost_error is None, "the lock is still held until 15"
    clock.advance(20)
    ((_, error, at),) = losses.calls
    assert at == 15 and isinstance(error, AutoLockRenewTimeout)
    assert lock.lost_error is error


def test_max_duration_counts_from_receipt_and_per_registration_override(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock, max_lock_renewal_duration=300)
    lock = FakeLock(clock, 5, age=2)
    renewer.register(None, lock, max_lock_renewal_duration=6)
    clock.advance(30)
    # 3 s of lock left: renewed at 1.5; at the next due time (4.0) it has been held for 6 s.
    assert lock.renewed_at == pytest.approx([1.5]), "counted from receipt, 2 s before registration"
    assert isinstance(lock.auto_renew_error, AutoLockRenewTimeout)


def test_settled_or_closed_ends_quietly(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    a, b = FakeLock(clock, 5), FakeLock(clock, 5, auto=False)
    renewer.register(None, a)
    renewer.register(None, b)
    clock.advance(3)
    a.gone_reason = "quiet"  # settled
    b.gone_reason = "quiet"  # receiver closed while its renewal was in flight
    b.fail_with = ValueError("handler shut down")
    b.answer()
    b.fail_with = None
    clock.advance(30)
    assert losses.calls == []
    assert len(renewer) == 0 and clock.live == []


def test_dropped_link_is_a_loss(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    clock.advance(1)
    lock.gone_reason = "The receiver's link was closed after a connection error."
    clock.advance(10)
    ((_, error, at),) = losses.calls
    assert at == 2.5 and "connection error" in str(error)


def test_starved_timer_reports_the_expired_lock(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    timer = clock.live[0]
    clock.now = 7  # the timer thread could not run until after the expiry
    timer.fired = True
    timer.fn()
    ((_, error, _),) = losses.calls
    assert "expired before it could be renewed" in str(error) and "4.50 s late" in str(error)


def test_renewal_rtt_and_lateness_are_measured(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock)
    lock = FakeLock(clock, 10, auto=False)
    renewer.register(None, lock)
    clock.advance(5.25)
    clock.now = 5.5
    lock.answer()
    assert list(renewer.lateness) == [0.0]
    assert list(renewer.round_trips) == [0.5]


def test_many_locks_one_timer_few_requests(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    receiver = object()
    locks = [FakeLock(clock, 5, group=receiver) for _ in range(500)]
    for lock in locks:
        renewer.register(None, lock)
    clock.advance(14)
    assert all(lock.renewed_at == pytest.approx([2.5, 5, 7.5, 10, 12.5]) for lock in locks)
    assert len(clock.timers) <= 10, "one wake-up per renewal round, not one timer per lock"
    assert sum(lock.requests for lock in locks) == 5 * 5, "100 locks per request"
    assert losses.calls == []


def test_one_bad_lock_in_a_batch_fails_alone(clock: FakeClock, losses: Losses) -> None:
    from azure.servicebus.exceptions import MessageLockLostError

    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    receiver = object()
    locks = [FakeLock(clock, 5, group=receiver) for _ in range(3)]
    for lock in locks:
        renewer.register(None, lock)
    locks[1].fail_with = MessageLockLostError()
    clock.advance(3)
    assert [len(lock.renewed_at) for lock in locks] == [1, 0, 1]
    ((renewable, error, _),) = losses.calls
    assert renewable is locks[1] and isinstance(error.inner_exception, MessageLockLostError)


def test_transient_batch_failure_fails_all_without_fallback(clock: FakeClock, losses: Losses) -> None:
    renewer = FakeRenewer(clock, on_lock_renew_failure=losses)
    receiver = object()
    locks = [FakeLock(clock, 5, group=receiver) for _ in range(3)]
    for lock in locks:
        renewer.register(None, lock)
    locks[0].fail_with = ServiceBusServerBusyError()
    clock.advance(3)
    assert len(losses.calls) == 3
    assert sum(lock.requests for lock in locks) == 1


def test_register_again_replaces(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock)
    lock = FakeLock(clock, 5)
    renewer.register(None, lock)
    renewer.register(None, lock, max_lock_renewal_duration=3)
    assert len(renewer) == 1
    clock.advance(20)
    assert lock.renewed_at == pytest.approx([2.5])


def test_without_callback_loss_is_still_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    renewer = FakeRenewer(clock)
    lock = FakeLock(clock, 5)
    lock.fail_with = ServiceBusServerBusyError()
    with caplog.at_level(logging.WARNING, logger="sbsync._renewer"):
        renewer.register(None, lock)
        clock.advance(3)
    assert "lock lost" in caplog.text


def test_callback_errors_are_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def bad(renewable: Any, error: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    renewer = FakeRenewer(clock, on_lock_renew_failure=bad)
    lock = FakeLock(clock, 5)
    lock.fail_with = ServiceBusServerBusyError()
    renewer.register(None, lock)
    clock.advance(3)
    assert "on_lock_renew_failure callback raised" in caplog.text


def test_close_stops_everything_and_register_after_close_fails(clock: FakeClock, losses: Losses) -> None:
    with FakeRenewer(clock, on_lock_renew_failure=losses) as renewer:
        lock = FakeLock(clock, 5, auto=False)
        renewer.register(None, lock)
        clock.advance(3)
        pending = lock.pending[0][1]
    assert pending.cancelled()
    assert clock.live == []
    clock.advance(100)
    assert losses.calls == []
    with pytest.raises(ServiceBusError):
        renewer.register(None, FakeLock(clock, 5))
    with pytest.raises(ServiceBusError):
        renewer.__enter__()


def test_lockless_renewable_is_refused(clock: FakeClock) -> None:
    renewer = FakeRenewer(clock)
    lock = FakeLock(clock, 5)
    lock.locked_until = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        renewer.register(None, lock)


def test_executor_and_max_workers_exclusive() -> None:
    with pytest.raises(ValueError):
        AutoLockRenewer(executor=InlineExecutor(), max_workers=2)
    with pytest.raises(ValueError):
        AutoLockRenewer(max_workers=0)


def test_raise_if_lock_lost_ignores_what_is_not_a_message() -> None:
    from sbsync._lost_locks import raise_if_lock_lost

    raise_if_lock_lost("not a message")  # the SDK's TypeError is the better message
