"""The retry policy: what is transient, how often and how long to try again.

This module is the single owner of the attempt count. The facade creates every
``azure.servicebus.aio`` client with ``retry_total=0`` (the SDK then makes exactly one
attempt per call and still reopens its link on the next call after a connection error), and
wraps each SDK coroutine in :func:`run_with_retry`. So the number of attempts a user sees is
the number they configured, never the product of two retry layers.

The policy is data (a frozen :class:`RetryPolicy`); the behaviour is tenacity's stop, wait and
retry strategies composed from it. Knob names and defaults are the SDK's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import tenacity
from azure.core.pipeline.policies import RetryMode
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    AutoLockRenewTimeout,
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityAlreadyExistsError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from ._sdk import sdk_says_retryable

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: The keyword arguments a client (or a single call) may pass to shape the policy.
RETRY_KNOBS: tuple[str, ...] = (
    "retry_total",
    "retry_backoff_factor",
    "retry_backoff_max",
    "retry_mode",
    "deadline",
)

#: Never retried, whatever their ``retryable`` flag says: repeating cannot help (the lock,
#: the entity or the credentials are gone, or the request itself is wrong) and may hurt
#: (a second settlement of a settled message). The SDK marks authentication, authorization
#: and entity-disabled errors retryable; a wrong key or a disabled entity does not heal in
#: the seconds a retry waits, so this policy fails them at once.
NEVER_RETRY: tuple[type, ...] = (
    MessageLockLostError,
    SessionLockLostError,
    MessageAlreadySettled,
    MessageNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    MessagingEntityNotFoundError,
    MessagingEntityDisabledError,
    MessagingEntityAlreadyExistsError,
    MessageSizeExceededError,
    ServiceBusQuotaExceededError,
    AutoLockRenewFailed,
    AutoLockRenewTimeout,
    ValueError,
    TypeError,
)

#: Retried for every operation: the request did not get through, or the service asked us to
#: come back later.
ALWAYS_TRANSIENT: tuple[type, ...] = (
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
    ServiceBusCommunicationError,
)

#: Operations that may be repeated after a timeout, when an earlier attempt may or may not
#: have taken effect: repeating them leaves the same end state. A send, a settlement, a
#: schedule or a receive is not among them (a timed-out attempt may have delivered, settled,
#: scheduled or locked, and a second one would duplicate it or fail confusingly).
#: Opening a link ("open", or the first call of a receiver, which opens it) is not here
#: either: for a NEXT_AVAILABLE_SESSION receiver its timeout means "no session was free
#: within max_wait_time", an answer rather than a fault, and retrying would multiply the wait
#: the caller asked for. Acquiring a session is otherwise repeated: it has no side effect
#: unless it succeeds, so SessionCannotBeLockedError (another receiver holds the session) is
#: retried for every operation, as the SDK does -- the holder often lets go within the
#: backoff window.
IDEMPOTENT_OPERATIONS = frozenset(
    {
        "get_state",
        "set_state",
        "renew_lock",
        "renew_session_lock",
        "renew_message_lock",
        "peek_messages",
        "receive_deferred_messages",
        "cancel_scheduled_messages",
        "create_message_batch",
        "list_queue_sessions",
        "list_subscription_sessions",
    }
)


def is_idempotent(operation: str) -> bool:
    """Whether ``operation`` may be repeated after a timeout (see ``IDEMPOTENT_OPERATIONS``)."""
    return operation in IDEMPOTENT_OPERATIONS


def _retryable_types(idempotent: bool) -> tuple[type, ...]:
    # SessionCannotBeLockedError: see IDEMPOTENT_OPERATIONS for why acquisition is repeated.
    timeout: tuple[type, ...] = (OperationTimeoutError,) if idempotent else ()
    return (*ALWAYS_TRANSIENT, SessionCannotBeLockedError, *timeout)


def _flagged_retryable(error: BaseException) -> bool:
    # Anything else the SDK maps from an AMQP error condition carries its own verdict;
    # a timeout's verdict depends on the operation, so it is never taken from the flag.
    return (
        isinstance(error, ServiceBusError)
        and not isinstance(error, OperationTimeoutError)
        and sdk_says_retryable(error)
    )


def transient_predicate(*, idempotent: bool) -> tenacity.retry_base:
    """The tenacity ``retry`` predicate: not in ``NEVER_RETRY``, and transient."""
    return tenacity.retry_if_not_exception_type(NEVER_RETRY) & (
        tenacity.retry_if_exception_type(_retryable_types(idempotent))
        | tenacity.retry_if_exception(_flagged_retryable)
    )


def is_transient(error: BaseException, *, idempotent: bool) -> bool:
    """Whether one more attempt after ``error`` could succeed and is safe to make."""
    return not isinstance(error, NEVER_RETRY) and (
        isinstance(error, _retryable_types(idempotent)) or _flagged_retryable(error)
    )


def _coerce_mode(mode: str | RetryMode) -> RetryMode:
    try:
        return RetryMode(mode.value if isinstance(mode, RetryMode) else str(mode).lower())
    except ValueError:
        raise ValueError(f"retry_mode must be 'exponential' or 'fixed', not {mode!r}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """How an operation is retried: the SDK's knobs, plus an overall ``deadline``.

    ``retry_total`` is the number of retries after the first attempt (so ``0`` means one
    attempt). The wait before retry *n* (1-based) is ``retry_backoff_factor * 2**n`` in
    exponential mode and ``retry_backoff_factor`` in fixed mode, capped at
    ``retry_backoff_max`` -- the SDK's own schedule. ``deadline`` (seconds from the first
    attempt, ``None`` for none) stops retrying when the next attempt would start after it.
    """

    retry_total: int = 3
    retry_backoff_factor: float = 0.8
    retry_backoff_max: float = 120
    retry_mode: RetryMode | str = RetryMode.Exponential  # a RetryMode once constructed
    deadline: float | None = None

    def __post_init__(self) -> None:
        # Normalise so equal policies compare equal whatever spelling built them.
        object.__setattr__(self, "retry_mode", _coerce_mode(self.retry_mode))
        if not isinstance(self.retry_total, int) or self.retry_total < 0:
            raise ValueError(f"retry_total must be an int >= 0, not {self.retry_total!r}")
        for name in ("retry_backoff_factor", "retry_backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if self.deadline is not None and (
            not isinstance(self.deadline, (int, float)) or not self.deadline > 0
        ):
            raise ValueError(f"deadline must be a number > 0 or None, not {self.deadline!r}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], base: RetryPolicy | None = None) -> RetryPolicy:
        """Build a policy from the retry knobs in ``kwargs`` (others ignored) over ``base``."""
        return (base or cls()).replace(**{k: kwargs[k] for k in RETRY_KNOBS if k in kwargs})

    def replace(self, **overrides: Any) -> RetryPolicy:
        """A copy with some knobs changed (a per-call override); unknown names are errors."""
        unknown = set(overrides) - set(RETRY_KNOBS)
        if unknown:
            raise TypeError(f"unknown retry option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @property
    def max_attempts(self) -> int:
        return self.retry_total + 1

    # The tenacity strategies this policy stands for.
    def stop(self) -> tenacity.stop.stop_base:
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.max_attempts)
        if self.deadline is not None:
            stop = stop | tenacity.stop_before_delay(self.deadline)
        return stop

    def wait(self) -> tenacity.wait.wait_base:
        if self.retry_mode == RetryMode.Fixed:
            return tenacity.wait_fixed(min(self.retry_backoff_max, self.retry_backoff_factor))
        # tenacity's exponential wait is multiplier * 2**(attempt-1); the SDK's is factor * 2**attempt.
        return tenacity.wait_exponential(
            multiplier=self.retry_backoff_factor * 2, exp_base=2, max=self.retry_backoff_max
        )


def _log_retry(operation: str, policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        _log.warning(
            "%s failed on attempt %d of %d (%s: %s); retrying in %.2f s",
            operation,
            state.attempt_number,
            policy.max_attempts,
            type(error).__name__,
            error,
            state.upcoming_sleep,
        )

    return before_sleep


class _stop_when(tenacity.stop.stop_base):
    """Stop as soon as ``futile()`` says another attempt cannot succeed."""

    def __init__(self, futile: Callable[[], bool]) -> None:
        self._futile = futile

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._futile()


def retrying(
    policy: RetryPolicy,
    operation: str,
    *,
    idempotent: bool,
    give_up: Callable[[], bool] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tenacity.AsyncRetrying:
    """The ``tenacity.AsyncRetrying`` for one call (``sleep`` is injectable for tests)."""
    extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    stop = policy.stop()
    if give_up is not None:
        stop = stop | _stop_when(give_up)
    return tenacity.AsyncRetrying(
        stop=stop,
        wait=policy.wait(),
        retry=transient_predicate(idempotent=idempotent),
        before_sleep=_log_retry(operation, policy),
        # Give up with the SDK's own exception, not tenacity.RetryError.
        reraise=True,
        **extra,
    )


async def run_with_retry(
    policy: RetryPolicy,
    operation: str,
    factory: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """Await ``factory()`` under ``policy``; a fresh awaitable is made for each attempt.

    Returns the first successful result, or raises the last attempt's exception (the SDK's
    type, unwrapped) when the error is not transient, the attempts are used up, the next
    attempt would start after the policy's deadline, or ``give_up()`` (checked after a
    failure) says retrying is futile.
    """

    async def attempt() -> T:
        # tenacity awaits only coroutine functions; factories are often plain lambdas.
        return await factory()

    return await retrying(policy, operation, idempotent=idempotent, give_up=give_up)(attempt)
