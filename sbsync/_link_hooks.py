"""Hooks on one SDK sender/receiver: DEBUG logs of its link's lifecycle, and a socket fix.

The aio SDK opens a link lazily inside whichever operation comes first, and after a
connection error tears it down and opens a new one on the next attempt; none of that is
visible from outside. :func:`instrument` wraps the methods the SDK uses for it, on one
instance only, so sbsync's DEBUG log says when a link is opened, replaced and closed (the
client's warm links add reused, parked and idle-closed). It also keeps the management reply
link supplied with credit, which the SDK grants once and never renews.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["instrument"]

_LOGGER = logging.getLogger("sbsync.links")

_MARK = "_sbsync_instrumented"


def instrument(sdk: Any, label: str) -> None:
    """Hook ``sdk`` (an aio sender or receiver) once; ``label`` names it in logs.

    A warm sender's SDK object is handed from one facade to the next: it is hooked by the
    first only, so the wrappers never nest.
    """
    if getattr(sdk, _MARK, False) or not hasattr(sdk, "_close_handler"):
        return
    setattr(sdk, _MARK, True)
    _log_opens(sdk, label)
    _close_socket_after_handler(sdk, label)
    _renew_management_credit(sdk, label)


def _log_opens(sdk: Any, label: str) -> None:
    open_link = sdk._open
    opened = 0

    async def open_and_log(*args: Any, **kwargs: Any) -> None:
        nonlocal opened
        if getattr(sdk, "_running", False):
            return await open_link(*args, **kwargs)  # open already: the SDK returns at once
        started = time.monotonic()
        await open_link(*args, **kwargs)
        if getattr(sdk, "_running", False):
            opened += 1
            took = (time.monotonic() - started) * 1000
            if opened == 1:
                _LOGGER.debug("%s opened (%.0f ms)", label, took)
            else:
                _LOGGER.debug("%s replaced: a new link opened after the last one broke (%.0f ms)", label, took)

    sdk._open = open_and_log


def _close_socket_after_handler(sdk: Any, label: str) -> None:
    """Make the SDK object's handler teardown log itself and also close its socket.

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
        try:
            await close_handler()
        finally:
            writer = getattr(getattr(connection, "_transport", None), "writer", None)
            if writer is not None:
                writer.close()
            if handler is not None:
                _LOGGER.debug("%s closed", label)

    sdk._close_handler = close_handler_and_socket


def _renew_management_credit(sdk: Any, label: str) -> None:
    """Top up the credit of the SDK object's ``$management`` reply link once half is spent.

    pyamqp attaches that link with 10,000 credits and never sends another flow, so a broker
    that honours credit (the emulator does; AMQP requires it) stops answering after 10,000
    management calls on one link -- session state, lock renewals, peeks -- and the aio SDK
    then waits forever. A long-lived session receiver renewing its lock and checkpointing
    state gets there in hours.
    """
    request = getattr(sdk, "_mgmt_request_response", None)
    if request is None:
        return

    async def request_and_renew_credit(*args: Any, **kwargs: Any) -> Any:
        response = await request(*args, **kwargs)
        for operation in list(getattr(getattr(sdk, "_handler", None), "_mgmt_links", {}).values()):
            link = getattr(getattr(operation, "_mgmt_link", None), "_response_link", None)
            credit, full = getattr(link, "current_link_credit", None), getattr(link, "link_credit", None)
            if link is not None and isinstance(credit, int) and isinstance(full, int) and credit <= full // 2:
                await link.flow()  # back to full credit
                _LOGGER.debug("%s: management reply link credit renewed (%d left)", label, credit)
        return response

    sdk._mgmt_request_response = request_and_renew_credit
