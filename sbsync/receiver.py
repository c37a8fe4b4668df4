"""``ServiceBusReceiver``: the blocking, thread-safe twin of ``azure.servicebus.ServiceBusReceiver``."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any, Callable

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusReceiver as AsyncServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError, SessionLockLostError

from ._handle import Handle, check_count, check_sequence_numbers, check_timeout, check_type
from ._lost_locks import raise_if_lock_lost
from ._sdk import (
    SettleTimeouts,
    is_deferred,
    is_handler_failure,
    link_running,
    link_shut_down,
    mark_session_lock_lost,
    require_deferred_lock_token,
    sdk_session,
    session_lock_lost,
)
from .exceptions import ClientClosedError
from .session import ServiceBusSession

if TYPE_CHECKING:
    from .client import ServiceBusClient

__all__ = ["ServiceBusReceiver"]

#: A receive whose turn came after its deadline still looks briefly for messages already there.
_MIN_RECEIVE_WAIT = 0.01


def _remaining(deadline: float | None) -> float | None:
    """Loop thread: what is left of a receive's wait once it got its turn (at least 10 ms)."""
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), _MIN_RECEIVE_WAIT)


def _settle_lane(message: Any) -> str | None:
    """Settling on the receive link sends no transfer and may overlap other calls; a deferred
    message is settled by a management request, which must take the ``"link"`` lane."""
    return "link" if is_deferred(message) else None


#: Operations on one received message's lock (it lives and dies with the receiving link).
_MESSAGE_LOCK_OPERATIONS = frozenset(
    {"complete_message", "abandon_message", "defer_message", "dead_letter_message", "renew_message_lock"}
)


class ServiceBusReceiver(Handle[AsyncServiceBusReceiver]):
    """Receives from a queue, a subscription, one of their sessions or sub-queues; thread-safe.

    Get one from ``ServiceBusClient.get_queue_receiver``/``get_subscription_receiver``.
    Receives from different threads take turns; settlement and lock renewal from other
    threads run alongside them. ``for message in receiver`` yields messages until none arrives
    for ``max_wait_time`` (forever when it is None), or until the receiver is closed.
    ``close()`` from another thread ends a blocked receive with ``ClientClosedError``.
    The keyword-only ``timeout`` (seconds) bounds a call: on expiry it is cancelled and
    ``OperationTimeoutError`` raised.

    ``close()`` returns at once: the link's detach goes out on the loop straight away, so the
    broker releases the session and the unsettled message locks within milliseconds, while
    the rest of the SDK's teardown runs in the background; ``client.close()`` waits for it.
    """

    _kind = "receiver"
    _close_in_background = True

    def __init__(
        self,
        client: ServiceBusClient,
        build: Callable[[], AsyncServiceBusReceiver],
        *,
        entity: str,
        session: bool,
        auto_lock_renewer: Any | None,
        max_wait_time: float | None,
        receive_mode: ServiceBusReceiveMode | str,
    ) -> None:
        super().__init__(client._portal, build, owner=client)
        self._client = client  # keeps the client (and its loop) alive while this is in use
        self._namespace = client.fully_qualified_namespace
        self._entity = entity
        self._retry_policy = client._retry_policy
        self._session = ServiceBusSession(self) if session else None
        self._auto_lock_renewer = auto_lock_renewer
        self._register_session = threading.Lock()
        self._session_registered = False
        self._max_wait_time = max_wait_time
        self._locks_messages = receive_mode != ServiceBusReceiveMode.RECEIVE_AND_DELETE
        # Loop thread: settlements in flight lower the socket read timeout (see SettleTimeouts).
        self._settle_timeouts = SettleTimeouts()

    def __repr__(self) -> str:
        closed = " closed" if self._is_closed() else ""
        return f"<sbsync.ServiceBusReceiver entity={self._entity!r} namespace={self._namespace!r}{closed}>"

    def __enter__(self) -> ServiceBusReceiver:
        self._run("open", lambda r: r.__aenter__())
        self._renew_locks_of(())
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    # -- properties ---------------------------------------------------------------------------

    @property
    def session(self) -> ServiceBusSession:
        """The session this receiver holds; None for a receiver without ``session_id``."""
        return self._session  # type: ignore[return-value]

    @property
    def client_identifier(self) -> str:
        """The identifier of this receiver's AMQP link."""
        return self._attr("client_identifier")

    # -- receiving ------------------------------------------------------------------------------

    def receive_messages(
        self,
        max_message_count: int | None = 1,
        max_wait_time: float | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ServiceBusReceivedMessage]:
        """Up to ``max_message_count`` messages; an empty list if none arrives in ``max_wait_time``.

        Threads sharing the receiver take turns; time spent waiting for one's turn counts
        against ``max_wait_time``, so the call still returns within it (give or take 10 ms).
        """
        check_count(max_message_count, "max_message_count", optional=True)
        check_timeout(max_wait_time, "max_wait_time")
        wait = self._max_wait_time if max_wait_time is None else max_wait_time
        deadline = None if wait is None else time.monotonic() + wait
        messages = self._run(
            "receive_messages",
            lambda r: r.receive_messages(max_message_count, _remaining(deadline)),
            timeout=timeout,
            lane="receive",
            # No retry starts after the caller's max_wait_time is up.
            policy=None if wait is None else self._retry_policy.replace(deadline=wait),
        )
        return self._renew_locks_of(messages)

    def __iter__(self) -> Iterator[ServiceBusReceivedMessage]:
        while True:
            try:
                message = self.__next__()
            except StopIteration:
                return
            except ClientClosedError:
                if self._closed:
                    return  # closed by another thread: the stream just ends
                raise
            yield message

    def __next__(self) -> ServiceBusReceivedMessage:
        try:
            message = self._run("next", lambda r: r.__anext__(), lane="receive")
        except StopAsyncIteration:
            raise StopIteration from None
        self._renew_locks_of((message,))
        return message

    next = __next__

    def peek_messages(
        self,
        max_message_count: int = 1,
        *,
        sequence_number: int = 0,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[ServiceBusReceivedMessage]:
        """Browse messages without locking them, from ``sequence_number`` on."""
        check_count(max_message_count, "max_message_count")
        check_type(sequence_number, int, "sequence_number")
        return self._run(
            "peek_messages",
            lambda r: r.peek_messages(max_message_count, sequence_number=sequence_number, timeout=timeout, **kwargs),
            timeout=timeout,
        )

    def receive_deferred_messages(
        self,
        sequence_numbers: int | list[int],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[ServiceBusReceivedMessage]:
        """Receive deferred messages by sequence number."""
        check_sequence_numbers(sequence_numbers)
        messages = self._run(
            "receive_deferred_messages",
            lambda r: r.receive_deferred_messages(sequence_numbers, timeout=timeout, **kwargs),
            timeout=timeout,
        )
        return self._renew_locks_of(messages)

    # -- settlement -----------------------------------------------------------------------------

    def complete_message(self, message: ServiceBusReceivedMessage, *, timeout: float | None = None) -> None:
        """Complete the message: it is removed from the entity."""
        raise_if_lock_lost(message)
        self._settle("complete_message", message, lambda r: r.complete_message(message), timeout)

    def abandon_message(self, message: ServiceBusReceivedMessage, *, timeout: float | None = None) -> None:
        """Abandon the message: its lock is released and it can be received again."""
        raise_if_lock_lost(message)
        self._settle("abandon_message", message, lambda r: r.abandon_message(message), timeout)

    def defer_message(self, message: ServiceBusReceivedMessage, *, timeout: float | None = None) -> None:
        """Defer the message: only ``receive_deferred_messages`` can receive it again."""
        raise_if_lock_lost(message)
        self._settle("defer_message", message, lambda r: r.defer_message(message), timeout)

    def dead_letter_message(
        self,
        message: ServiceBusReceivedMessage,
        reason: str | None = None,
        error_description: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Move the message to the dead-letter sub-queue, with an optional reason and description."""
        raise_if_lock_lost(message)
        self._settle(
            "dead_letter_message", message, lambda r: r.dead_letter_message(message, reason, error_description), timeout
        )

    def renew_message_lock(
        self,
        message: ServiceBusReceivedMessage,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> datetime.datetime:
        """Renew the message's lock; returns the new expiry (UTC)."""
        check_type(message, ServiceBusReceivedMessage, "message")
        raise_if_lock_lost(message)
        require_deferred_lock_token(message)
        return self._run(
            "renew_message_lock",
            lambda r: r.renew_message_lock(message, timeout=timeout, **kwargs),
            timeout=timeout,
        )

    def _settle(
        self,
        operation: str,
        message: ServiceBusReceivedMessage,
        fn: Callable[[AsyncServiceBusReceiver], Awaitable[None]],
        timeout: float | None,
    ) -> None:
        require_deferred_lock_token(message)
        lane = _settle_lane(message)
        if lane is not None:  # a deferred message: settled by a management request
            self._run(operation, fn, timeout=timeout, lane=lane)
        else:
            self._run(operation, lambda r: self._settle_timeouts.run(r, fn), timeout=timeout, lane=None)

    # -- what a lost connection takes with it ----------------------------------------------------

    def _lost_with_link(self, operation: str, cause: BaseException | None = None) -> ServiceBusError | None:
        """The error ``operation`` must end with once the SDK has closed this receiver's link
        after a connection error, or after a failure on a link the broker had detached: a
        session is gone for good, and so is the lock of any message received on that link.
        None if the operation may still succeed (a receive reconnects)."""
        sdk = self._peek()
        if sdk is None or link_shut_down(sdk):
            return None
        session = sdk_session(sdk)
        if session is not None:
            if not session_lock_lost(session):
                if cause is None or not is_handler_failure(cause) or link_running(sdk):
                    return None
                # The SDK marks the session lost after a connection error only; a session lock
                # is bound to its link whatever closed it, so mark it here too: every later
                # call raises SessionLockLostError instead of silently accepting the session anew.
                mark_session_lock_lost(session)
                return SessionLockLostError(
                    message="The session's link was closed (the broker detached it), and the session lock "
                    "with it. Accept the session again with a new receiver.",
                    error=cause,
                )
            return SessionLockLostError(
                message="The connection was lost, and the session lock with it. "
                "Accept the session again with a new receiver.",
                error=cause,
            )
        if operation in _MESSAGE_LOCK_OPERATIONS and not link_running(sdk):
            return MessageLockLostError(
                message="The link was lost (a dropped connection or a detach by the broker), and the message "
                "lock with it. Receive the message again.",
                error=cause,
            )
        return None

    # -- lock renewal hand-off ------------------------------------------------------------------

    def _renew_locks_of(self, messages: Any) -> Any:
        """Register what this receiver locked with its ``auto_lock_renewer``, as the SDK does."""
        renewer = self._auto_lock_renewer
        if renewer is None:
            return messages
        if self._session is not None:
            sdk = self._peek()
            if sdk is not None and link_running(sdk):
                with self._register_session:
                    if self._session_registered:
                        return messages
                    self._session_registered = True
                renewer.register(self, self._session)
        elif self._locks_messages:
            for message in messages:
                renewer.register(self, message)
        return messages
