"""The retry policy as pure logic: predicates, attempt counts, waits, deadline, overrides."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Callable

import pytest
import tenacity
from azure.core.pipeline.policies import RetryMode
from azure.servicebus._base_handler import _get_backoff_time
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
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

from sbsync._retry import (
    RetryPolicy,
    is_idempotent,
    is_transient,
    retrying,
    run_with_retry,
)

# (error, retried for an idempotent operation, retried for a non-idempotent one)
TABLE = [
    (ServiceBusConnectionError(), True, True),
    (ServiceBusServerBusyError(), True, True),
    (ServiceBusCommunicationError(), True, True),
    (OperationTimeoutError(), True, False),
    (SessionCannotBeLockedError(), True, True),
    (ServiceBusError("internal", retryable=True), True, True),
    (ServiceBusError("plain"), False, False),
    (MessageLockLostError(), False, False),
    (SessionLockLostError(), False, False),
    (MessageAlreadySettled(action="complete"), False, False),
    (MessageNotFoundError(), False, False),
    (ServiceBusAuthenticationError(), False, False),
    (ServiceBusAuthorizationError(), False, False),
    (MessagingEntityNotFoundError(), False, False),
    (MessagingEntityDisabledError(), False, False),
    (MessageSizeExceededError(), False, False),
    (ServiceBusQuotaExceededError(), False, False),
    (AutoLockRenewFailed("renewal failed"), False, False),
    (ValueError("bad"), False, False),
    (TypeError("bad"), False, False),
    (RuntimeError("not ours"), False, False),
    (ConnectionResetError(), False, False),
]


@pytest.mark.parametrize(
    ("error", "idempotent_verdict", "other_verdict"), TABLE, ids=[type(e[0]).__name__ for e in TABLE]
)
def test_predicate_table(error: BaseException, idempotent_verdict: bool, other_verdict: bool) -> None:
    assert is_transient(error, idempotent=True) is idempotent_verdict
    assert is_transient(error, idempotent=False) is other_verdict


def test_idempotent_operations() -> None:
    assert is_idempotent("renew_message_lock")
    assert is_idempotent("get_state")
    assert not is_idempotent("send_messages")
    assert not is_idempotent("complete_message")
    assert not is_idempotent("receive_messages")
    assert not is_idempotent("open"), "a NEXT_AVAILABLE_SESSION open times out when no session is free"


def test_defaults_are_the_sdks() -> None:
    policy = RetryPolicy()
    assert (policy.retry_total, policy.retry_backoff_factor, policy.retry_backoff_max) == (3, 0.8, 120)
    assert policy.retry_mode == RetryMode.Exponential
    assert policy.deadline is None
    assert policy.max_attempts == 4


def test_from_kwargs_and_replace() -> None:
    base = RetryPolicy.from_kwargs(
        {"retry_total": 5, "retry_mode": "FIXED", "logging_enable": True, "retry_backoff_factor": 0.1}
    )
    assert base == RetryPolicy(retry_total=5, retry_mode=RetryMode.Fixed, retry_backoff_factor=0.1)
    assert RetryPolicy(retry_mode="fixed") == RetryPolicy(retry_mode=RetryMode.Fixed)
    call = base.replace(retry_total=0, deadline=2.5)
    assert (call.retry_total, call.deadline, call.retry_backoff_factor) == (0, 2.5, 0.1)
    assert base.retry_total == 5, "a per-call override leaves the client's policy alone"
    assert base.replace() is base
    with pytest.raises(TypeError):
        base.replace(retries=2)
    for bad in ({"retry_total": -1}, {"retry_mode": "linear"}, {"deadline": 0}, {"retry_backoff_max": -1}):
        with pytest.raises(ValueError):
            RetryPolicy.from_kwargs(bad)


def _waits(policy: RetryPolicy, retries: int) -> list[float]:
    wait = policy.wait()
    out = []
    for attempt in range(1, retries + 1):
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        out.append(wait(state))
    return out


@pytest.mark.parametrize("mode", [RetryMode.Exponential, RetryMode.Fixed])
@pytest.mark.parametrize(("factor", "cap"), [(0.8, 120), (0.5, 3), (2, 10)])
def test_wait_sequence_matches_the_sdk(mode: RetryMode, factor: float, cap: float) -> None:
    policy = RetryPolicy(retry_mode=mode, retry_backoff_factor=factor, retry_backoff_max=cap)
    expected = [_get_backoff_time(mode, factor, cap, n) for n in range(1, 9)]
    assert _waits(policy, 8) == pytest.approx(expected)
    if mode == RetryMode.Exponential and (factor, cap) == (0.8, 120):
        assert _waits(policy, 3) == pytest.approx([1.6, 3.2, 6.4])


class _Flaky:
    """An operation failing with ``errors`` in turn, then returning "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> Awaitable[str]:
        self.calls += 1
        return self._attempt()

    async def _attempt(self) -> str:
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _run(
    policy: RetryPolicy, op: Callable[[], Awaitable[str]], *, idempotent: bool = False
) -> tuple[str, list[float]]:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def attempt() -> str:
        return await op()

    async def main() -> str:
        return await retrying(policy, "op", idempotent=idempotent, sleep=fake_sleep)(attempt)

    return asyncio.run(main()), slept


def test_succeeds_after_transient_failures() -> None:
    op = _Flaky(ServiceBusServerBusyError(), ServiceBusConnectionError())
    result, slept = _run(RetryPolicy(), op)
    assert result == "ok"
    assert op.calls == 3
    assert slept == pytest.approx([1.6, 3.2])


@pytest.mark.parametrize("total", [0, 1, 3, 6])
def test_attempts_equal_retry_total_plus_one_and_original_error_raised(total: int) -> None:
    errors = [ServiceBusServerBusyError(message=f"busy {i}") for i in range(10)]
    op = _Flaky(*errors)
    with pytest.raises(ServiceBusServerBusyError) as info:
        _run(RetryPolicy(retry_total=total), op)
    assert op.calls == total + 1
    assert str(info.value).startswith(f"busy {total}"), "the last attempt's own exception"
    assert not isinstance(info.value, tenacity.RetryError)


@pytest.mark.parametrize(
    "error",
    [MessageLockLostError(), SessionLockLostError(), MessageAlreadySettled(action="complete"), ValueError()],
)
def test_never_retry_errors_make_one_attempt(error: BaseException) -> None:
    op = _Flaky(error)
    with pytest.raises(type(error)):
        _run(RetryPolicy(retry_total=5), op)
    assert op.calls == 1


def test_timeout_retried_only_when_idempotent() -> None:
    op = _Flaky(OperationTimeoutError())
    assert _run(RetryPolicy(), op, idempotent=True)[0] == "ok"
    assert op.calls == 2
    op = _Flaky(OperationTimeoutError())
    with pytest.raises(OperationTimeoutError):
        _run(RetryPolicy(), op, idempotent=False)
    assert op.calls == 1


def test_deadline_stops_before_a_wait_would_cross_it() -> None:
    # Waits 0.5, 1, 2 s: after the third failure (t ~ 1.5 s) the next wait would end at
    # ~3.5 s, past the 2.5 s deadline, so the call gives up then instead of sleeping. (Seconds,
    # not tenths: a loaded CI box once stretched a 0.1 s sleep past a 0.5 s deadline.)
    policy = RetryPolicy(retry_total=10, retry_backoff_factor=0.25, deadline=2.5)
    op = _Flaky(*[ServiceBusServerBusyError() for _ in range(20)])
    started = time.monotonic()
    with pytest.raises(ServiceBusServerBusyError):
        asyncio.run(run_with_retry(policy, "op", op, idempotent=False))
    assert op.calls == 3
    assert time.monotonic() - started < 2.2


def test_deadline_in_real_time_bounds_the_whole_call() -> None:
    # Fixed 0.1 s waits under a 1 s deadline: about 10 attempts (fewer if the box is slow,
    # which must not let the call outlive its deadline).
    policy = RetryPolicy(retry_total=50, retry_mode="fixed", retry_backoff_factor=0.1, deadline=1.0)
    op = _Flaky(*[ServiceBusServerBusyError() for _ in range(60)])
    started = time.monotonic()
    with pytest.raises(ServiceBusServerBusyError):
        asyncio.run(run_with_retry(policy, "op", op, idempotent=False))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 0.1
    assert 5 <= op.calls <= 11


def test_retries_are_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    op = _Flaky(ServiceBusServerBusyError())
    with caplog.at_level(logging.WARNING, logger="sbsync._retry"):
        _run(RetryPolicy(), op, idempotent=False)
    (record,) = [r for r in caplog.records if r.name == "sbsync._retry"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "op failed on attempt 1 of 4" in message
    assert "ServiceBusServerBusyError" in message
    assert "retrying in 1.60 s" in message


def test_run_with_retry_makes_a_fresh_awaitable_per_attempt() -> None:
    op = _Flaky(ServiceBusConnectionError())
    policy = RetryPolicy(retry_backoff_factor=0.001)
    assert asyncio.run(run_with_retry(policy, "op", op, idempotent=False)) == "ok"
    assert op.calls == 2


def test_cancellation_is_not_retried() -> None:
    calls = 0

    async def main() -> None:
        async def op() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(10)
            return "never"

        task = asyncio.ensure_future(run_with_retry(RetryPolicy(), "op", op, idempotent=True))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls == 1


def test_give_up_stops_retrying_with_the_original_error() -> None:
    op = _Flaky(ServiceBusConnectionError(message="first"), ServiceBusConnectionError())
    futile = [False]

    async def attempt() -> str:
        futile[0] = True  # e.g. the SDK marked the session lock lost during this attempt
        return await op()

    with pytest.raises(ServiceBusConnectionError, match="first"):
        asyncio.run(run_with_retry(RetryPolicy(), "op", attempt, idempotent=True, give_up=lambda: futile[0]))
    assert op.calls == 1
