"""Helpers the workload modules share: the aio loop, messages, filling queues, timing calls."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Callable, TypeVar

import azure.servicebus.aio as aio_sdk
from azure.servicebus import ServiceBusClient as SyncClient
from azure.servicebus import ServiceBusMessage, ServiceBusSender

from bench._harness import BODY
from bench.emulator_bench import BATCH

T = TypeVar("T")

__all__ = [
    "SHORT_TTL",
    "AioLoop",
    "Filler",
    "close_blocking",
    "messages",
    "open_aio",
    "open_blocking",
    "timed",
    "timed_async",
]


def open_blocking(sdk: Any, conn_str: str, link: Callable[[Any], Any]) -> tuple[Any, Any]:
    """A client of ``sdk`` (the sync SDK's module or sbsync) and its sender or receiver
    ``link(client)``, with the link open."""
    client = sdk.ServiceBusClient.from_connection_string(conn_str)
    handler = link(client)
    handler.__enter__()
    return client, handler


def close_blocking(handler: Any, client: Any) -> None:
    """Close a sender or receiver of the sync SDK or sbsync, then its client."""
    try:
        handler.close()
    finally:
        client.close()


async def open_aio(conn_str: str, link: Callable[[Any], Any]) -> tuple[Any, Any]:
    """An aio SDK client and its sender or receiver ``link(client)``, with the link open."""
    client = aio_sdk.ServiceBusClient.from_connection_string(conn_str)
    handler = link(client)
    await handler.__aenter__()
    return client, handler


class AioLoop:
    """An event loop driven by the calling (main) thread: the ``aio`` implementation awaits
    the async SDK directly, with no thread hop. (``asyncio.run`` per repetition would need a
    new client and links every time; one loop driven with ``run_until_complete`` is the same
    code path without that cost.)"""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close_all(self, handler: Any, client: Any) -> None:
        """Close an aio sender or receiver, then its client, then this loop."""

        async def close_handles() -> None:
            try:
                await handler.close()
            finally:
                await client.close()

        try:
            self.run(close_handles())
        finally:
            self.close()

    def close(self) -> None:
        """As ``asyncio.run`` ends: cancel what the SDK left running (keep-alive tasks of
        links it failed to open), let it unwind, then close the loop."""
        try:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


#: Time to live of messages nobody receives (send workloads): the emulator drops them soon,
#: so a full run does not pile up hundreds of MB in it.
SHORT_TTL = datetime.timedelta(seconds=10)


def messages(
    count: int, session_id: str | None = None, ttl: datetime.timedelta | None = None
) -> list[ServiceBusMessage]:
    return [ServiceBusMessage(BODY, session_id=session_id, time_to_live=ttl) for _ in range(count)]


class Filler:
    """Puts 1 KB messages on queues with the sync SDK, outside timed regions; one client for
    the whole workload, so filling costs no link opens per repetition."""

    def __init__(self, conn_str: str) -> None:
        self._client = SyncClient.from_connection_string(conn_str)
        self._senders: dict[str, ServiceBusSender] = {}

    def fill(self, queue: str, count: int, session_id: str | None = None) -> None:
        sender = self._senders.get(queue)
        if sender is None:
            sender = self._senders[queue] = self._client.get_queue_sender(queue)
        for start in range(0, count, BATCH):
            sender.send_messages(messages(min(BATCH, count - start), session_id))

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()
        self._client.close()


def timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


async def timed_async(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await call()
        samples.append(clock() - start)
    return samples
