"""``AutoLockRenewer``: keeps message and session locks alive, and never loses one silently.

The sync SDK's renewer runs a dispatcher thread that polls every 0.5 s plus a thread pool
whose workers block on the network; a lock it cannot keep is often dropped without a word
(the failure callback only runs if the lock had already expired by the time it noticed).

This one is a :class:`~sbsync._scheduler.DeadlineScheduler`: one ``threading.Timer`` armed
for the earliest renewal due, however many locks are registered. When it fires it *submits*
the due renewals to their receivers' portals (non-blocking; they run on the loop) -- one
``renew-lock`` request for up to ``MAX_BATCH`` of a receiver's messages, one request per
session -- and re-arms. An outcome arrives as a future callback and schedules the next
renewal. No threads of its own beyond the timer; no polling.

When is a lock renewed? At ``min(RENEW_FRACTION * span, MAX_MARGIN)`` before it expires,
``span`` being how long the lock had left when last granted: a 5 s lock is renewed with 2.5 s
to spare, a 5 min lock 30 s ahead. A renewal may retry (under the client's retry policy) only
until ``guard(span)`` before the expiry, so a renewal that cannot succeed is reported while
the lock still has a moment left, rather than after it is gone.

Every loss is pushed, whatever its cause -- the renewal failed, the maximum renewal duration
ran out (reported when the lock then expires), the receiver's link was dropped (the SDK closes
the handler after a connection error), or the lock simply ran out (the renewal never came
back): ``renewable.auto_renew_error`` is set, the lock is marked lost so the next call on that
message or session raises at once (see :func:`raise_if_lock_lost`), a WARNING is logged and
``on_lock_renew_failure(renewable, error)`` is called on the renewer's executor (never on the
loop or timer thread, so it may block or call sbsync). Settling a message, or closing its
receiver, ends renewal quietly: that is not a loss.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    AutoLockRenewTimeout,
    ServiceBusError,
)

from ._lock_targets import target_for
from ._retry import is_transient
from ._scheduler import DeadlineScheduler

if TYPE_CHECKING:
    from .receiver import ServiceBusReceiver
    from .session import ServiceBusSession

    Renewable = Union[ServiceBusReceivedMessage, ServiceBusSession]

LockRenewFailureCallback = Callable[[Any, Optional[BaseException]], None]

__all__ = ["AutoLockRenewer"]

_log = logging.getLogger(__name__)

#: Renew when this fraction of the lock's last granted span is left ...
RENEW_FRACTION = 0.5
#: ... but no earlier than this many seconds before expiry (long locks need no more slack).
MAX_MARGIN = 30.0
#: A renewal round trip slower than this is logged (a busy loop thread or a slow link).
SLOW_RENEWAL = 1.0
#: Most locks renewed by one request (one management round trip instead of one per lock).
MAX_BATCH = 100
#: How many recent renewal timings :attr:`AutoLockRenewer.lateness` keeps.
_SAMPLES = 10_000


def guard(span: float) -> float:
    """How long before expiry a renewal stops retrying and the lock is reported lost."""
    return min(0.1 * span, 2.0)


def renew_margin(span: float) -> float:
    """How long before expiry to renew a lock last granted for ``span`` seconds."""
    return min(RENEW_FRACTION * span, MAX_MARGIN)


class LockTarget(Protocol):
    """What the renewer needs from one locked message or session and its receiver."""

    def locked_until(self) -> datetime.datetime | None:
        """The lock's current expiry (UTC), or None if it has none (settled, not peek-lock)."""

    def started(self) -> datetime.datetime:
        """When the lock was first taken (UTC): the max renewal duration counts from here."""

    def gone(self) -> str | None:
        """None while renewable; ``"quiet"`` when renewal should just stop (settled, closed by
        its owner); otherwise why the lock is lost (e.g. the link was dropped)."""

    @property
    def group(self) -> Hashable:
        """Locks of one group can be renewed by one request (the same receiver's messages)."""

    def renew_batch(
        self, targets: list[Any], deadline: float
    ) -> concurrent.futures.Future[list[datetime.datetime | None]]:
        """Start renewing ``targets`` (this group's, ``self`` among them) by one request,
        retrying for at most ``deadline`` seconds; do not block. The result lists each
        target's new expiry, in order (None for one that needs none any more, e.g. settled)."""

    def record(self, error: Exception) -> None:
        """Store ``error`` where the user and the SDK look for it (``auto_renew_error``)."""

    def lost(self, error: Exception) -> None:
        """Make the next call on this message or session raise at once."""


_WAITING, _RENEWING, _EXPIRING = "waiting", "renewing", "expiring"


@dataclass(eq=False)
class _Registration:
    target: LockTarget
    renewable: Any
    started: float  # the renewer's clock
    max_duration: float
    on_failure: LockRenewFailureCallback | None
    expiry: float  # the renewer's clock
    span: float  # how long the lock had left when last granted
    state: str = _WAITING
    active: bool = True
    future: concurrent.futures.Future[list[datetime.datetime | None]] | None = None
    submitted_at: float = 0.0
    timeout_error: AutoLockRenewTimeout | None = field(default=None, repr=False)

    def renew_at(self) -> float:
        return self.expiry - renew_margin(self.span)


def describe(renewable: Any) -> str:
    """A short name for logs: never the message body (it may hold personal data)."""
    if isinstance(renewable, ServiceBusReceivedMessage):
        return f"message seq={renewable.sequence_number} id={renewable.message_id}"
    session_id = getattr(renewable, "session_id", None)
    return f"session {session_id!r}" if session_id is not None else type(renewable).__name__


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class AutoLockRenewer:
    """Automatically renew locks on messages and sessions (the SDK's interface).

    :param max_lock_renewal_duration: How long (seconds) locks registered here are kept,
     counted from when the message was received or the session accepted. Default 300.
    :param on_lock_renew_failure: Called as ``callback(renewable, error)`` whenever a
     registered lock is lost (unless ``register`` gave its own callback).
    :param executor: Where loss callbacks run. Renewals need no threads here; this is only
     for callbacks, so they may block or call sbsync. It is not shut down by :meth:`close`.
    :param max_workers: Threads of the renewer's own callback pool (default 1), created
     only when a callback is first due. Cannot be combined with ``executor``.
    """

    def __init__(
        self,
        max_lock_renewal_duration: float = 300,
        on_lock_renew_failure: LockRenewFailureCallback | None = None,
        executor: concurrent.futures.Executor | None = None,
        max_workers: int | None = None,
    ) -> None:
        if executor is not None and max_workers is not None:
            raise ValueError("Pass either executor or max_workers, not both.")
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1.")
        self._max_lock_renewal_duration = max_lock_renewal_duration
        self._on_lock_renew_failure = on_lock_renew_failure
        self._executor = executor
        self._own_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._max_workers = max_workers or 1
        self._lock = threading.RLock()
        self._registrations: dict[int, _Registration] = {}
        self._closed = False
        self._renewals = 0
        self._scheduler: DeadlineScheduler[_Registration] = self._new_scheduler()
        self._clock = self._scheduler_clock()
        #: Recent (scheduled, actual) renewal submit times: how late the timer ran.
        self.lateness: deque[float] = deque(maxlen=_SAMPLES)
        #: Recent renewal round trips (submitted -> outcome), seconds.
        self.round_trips: deque[float] = deque(maxlen=_SAMPLES)

    # Seams for the fake-clock tests.
    def _new_scheduler(self) -> DeadlineScheduler[_Registration]:
        return DeadlineScheduler(self._on_due)

    def _scheduler_clock(self) -> Callable[[], float]:
        return time.monotonic

    def _utcnow(self) -> datetime.datetime:
        return _utcnow()

    def _target(self, receiver: Any, renewable: Any) -> LockTarget:
        return target_for(receiver, renewable)

    # -- public interface ------------------------------------------------------------------

    def __enter__(self) -> AutoLockRenewer:
        if self._closed:
            raise ServiceBusError(
                "The AutoLockRenewer has already been shutdown. Please create a new instance for auto lock renewing."
            )
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def __len__(self) -> int:
        """How many locks are being kept right now (sbsync's extra)."""
        with self._lock:
            return len(self._registrations)

    @property
    def renewals(self) -> int:
        """How many lock renewals (of messages and sessions) succeeded so far (sbsync's extra)."""
        return self._renewals

    def register(
        self,
        receiver: ServiceBusReceiver,
        renewable: Renewable,
        max_lock_renewal_duration: float | None = None,
        on_lock_renew_failure: LockRenewFailureCallback | None = None,
    ) -> None:
        """Keep the lock on ``renewable`` (a received message or a session) alive.

        :param receiver: The receiver the message or session came from.
        :param renewable: A message received in PEEK_LOCK mode, or a session receiver's
         ``session``.
        :param max_lock_renewal_duration: Overrides the renewer's default for this lock.
        :param on_lock_renew_failure: Overrides the renewer's callback for this lock.
        :raises TypeError: for anything else.
        :raises ValueError: if the message has no lock (peeked, RECEIVE_AND_DELETE, settled).
        :raises ServiceBusError: if the renewer is closed.
        """
        target = self._target(receiver, renewable)
        if self._closed:
            raise ServiceBusError(
                "The AutoLockRenewer has already been shutdown. Please create a new instance for auto lock renewing."
            )
        locked_until = target.locked_until()
        if locked_until is None:
            raise ValueError(
                "Only messages received in PEEK_LOCK mode (not peeked, not settled) and sessions "
                "may be lock-renewed."
            )
        now, utcnow = self._clock(), self._utcnow()
        span = max(0.0, (locked_until - utcnow).total_seconds())
        registration = _Registration(
            target=target,
            renewable=renewable,
            started=now - max(0.0, (utcnow - target.started()).total_seconds()),
            max_duration=(
                self._max_lock_renewal_duration
                if max_lock_renewal_duration is None
                else max_lock_renewal_duration
            ),
            on_failure=on_lock_renew_failure or self._on_lock_renew_failure,
            expiry=now + span,
            span=span,
        )
        with self._lock:
            previous = self._registrations.get(id(renewable))
            if previous is not None:
                # Registering again replaces the earlier settings (one renewal per lock).
                self._deactivate_locked(previous)
                self._scheduler.cancel(previous)
            self._registrations[id(renewable)] = registration
        _log.debug(
            "keeping lock on %s for up to %s s (%.1f s left)", describe(renewable), registration.max_duration, span
        )
        self._scheduler.schedule(registration, registration.renew_at())

    def close(self, wait: bool = True) -> None:
        """Stop renewing every lock. With ``wait``, also wait for pending loss callbacks."""
        with self._lock:
            self._closed = True
            registrations = list(self._registrations.values())
            self._registrations.clear()
            for registration in registrations:
                registration.active = False
            executor = self._own_executor
        self._scheduler.close()
        for registration in registrations:
            if registration.future is not None:
                registration.future.cancel()
        if executor is not None:
            executor.shutdown(wait=wait)

    # -- the clockwork -----------------------------------------------------------------------

    def _on_due(self, batch: list[tuple[_Registration, float]], now: float) -> None:
        """Timer thread: act on every registration that came due. Never blocks."""
        groups: dict[Hashable, list[_Registration]] = {}
        # The lock orders this against _renewed on the loop thread; both are quick.
        with self._lock:
            for reg, due in batch:
                try:
                    if self._step(reg, due, now):
                        groups.setdefault(reg.target.group, []).append(reg)
                except Exception as exc:
                    self._fail(reg, exc)
            for regs in groups.values():
                for start in range(0, len(regs), MAX_BATCH):
                    self._start_renewal(regs[start : start + MAX_BATCH], now)

    def _step(self, reg: _Registration, due: float, now: float) -> bool:
        """Decide what a due registration needs; True if it is to be renewed now."""
        if not reg.active:
            return False
        gone = reg.target.gone()
        if gone == "quiet":
            self._forget(reg)
        elif gone is not None:
            self._lose(reg, AutoLockRenewFailed(gone))
        elif reg.state == _RENEWING:
            # The lock's own deadline came with its renewal still in flight.
            self._lose(reg, AutoLockRenewFailed("The lock expired before its renewal completed."))
        elif reg.state == _EXPIRING and reg.timeout_error is not None:
            self._lose(reg, reg.timeout_error)
        elif now >= reg.expiry:
            self._lose(
                reg,
                AutoLockRenewFailed(
                    f"The lock expired before it could be renewed (the renewer ran {now - due:.2f} s late)."
                ),
            )
        elif now - reg.started >= reg.max_duration:
            error = AutoLockRenewTimeout(f"Auto-renew period ({reg.max_duration} seconds) elapsed.")
            reg.timeout_error = error
            reg.state = _EXPIRING
            reg.target.record(error)
            _log.debug("max renewal duration reached for %s; letting its lock expire", describe(reg.renewable))
            self._scheduler.schedule(reg, reg.expiry)
        else:
            self.lateness.append(now - due)
            return True
        return False

    def _start_renewal(self, regs: list[_Registration], now: float) -> None:
        """Submit one renewal request for ``regs`` (one group); the loop runs it."""
        # Retry only while every lock in the request still has a moment left.
        deadline = min(reg.expiry - now - guard(reg.span) for reg in regs)
        try:
            future = regs[0].target.renew_batch([reg.target for reg in regs], max(0.001, deadline))
        except Exception as exc:  # e.g. the receiver closed between the check and the submit
            for reg in regs:
                self._fail(reg, exc)
            return
        for reg in regs:
            reg.state, reg.submitted_at, reg.future = _RENEWING, now, future
            # Watchdog: if the renewal has not come back by the expiry, the lock is gone.
            self._scheduler.schedule(reg, reg.expiry)
        future.add_done_callback(functools.partial(self._renewed, regs))

    def _renewed(
        self, regs: list[_Registration], future: concurrent.futures.Future[list[datetime.datetime | None]]
    ) -> None:
        """Loop thread (usually): a renewal request finished. Never blocks."""
        with self._lock:
            waiting = [(i, reg) for i, reg in enumerate(regs) if reg.active and reg.future is future]
            if not waiting or future.cancelled():
                return
            now = self._clock()
            round_trip = now - waiting[0][1].submitted_at
            self.round_trips.extend([round_trip] * len(waiting))
            if round_trip > SLOW_RENEWAL:
                _log.warning(
                    "lock renewal (%d lock(s)) took %.2f s (event loop busy, or a slow link)",
                    len(regs),
                    round_trip,
                )
            for _, reg in waiting:
                reg.future, reg.state = None, _WAITING
            error = future.exception()
            if error is not None:
                if len(regs) > 1 and not is_transient(error, idempotent=True):
                    # One bad lock fails the whole request: renew the others one by one.
                    for _, reg in waiting:
                        self._start_renewal([reg], now)
                else:
                    for _, reg in waiting:
                        self._fail(reg, error)
                return
            results = future.result()
            utcnow = self._utcnow()
            for i, reg in waiting:
                locked_until = results[i]
                if locked_until is None:
                    self._fail(reg, AutoLockRenewFailed("The lock could not be renewed."))
                    continue
                span = max(0.0, (locked_until - utcnow).total_seconds())
                reg.expiry, reg.span = now + span, span
                self._renewals += 1
                self._scheduler.schedule(reg, reg.renew_at())

    def _fail(self, reg: _Registration, error: BaseException) -> None:
        # Settled or closed by its owner while the renewal ran: that is not a loss.
        if reg.target.gone() == "quiet":
            self._forget(reg)
        else:
            self._lose(reg, AutoLockRenewFailed("Failed to auto-renew lock", error=error))

    def _deactivate_locked(self, reg: _Registration) -> bool:
        if not reg.active:
            return False
        reg.active = False
        if self._registrations.get(id(reg.renewable)) is reg:
            del self._registrations[id(reg.renewable)]
        return True

    def _forget(self, reg: _Registration) -> None:
        with self._lock:
            self._deactivate_locked(reg)
        self._scheduler.cancel(reg)

    def _lose(self, reg: _Registration, error: Exception) -> None:
        with self._lock:
            if not self._deactivate_locked(reg):
                return
        self._scheduler.cancel(reg)
        reg.target.record(error)
        reg.target.lost(error)
        _log.warning("lock lost on %s: %s", describe(reg.renewable), error)
        if reg.on_failure is not None:
            try:
                self._callback_executor().submit(self._run_callback, reg.on_failure, reg.renewable, error)
            except RuntimeError:  # the executor was shut down (renewer closing)
                _log.warning("lock-loss callback for %s not run: the renewer is closed", describe(reg.renewable))

    def _callback_executor(self) -> concurrent.futures.Executor:
        if self._executor is not None:
            return self._executor
        with self._lock:
            if self._own_executor is None:
                self._own_executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="sbsync-lock-lost"
                )
            return self._own_executor

    @staticmethod
    def _run_callback(callback: LockRenewFailureCallback, renewable: Any, error: BaseException) -> None:
        try:
            callback(renewable, error)
        except Exception:
            _log.exception("on_lock_renew_failure callback raised")
