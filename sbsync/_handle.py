"""What every facade object shares: its SDK object, and the one path into the loop.

A facade object (client, sender, receiver) holds a :class:`~sbsync._portal.Portal` and a
builder for its ``azure.servicebus.aio`` counterpart. The SDK object is built on the loop
thread, once per portal generation (a forked child rebuilds its own), and is only ever
touched there. Every SDK call goes through :meth:`Handle._run`.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
from collections.abc import Awaitable
from typing import Any, Callable, Generic, TypeVar

from ._portal import Portal, PortalFuture
from ._retry import RetryPolicy, is_idempotent, run_with_retry
from .exceptions import ClientClosedError

__all__ = ["CLOSE_TIMEOUT", "Handle", "check_count", "check_sequence_numbers", "check_timeout", "check_type"]

_LOGGER = logging.getLogger(__name__)

SdkT = TypeVar("SdkT")
R = TypeVar("R")

#: Upper bound for closing one SDK object (the SDK itself takes ~0.5 s per link).
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


class Handle(Generic[SdkT]):
    """Base of the facade classes: SDK object per generation, open guard, close, ``_run``."""

    _kind = "handler"
    #: Receivers open their link lazily inside whichever operation comes first, from several
    #: lanes: until it is open they take the open lock. (A sender's operations share one lane.)
    _guard_open = True

    def __init__(self, portal: Portal, build: Callable[[], SdkT]) -> None:
        self._portal = portal
        self._build = build  # runs on the loop thread
        self._sdk_obj: SdkT | None = None
        self._sdk_gen = -1
        self._closed = False
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
            self._sdk_gen = generation
            self._open_lock = asyncio.Lock()
            self._lanes = {}
            self._inflight = set()
            self._on_new_sdk()
        return self._sdk_obj  # type: ignore[return-value]

    def _on_new_sdk(self) -> None:
        """Loop thread: hook for subclasses' per-SDK-object state."""

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
        if self._closed:  # closed after this call passed the caller-side check
            raise ClientClosedError(f"The {self._kind} is closed.")
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
                raise ClientClosedError(f"The {self._kind} was closed while the call was in progress.") from None
            raise
        finally:
            self._inflight.discard(task)

    async def _attempts(
        self, operation: str, fn: Callable[[SdkT], Awaitable[R]], lane: str | None, policy: RetryPolicy | None
    ) -> R:
        """Loop thread: :meth:`_invoke` under the retry policy, the one place attempts are counted.

        Each attempt takes its lane anew, so a backoff wait never holds up the lane.
        """
        return await run_with_retry(
            policy or self._retry_policy,
            operation,
            lambda: self._invoke(operation, fn, lane),
            idempotent=is_idempotent(operation),
            give_up=lambda: self._is_closed() or self._retry_futile(),
        )

    def _retry_futile(self) -> bool:
        """Whether the SDK object is past saving, so another attempt cannot help."""
        return False

    async def _guarded(self, sdk: SdkT, fn: Callable[[SdkT], Awaitable[R]]) -> R:
        if self._guard_open and not getattr(sdk, "_running", True):
            async with self._open_lock:  # type: ignore[union-attr]
                return await fn(sdk)
        return await fn(sdk)

    async def _aclose(self) -> None:
        """Loop thread: cancel this handle's calls in flight, then release its SDK object."""
        if self._sdk_obj is None or self._sdk_gen != self._portal.generation:
            return  # never built, or built by the parent process: nothing of ours to close
        current = asyncio.current_task()
        pending = [t for t in self._inflight if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT / 2)
        await self._release(self._sdk_obj, interrupted=bool(pending))

    async def _release(self, sdk: SdkT, *, interrupted: bool) -> None:
        """Loop thread: done with ``sdk`` (``interrupted``: calls on it were cancelled)."""
        await sdk.close()  # type: ignore[attr-defined]

    # -- caller side ----------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self._closed or self._portal.closed

    def _run(
        self,
        operation: str,
        fn: Callable[[SdkT], Awaitable[R]],
        *,
        timeout: float | None = None,
        lane: str | None = "link",
        policy: RetryPolicy | None = None,
    ) -> R:
        """Block until ``fn(sdk)`` has run on the loop; the single way facade methods reach the SDK.

        ``operation`` names the SDK method, for logs and for a retry policy wrapped around
        :meth:`_invoke`. ``timeout`` (seconds) cancels the call on the loop when it expires,
        retries included. ``policy`` overrides the client's retry policy for this call.
        ``lane``: see :meth:`_invoke`.
        """
        if self._is_closed():
            raise ClientClosedError(f"The {self._kind} is closed.")
        check_timeout(timeout)
        return self._portal.call(lambda: self._attempts(operation, fn, lane, policy), timeout=timeout)

    def _submit(
        self, operation: str, fn: Callable[[SdkT], Awaitable[R]], *, lane: str | None = "link", policy: RetryPolicy | None = None
    ) -> PortalFuture[R]:
        """Like :meth:`_run` without blocking (for background work such as lock renewal)."""
        if self._is_closed():
            raise ClientClosedError(f"The {self._kind} is closed.")
        return self._portal.submit(lambda: self._attempts(operation, fn, lane, policy))

    def _build_now(self) -> None:
        """Build the SDK object at once, so bad arguments fail where the sync SDK fails."""
        self._portal.call(self._build_on_loop)

    async def _build_on_loop(self) -> None:
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

        Idempotent. Using the object afterwards raises ``ClientClosedError``.
        """
        if self._closed:
            return
        self._closed = True
        if self._portal.closed:
            return
        try:
            self._portal.call(self._aclose, timeout=CLOSE_TIMEOUT)
        except ClientClosedError:
            pass  # the client closed at the same time: nothing left to close
        except Exception:
            _LOGGER.warning("Error while closing %r", self, exc_info=True)
