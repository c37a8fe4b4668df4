"""What every facade object shares: its SDK object, and the one path into the loop.

A facade object (client, sender, receiver) holds a :class:`~sbsync._portal.Portal` and a
builder for its ``azure.servicebus.aio`` counterpart. The SDK object is built on the loop
thread, once per portal generation (a forked child rebuilds its own), and is only ever
touched there. Every SDK call goes through :meth:`Handle._run`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import numbers
import time
from collections.abc import Awaitable
from typing import Any, Callable, Generic, Protocol, TypeVar

from azure.servicebus.exceptions import ServiceBusError

from ._portal import Portal, PortalFuture, freeze_if_exiting
from ._retry import RetryPolicy, is_idempotent, run_with_retry
from ._sdk import instrument, link_running, map_sdk_errors
from .exceptions import ClientClosedError, closed_error

__all__ = ["CLOSE_TIMEOUT", "Handle", "check_count", "check_sequence_numbers", "check_timeout", "check_type"]

_LOGGER = logging.getLogger(__name__)

SdkT = TypeVar("SdkT")
R = TypeVar("R")

#: Upper bound for closing one SDK object (milliseconds normally; ~0.5 s without the
#: ``keep-alive-stop`` hook).
CLOSE_TIMEOUT = 10.0


def check_timeout(timeout: float | None, name: str = "timeout") -> None:
    """None or a positive number of seconds; TypeError/ValueError otherwise."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(timeout).__name__}.")
    if not timeout > 0:
        raise ValueError(f"{name} must be greater than 0 (got {timeout!r}).")


def check_count(value: int | None, name: str, *, optional: bool = False) -> None:
    """A positive int (or None when ``optional``); TypeError/ValueError otherwise."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0 (got {value!r}).")


def check_sequence_numbers(value: int | list[int]) -> None:
    """An int or a list of ints, as the SDK's sequence-number parameters take."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(n, bool) or not isinstance(n, int) for n in items):
        raise TypeError("sequence_numbers must be an int or a list of ints.")


def check_type(value: Any, expected: type | tuple[type, ...], name: str) -> None:
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise TypeError(f"{name} must be {names}, not {type(value).__name__}.")


class LinkOwner(Protocol):
    """The client, seen from its senders and receivers: it tracks every SDK object they open,
    so ``client.close()`` closes the links of handles that were dropped without ``close()``,
    and waits for releases still running (a receiver's close runs in the background)."""

    def _track(self, sdk: Any) -> None: ...

    def _untrack(self, sdk: Any) -> bool: ...

    def _wait_on_close(self, release: asyncio.Future[None]) -> None: ...


class Handle(Generic[SdkT]):
    """Base of the facade classes: SDK object per generation, open guard, close, ``_run``."""

    _kind = "handler"
    #: Receivers open their link lazily inside whichever operation comes first, from several
    #: lanes: until it is open they take the open lock. (A sender's operations share one lane.)
    _guard_open = True
    #: Whether ``close()`` returns before the SDK object is closed (see the receiver's).
    _close_in_background = False

    def __init__(self, portal: Portal, build: Callable[[], SdkT], owner: LinkOwner | None = None) -> None:
        self._portal = portal
        self._build = build  # runs on the loop thread
        self._owner = owner
        self._sdk_obj: SdkT | None = None
        self._sdk_gen = -1
        self._closed = False
        # The release of this generation's SDK object, once begun (close() and client.close()
        # may both ask for it; it must happen once: a sender's link may be parked for reuse).
        self._releasing: asyncio.Future[None] | None = None
        #: [the SDK object] while this handle holds one unreleased; read by the owner's
        #: finalizer when the handle is dropped without close().
        self._held: list[Any] = []
        #: The entity the SDK object is for, in error messages.
        self._entity: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._open_lock: asyncio.Lock | None = None
        self._lanes: dict[str, asyncio.Lock] = {}
        # Replaced by the client's policy; the SDK objects themselves make one attempt per call.
        self._retry_policy = RetryPolicy()

    # -- loop side ------------------------------------------------------------------------

    def _sdk(self) -> SdkT:
        """Loop thread: this generation's SDK object, built on first use."""
        generation = self._portal.generation
        if self._sdk_gen != generation:
            if self._sdk_obj is not None:
                self._portal.orphan(self._sdk_obj)  # the parent process's: never close it here
            self._sdk_obj = self._build()
            instrument(self._sdk_obj, self._label())
            self._sdk_gen = generation
            self._open_lock = asyncio.Lock()
            self._lanes = {}
            self._inflight = set()
            self._releasing = None
            self._held[:] = [self._sdk_obj]
            if self._owner is not None:
                self._owner._track(self._sdk_obj)
            self._on_new_sdk()
        return self._sdk_obj  # type: ignore[return-value]

    def _on_new_sdk(self) -> None:
        """Loop thread: hook for subclasses' per-SDK-object state."""

    def _label(self) -> str:
        """What this handle's link is, for logs (e.g. ``sender link to 'orders'``)."""
        return f"{self._kind} link to {self._entity!r}"

    def _lane(self, lane: str) -> asyncio.Lock:
        """Loop thread: the lock of one lane (see :meth:`_invoke`)."""
        lock = self._lanes.get(lane)
        if lock is None:
            lock = self._lanes[lane] = asyncio.Lock()
        return lock

    async def _invoke(self, operation: str, fn: Callable[[SdkT], Awaitable[R]], lane: str | None) -> R:
        """Loop thread: run ``fn(sdk)`` under this handle's concurrency rules.

        Operations in one ``lane`` run one at a time; ``lane=None`` runs unserialized. The SDK
        cannot interleave outgoing transfers on one connection (concurrent management
        requests break AMQP delivery-id ordering and the broker drops the connection), so
        every operation that sends one shares the ``"link"`` lane. Receives take the
        ``"receive"`` lane; settlement on the receive link (dispositions, no transfers) runs
        unserialized, so it need not wait for a receive that is waiting for messages. (A
        sender's grouped sends run unserialized too: they only queue for its flusher, which
        holds the ``"link"`` lane.) While a receiver's link is not open, every operation also
        holds the open lock, so concurrent first calls cannot each open a link of their own.
        """
        if self._is_closed():  # closed after this call passed the caller-side check
            raise closed_error(self._kind)
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            sdk = self._sdk()
            if lane is None:
                return await self._guarded(sdk, fn)
            async with self._lane(lane):
                return await self._guarded(sdk, fn)
        except asyncio.CancelledError:
            if self._is_closed():
                raise closed_error(self._kind, during_call=True) from None
            raise
        finally:
            self._inflight.discard(task)

    async def _attempts(
        self,
        operation: str,
        fn: Callable[[SdkT], Awaitable[R]],
        lane: str | None,
        policy: RetryPolicy | None,
        first_attempt: tuple[Exception, float] | None = None,
    ) -> R:
        """Loop thread: :meth:`_invoke` under the retry policy, the one place attempts are counted;
        what the SDK raises is mapped to sbsync's errors."""
        with self._mapped_errors(operation):
            return await self._retried(operation, fn, lane, policy, first_attempt)

    def _mapped_errors(self, operation: str) -> contextlib.AbstractContextManager[None]:
        """``_sdk.map_sdk_errors`` for ``operation`` on this handle's entity."""
        subject = self._entity or getattr(self, "_namespace", None) or self._kind
        return map_sdk_errors(subject, lambda cause: self._lost_with_link(operation, cause))

    async def _retried(
        self,
        operation: str,
        fn: Callable[[SdkT], Awaitable[R]],
        lane: str | None,
        policy: RetryPolicy | None,
        first_attempt: tuple[Exception, float] | None,
    ) -> R:
        """Each attempt takes its lane anew, so a backoff wait never holds up the lane. The first
        attempt runs bare: building the retry machinery costs ~70 us, more than the thread hop
        itself, so it is engaged only once an attempt has failed; that failure is replayed to
        it as attempt 1, and the policy's deadline shrinks by the time attempt 1 took.
        ``first_attempt`` (its failure, and when it started) is one made elsewhere.
        """
        if first_attempt is None:
            started = time.monotonic()
            try:
                return await self._invoke(operation, fn, lane)
            except Exception as exc:
                failure = exc
        else:
            failure, started = first_attempt
        policy = policy or self._retry_policy
        if policy.deadline is not None:
            left = policy.deadline - (time.monotonic() - started)
            if left <= 0:
                raise failure  # no time left for another attempt
            policy = policy.replace(deadline=left)
        replay = [failure]

        async def attempt() -> R:
            if replay:
                raise replay.pop()
            return await self._invoke(operation, fn, lane)

        return await run_with_retry(
            policy,
            operation,
            attempt,
            idempotent=is_idempotent(operation),
            give_up=lambda: self._is_closed() or self._retry_futile(operation),
        )

    def _retry_futile(self, operation: str) -> bool:
        """Whether ``operation`` cannot succeed on this SDK object any more, however often tried."""
        return self._lost_with_link(operation) is not None

    def _lost_with_link(self, operation: str, cause: BaseException | None = None) -> ServiceBusError | None:
        """The error ``operation`` must end with because a connection error took this handle's
        link and a lock with it (see the receiver's); None if it may still succeed."""
        return None

    async def _guarded(self, sdk: SdkT, fn: Callable[[SdkT], Awaitable[R]]) -> R:
        if self._guard_open and not link_running(sdk):
            async with self._open_lock:  # type: ignore[union-attr]
                return await fn(sdk)
        return await fn(sdk)

    async def _aclose(self) -> None:
        """Loop thread: cancel this handle's calls in flight, then release its SDK object.

        Once per SDK object: a second caller (``close()`` racing ``client.close()``) waits for
        the first one's release instead of starting another.
        """
        if self._sdk_obj is None or self._sdk_gen != self._portal.generation:
            return  # never built, or built by the parent process: nothing of ours to close
        if self._releasing is None:
            sdk = self._sdk_obj
            self._held.clear()
            if self._owner is not None:
                self._owner._untrack(sdk)
            self._releasing = asyncio.ensure_future(self._cancel_and_release(sdk, asyncio.current_task()))
            if self._owner is not None:
                self._owner._wait_on_close(self._releasing)
        # Shielded: a close() that times out must not cut the release short.
        await asyncio.shield(self._releasing)

    async def _cancel_and_release(self, sdk: SdkT, closer: asyncio.Task[Any] | None) -> None:
        pending = [t for t in self._inflight if t is not closer]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT / 2)
        await self._release(sdk, interrupted=bool(pending))

    async def _release(self, sdk: SdkT, *, interrupted: bool) -> None:
        """Loop thread: done with ``sdk`` (``interrupted``: calls on it were cancelled)."""
        await sdk.close()  # type: ignore[attr-defined]

    # -- caller side ----------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self._closed or self._portal.closed

    def _refuse_if_closed(self) -> None:
        """Caller side, first thing in every call: ``ClientClosedError`` once closed."""
        if self._is_closed():
            freeze_if_exiting()
            raise closed_error(self._kind)

    def _run(
        self,
        operation: str,
        fn: Callable[[SdkT], Awaitable[R]],
        *,
        timeout: float | None = None,
        lane: str | None = "link",
        policy: RetryPolicy | None = None,
        first_attempt: tuple[Exception, float] | None = None,
    ) -> R:
        """Block until ``fn(sdk)`` has run on the loop; the single way facade methods reach the SDK.

        ``operation`` names the SDK method, for logs and for a retry policy wrapped around
        :meth:`_invoke`. ``timeout`` (seconds) cancels the call on the loop when it expires,
        retries included. ``policy`` overrides the client's retry policy for this call.
        ``lane``: see :meth:`_invoke`. ``first_attempt``: an attempt already made another way
        (its failure and ``time.monotonic()`` at its start), counted as attempt 1.
        """
        self._refuse_if_closed()
        check_timeout(timeout)
        return self._portal.call(
            lambda: self._attempts(operation, fn, lane, policy, first_attempt), timeout=timeout
        )

    def _submit(
        self, operation: str, fn: Callable[[SdkT], Awaitable[R]], *, lane: str | None = "link", policy: RetryPolicy | None = None
    ) -> PortalFuture[R]:
        """Like :meth:`_run` without blocking (for background work such as lock renewal)."""
        self._refuse_if_closed()
        return self._portal.submit(lambda: self._attempts(operation, fn, lane, policy))

    def _build_now(self) -> None:
        """Build the SDK object at once, so bad arguments fail where the sync SDK fails."""
        self._portal.call(self._build_on_loop)

    async def _build_on_loop(self) -> None:
        if self._is_closed():  # shutdown began after the caller-side check: build nothing more
            raise closed_error(self._kind)
        self._sdk()

    def _peek(self) -> SdkT | None:
        """The SDK object for reading plain attributes (single loads, atomic under the GIL)."""
        return self._sdk_obj

    def _attr(self, name: str) -> Any:
        """Read a plain attribute or property of the SDK object (no I/O, no loop hop)."""
        sdk = self._sdk_obj
        if sdk is None:
            self._build_now()
            sdk = self._sdk_obj
        return getattr(sdk, name)

    def close(self) -> None:
        """Close the link; calls in flight on other threads end with ``ClientClosedError``.

        Idempotent. Using the object afterwards raises ``ClientClosedError``. A sender's idle
        link stays open in the client for the next sender; a receiver's close returns at once
        and finishes in the background (``client.close()`` waits for it).
        """
        if self._closed:
            return
        self._closed = True
        if self._portal.closed:
            return  # client.close() releases every handle's SDK object, this one included
        try:
            if self._close_in_background:
                self._portal.submit(self._aclose).add_done_callback(self._log_close_error)
            else:
                self._portal.call(self._aclose, timeout=CLOSE_TIMEOUT)
        except ClientClosedError:
            pass  # the client closed at the same time: nothing left to close
        except Exception:
            _LOGGER.warning("Error while closing %r", self, exc_info=True)

    def _log_close_error(self, future: concurrent.futures.Future[None]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not isinstance(exc, ClientClosedError):
            _LOGGER.warning("Error while closing %r", self, exc_info=exc)
