"""Group commit for one sender: single messages sent by concurrent callers travel together.

While one transfer is in flight, the messages other threads send queue up; the next transfer
carries them all as one batch (up to the link's size limit, and only messages with the same
session id and partition key, which Service Bus requires of a batch). Each caller still gets
its own outcome: the batch's, raised as its own copy of the exception.

One flusher task per sender drains the queue, holding the sender's ``"link"`` lane for each
transfer, so group sends never interleave with the sender's other operations.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import deque
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import MessageSizeExceededError

__all__ = ["SendGroup", "groupable"]

_LOGGER = logging.getLogger(__name__)


def groupable(message: Any, kwargs: dict[str, Any]) -> bool:
    """Only a lone ``ServiceBusMessage`` joins a group; lists and batches are the caller's own."""
    return not kwargs and type(message) is ServiceBusMessage


def _own_copy(exc: BaseException) -> BaseException:
    """A copy per caller: callers raise in their own threads, each growing its own traceback."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


class _Entry:
    __slots__ = ("future", "key", "message")

    def __init__(self, message: ServiceBusMessage, future: asyncio.Future[None]) -> None:
        self.message = message
        self.key = (message.session_id, message.partition_key)
        self.future = future


class SendGroup:
    """Loop-thread state of one sender's group commit (rebuilt with the SDK sender)."""

    def __init__(self) -> None:
        self._queue: deque[_Entry] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, sdk: Any, message: ServiceBusMessage, lane: asyncio.Lock) -> None:
        """Queue ``message`` and wait until a transfer carrying it is settled."""
        entry = _Entry(message, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(sdk, lane))
        try:
            # Shielded: one caller giving up must not cancel a transfer that carries others.
            await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            if entry in self._queue:
                self._queue.remove(entry)  # not taken yet: it must not go out after its caller gave up
            raise

    @property
    def busy(self) -> bool:
        """Whether messages are queued or a transfer is in flight."""
        return bool(self._queue) or (self._flusher is not None and not self._flusher.done())

    def cancel(self) -> None:
        """Loop thread: stop the flusher (the sender is closing)."""
        flusher = self._flusher
        # After a fork the flusher may be the parent's, on a loop that no longer runs here.
        if flusher is not None and flusher.get_loop() is asyncio.get_running_loop():
            flusher.cancel()

    async def _flush(self, sdk: Any, lane: asyncio.Lock) -> None:
        while self._queue:
            async with lane:
                if not self._queue:
                    return
                taken, payload = await self._take(sdk)
                try:
                    await sdk.send_messages(payload)
                except BaseException as exc:
                    for entry in taken:
                        if entry.future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            entry.future.cancel()
                        else:
                            entry.future.set_exception(_own_copy(exc) if len(taken) > 1 else exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for entry in taken:
                        if not entry.future.done():
                            entry.future.set_result(None)

    async def _take(self, sdk: Any) -> tuple[list[_Entry], Any]:
        """Remove the next group from the queue: the head, and what can travel with it."""
        head = self._queue.popleft()
        if not any(entry.key == head.key for entry in self._queue):
            return [head], head.message
        batch = await sdk.create_message_batch()
        try:
            batch.add_message(head.message)
        except MessageSizeExceededError:
            return [head], head.message  # too big even alone: the SDK reports it to this caller
        taken = [head]
        for entry in list(self._queue):
            if entry.key != head.key:
                continue
            try:
                batch.add_message(entry.message)
            except MessageSizeExceededError:
                break  # the batch is full; the rest go in the next transfer
            self._queue.remove(entry)
            taken.append(entry)
        _LOGGER.debug("sending %d messages in one transfer", len(taken))
        return taken, batch if len(taken) > 1 else head.message
