"""Patch points on one SDK sender/receiver: link lifecycle logs, link opens and closes without
the SDK's idle waits, a socket fix, management credit, and the socket read timeout lowered while
settling (hooks ``link-log``, ``link-open``, ``keep-alive-stop``, ``close-socket``,
``mgmt-credit``, ``settle-socket-timeout``; see :mod:`._hooks`).

The aio SDK opens a link lazily inside whichever operation comes first, and after a
connection error tears it down and opens a new one on the next attempt; none of that is
visible from outside. :func:`instrument` wraps the methods the SDK uses for it, on one
instance only, so sbsync's DEBUG log says when a link is opened, replaced and closed (the
client's warm links add reused, parked and idle-closed). It also keeps the management reply
link supplied with credit, which the SDK grants once and never renews.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Callable

from . import _private
from ._hooks import available, report_missing
from ._state import link_running

__all__ = ["SettleTimeouts", "instrument"]

_LOGGER = logging.getLogger("sbsync.links")

_MARK = "_sbsync_instrumented"


def instrument(sdk: Any, label: str) -> None:
    """Hook ``sdk`` (an aio sender or receiver) once; ``label`` names it in logs.

    A warm sender's SDK object is handed from one facade to the next: it is hooked by the
    first only, so the wrappers never nest.
    """
    if getattr(sdk, _MARK, False):
        return
    setattr(sdk, _MARK, True)
    if available("link-log") and hasattr(sdk, "_open"):  # a client has none of these
        _log_opens(sdk, label)
    if available("link-open") and hasattr(sdk, "_create_handler"):
        _open_without_polling(sdk)
    if (available("close-socket") or available("keep-alive-stop")) and hasattr(sdk, "_close_handler"):
        _wrap_close_handler(sdk, label)
    if available("mgmt-credit") and hasattr(sdk, "_mgmt_request_response"):
        _renew_management_credit(sdk, label)


def _log_opens(sdk: Any, label: str) -> None:
    open_link = sdk._open
    opened = 0

    async def open_and_log(*args: Any, **kwargs: Any) -> None:
        nonlocal opened
        if link_running(sdk):
            return await open_link(*args, **kwargs)  # open already: the SDK returns at once
        started = time.monotonic()
        await open_link(*args, **kwargs)
        if link_running(sdk):
            opened += 1
            took = (time.monotonic() - started) * 1000
            if opened == 1:
                _LOGGER.debug("%s opened (%.0f ms)", label, took)
            else:
                _LOGGER.debug("%s replaced: a new link opened after the last one broke (%.0f ms)", label, took)

    sdk._open = open_and_log


#: Readiness checks made back to back before the SDK's own 50 ms sleep: more than a link
#: handshake has frames, so the SDK sleeps only if the broker is slow to answer.
READY_CHECKS = 16


def _open_without_polling(sdk: Any) -> None:
    """Make the SDK object's link opens read the handshake as fast as the broker answers.

    The SDK opens a link by calling ``client_ready_async()`` until it is true, sleeping 50 ms
    between calls, and each call reads at most one frame (waiting for it up to the socket read
    timeout): the ~9 frames of connection, CBS and link set-up take ~0.45 s on any network.
    The wrapper makes one call check readiness up to :data:`READY_CHECKS` times; the SDK's
    deadline (it wraps the call) still bounds it.
    """
    create_handler = sdk._create_handler

    def create_handler_and_hook(*args: Any, **kwargs: Any) -> None:
        create_handler(*args, **kwargs)
        handler = getattr(sdk, "_handler", None)
        if not isinstance(handler, _private.AMQPClientAsync):
            return
        ready = handler.client_ready_async

        async def ready_without_polling() -> bool:
            for _ in range(READY_CHECKS):
                if await ready():
                    return True
            return False

        handler.client_ready_async = ready_without_polling

    sdk._create_handler = create_handler_and_hook


def _stop_keep_alive(handler: Any) -> None:
    """pyamqp's ``close_async`` ends by awaiting its keep-alive task, which looks for the
    shutdown once a second: a close would wait ~0.5 s on average for nothing. The task is
    cancelled instead and forgotten, so the close does not await it. If the task is in the
    middle of a read, that read is shielded and ends by itself."""
    task = getattr(handler, "_keep_alive_thread", None)
    if isinstance(task, asyncio.Future):
        handler._keep_alive_thread = None
        task.cancel()
    elif handler is not None and not hasattr(handler, "_keep_alive_thread"):
        report_missing("keep-alive-stop", ": the handler has no _keep_alive_thread")


def _wrap_close_handler(sdk: Any, label: str) -> None:
    """Make the SDK object's handler teardown log itself, skip the keep-alive wait
    (:func:`_stop_keep_alive`) and close its socket.

    After a connection error the SDK tears its handler down with the AMQP connection already
    in state END, and pyamqp's disconnect then skips closing the transport: the socket stays
    open (CLOSE_WAIT) until the garbage collector finds it, which may be never while a
    traceback (a logged exception) still references it. The wrapper closes the writer pyamqp
    left open.
    """
    close_handler = sdk._close_handler

    async def close_handler_and_socket() -> None:
        handler = getattr(sdk, "_handler", None)
        connection = getattr(handler, "_connection", None)
        if available("keep-alive-stop"):
            _stop_keep_alive(handler)
        try:
            await close_handler()
        finally:
            if available("close-socket"):
                _close_socket(connection)
            if handler is not None:
                _LOGGER.debug("%s closed", label)

    sdk._close_handler = close_handler_and_socket


def _close_socket(connection: Any) -> None:
    transport = getattr(connection, "_transport", None)
    writer = getattr(transport, "writer", None)
    if writer is not None:
        writer.close()
    elif connection is not None and transport is None and not hasattr(connection, "_transport"):
        report_missing("close-socket", ": the connection has no _transport")


def _renew_management_credit(sdk: Any, label: str) -> None:
    """Top up the credit of the SDK object's ``$management`` reply link once half is spent.

    pyamqp attaches that link with 10,000 credits and never sends another flow, so a broker
    that honours credit (the emulator does; AMQP requires it) stops answering after 10,000
    management calls on one link -- session state, lock renewals, peeks -- and the aio SDK
    then waits forever. A long-lived session receiver renewing its lock and checkpointing
    state gets there in hours.
    """
    request = sdk._mgmt_request_response

    async def request_and_renew_credit(*args: Any, **kwargs: Any) -> Any:
        response = await request(*args, **kwargs)
        handler = getattr(sdk, "_handler", None)
        if handler is not None and not hasattr(handler, "_mgmt_links"):
            report_missing("mgmt-credit", ": the handler has no _mgmt_links")
        for operation in list(getattr(handler, "_mgmt_links", {}).values()):
            link = getattr(getattr(operation, "_mgmt_link", None), "_response_link", None)
            credit, full = getattr(link, "current_link_credit", None), getattr(link, "link_credit", None)
            if link is not None and isinstance(credit, int) and isinstance(full, int) and credit <= full // 2:
                await link.flow()  # back to full credit
                _LOGGER.debug("%s: management reply link credit renewed (%d left)", label, credit)
        return response

    sdk._mgmt_request_response = request_and_renew_credit


#: Socket read timeout of a receiver's connection while settlements on it are in flight (the
#: SDK's default is 0.2 s). A receive waiting for messages holds the socket, writes included,
#: until its read times out, and a settlement whose reply that receive read waits a whole
#: timeout more in its own read: at 0.2 s each, settling alongside a receive takes up to
#: 0.4 s. Lowered only meanwhile, an idle receiver still wakes five times a second, not 100.
SETTLING_SOCKET_TIMEOUT = 0.01


class SettleTimeouts:
    """Loop-thread state of one receiver: settlements in flight, and the socket timeouts they
    lowered (hook ``settle-socket-timeout``)."""

    def __init__(self) -> None:
        self._count = 0
        self._saved: tuple[Any, float, Any, float] | None = None

    async def run(self, sdk: Any, fn: Callable[[Any], Awaitable[None]]) -> None:
        """``fn(sdk)`` with the socket read timeout lowered while it runs; the last settlement
        in flight restores it."""
        handler: Any = getattr(sdk, "_handler", None)
        connection = getattr(handler, "_connection", None)
        if connection is None or not available("settle-socket-timeout"):
            await fn(sdk)  # not open yet (the SDK refuses), or the knob is gone
            return
        if not isinstance(getattr(connection, "_socket_timeout", None), (int, float)) or not isinstance(
            getattr(handler, "_socket_timeout", None), (int, float)
        ):
            report_missing("settle-socket-timeout", ": the open handler has no numeric _socket_timeout")
            await fn(sdk)
            return
        if self._count == 0:
            self._saved = (handler, handler._socket_timeout, connection, connection._socket_timeout)
            handler._socket_timeout = min(handler._socket_timeout, SETTLING_SOCKET_TIMEOUT)
            connection._socket_timeout = min(connection._socket_timeout, SETTLING_SOCKET_TIMEOUT)
        self._count += 1
        try:
            await fn(sdk)
        finally:
            self._count -= 1
            if self._count == 0 and self._saved is not None:
                saved_handler, handler_timeout, saved_connection, connection_timeout = self._saved
                self._saved = None
                saved_handler._socket_timeout = handler_timeout
                saved_connection._socket_timeout = connection_timeout
                # A connection reopened meanwhile was built with the lowered value: reset it too.
                current = getattr(saved_handler, "_connection", None)
                if current is not None:
                    current._socket_timeout = connection_timeout
