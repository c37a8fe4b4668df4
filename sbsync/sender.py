"""``ServiceBusSender``: the blocking, thread-safe twin of ``azure.servicebus.ServiceBusSender``."""

from __future__ import annotations

import datetime
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Union, cast

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusSender as AsyncServiceBusSender
from azure.servicebus.amqp import AmqpAnnotatedMessage

from ._group_send import SendGroup, groupable
from ._handle import Handle, check_count, check_sequence_numbers, check_timeout, check_type
from ._portal import Waiter
from .exceptions import ClientClosedError, closed_error

if TYPE_CHECKING:
    from .client import ServiceBusClient

__all__ = ["MessageTypes", "ServiceBusSender"]

MessageTypes = Union[
    Mapping[str, Any],
    ServiceBusMessage,
    AmqpAnnotatedMessage,
    Iterable[Mapping[str, Any]],
    Iterable[ServiceBusMessage],
    Iterable[AmqpAnnotatedMessage],
]


class ServiceBusSender(Handle[AsyncServiceBusSender]):
    """Sends to one queue or topic; safe to share between threads.

    Get one from ``ServiceBusClient.get_queue_sender``/``get_topic_sender``. Threads share
    the link: single messages sent concurrently travel together in one transfer (group
    commit), each caller still getting its own outcome.
    ``timeout`` (seconds) bounds each call: on expiry the send is cancelled and
    ``OperationTimeoutError`` raised.
    """

    _kind = "sender"
    _guard_open = False  # every operation (and the group flusher) holds the "link" lane

    def __init__(
        self,
        client: ServiceBusClient,
        build: Callable[[], AsyncServiceBusSender],
        *,
        entity: str,
        link_key: Hashable | None,
    ) -> None:
        super().__init__(client._portal, build, owner=client)
        self._client = client  # keeps the client (and its loop) alive while this is in use
        self._link_key = link_key
        self._namespace = client.fully_qualified_namespace
        self._entity = entity
        self._retry_policy = client._retry_policy
        self._group = SendGroup()

    def _on_new_sdk(self) -> None:
        self._group = SendGroup()

    async def _aclose(self) -> None:
        await super()._aclose()
        self._group.cancel()

    async def _release(self, sdk: AsyncServiceBusSender, *, interrupted: bool) -> None:
        # An idle link goes back to the client for the next sender (see _warm_links).
        if interrupted or self._group.busy or not self._client._park(self._link_key, sdk):
            self._group.cancel()
            await sdk.close()

    def __repr__(self) -> str:
        closed = " closed" if self._is_closed() else ""
        return f"<sbsync.ServiceBusSender entity={self._entity!r} namespace={self._namespace!r}{closed}>"

    def __enter__(self) -> ServiceBusSender:
        self._run("open", lambda s: s.__aenter__())
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    @property
    def client_identifier(self) -> str:
        """The identifier of this sender's AMQP link."""
        return self._attr("client_identifier")

    def send_messages(
        self,
        message: MessageTypes | ServiceBusMessageBatch,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Send a message, a list of messages or a batch; returns once the broker accepted it."""
        if groupable(message, kwargs):
            single = cast(ServiceBusMessage, message)
            if self._group.busy:
                self._send_joined(single, timeout)
                return
            self._run(
                "send_messages",
                lambda s: self._group.send(s, single, self._lane("link")),
                timeout=timeout,
                lane=None,
            )
        else:
            self._run("send_messages", lambda s: s.send_messages(message, timeout=timeout, **kwargs), timeout=timeout)

    def _send_joined(self, message: ServiceBusMessage, timeout: float | None) -> None:
        """Others are sending: join their group from this thread, with no task of this call's
        own (see ``Portal.enlist``); a failure is the first attempt of a send under the retry
        policy, which goes on the usual way."""
        self._refuse_if_closed()
        check_timeout(timeout)
        started = time.monotonic()
        try:
            self._portal.enlist(
                lambda waiter: self._enter_group(message, waiter), self._leave_group, timeout=timeout
            )
            return
        except ClientClosedError:
            raise
        except Exception as exc:
            failure = exc
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:  # this call's own timeout, or no time left for another attempt
            with self._mapped_errors("send_messages"):
                raise failure
        self._run(
            "send_messages",
            lambda s: self._group.send(s, message, self._lane("link")),
            timeout=left,
            lane=None,
            first_attempt=(failure, started),
        )

    def _enter_group(self, message: ServiceBusMessage, waiter: Waiter) -> None:
        """Loop thread: hand ``waiter`` (its caller's message) to the group commit."""
        if self._is_closed():
            raise closed_error(self._kind)
        sdk = self._sdk()
        self._group.enlist(sdk, message, waiter, self._lane("link"))

    def _leave_group(self, waiter: Waiter) -> None:
        self._group.leave(waiter)

    def schedule_messages(
        self,
        messages: MessageTypes,
        schedule_time_utc: datetime.datetime,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """Schedule messages for ``schedule_time_utc``; returns their sequence numbers."""
        check_type(schedule_time_utc, datetime.datetime, "schedule_time_utc")
        return self._run(
            "schedule_messages",
            lambda s: s.schedule_messages(messages, schedule_time_utc, timeout=timeout, **kwargs),
            timeout=timeout,
        )

    def cancel_scheduled_messages(
        self,
        sequence_numbers: int | list[int],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Cancel scheduled messages by sequence number."""
        check_sequence_numbers(sequence_numbers)
        self._run(
            "cancel_scheduled_messages",
            lambda s: s.cancel_scheduled_messages(sequence_numbers, timeout=timeout, **kwargs),
            timeout=timeout,
        )

    def create_message_batch(
        self, max_size_in_bytes: int | None = None, *, timeout: float | None = None
    ) -> ServiceBusMessageBatch:
        """An empty batch sized for this link (opens the link to learn its maximum)."""
        check_count(max_size_in_bytes, "max_size_in_bytes", optional=True)
        return self._run(
            "create_message_batch", lambda s: s.create_message_batch(max_size_in_bytes), timeout=timeout
        )
