"""Settlement on the receive link without waiting for the broker's verdict (hook
``settle-ahead``; see :mod:`._hooks` and :mod:`sbsync._settlement`).

Settling a message received on the receive link writes a disposition frame; then the SDK
reads the connection until the broker's verdict comes back -- holding pyamqp's socket lock,
so the next settlement's frame cannot even be written meanwhile. sbsync lets the settlement's
caller go on once its frame is written and has the verdict read when that caller's next call
wants it: a patch on pyamqp's aio ``ReceiverLink._wait_for_disposition_outcome`` pauses the
SDK's own settlement, between writing and reading, when a context variable (set only in
sbsync's settlement tasks) says so. Everything else -- outcomes, error mapping, the
management-link fallback -- stays the SDK's own code.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Protocol

from azure.servicebus import ServiceBusReceiveMode

from . import _private
from ._hooks import available

__all__ = ["SETTLEMENT_PAUSE", "SettlementPause", "settle_ahead_installed", "settles_on_current_link"]


class SettlementPause(Protocol):
    async def written(self, connection_intact: bool) -> None:
        """The frame is out: if the connection still looks intact, let the caller go and
        wait until the verdict is wanted; otherwise go on and read it now."""


#: Set by a settlement's task (in its own context) to the pause the patch awaits.
SETTLEMENT_PAUSE: contextvars.ContextVar[SettlementPause | None] = contextvars.ContextVar(
    "sbsync_settlement_pause", default=None
)

_installed = False


def settle_ahead_installed() -> bool:
    """Install the patch once; False if the hook is unavailable (settlements then return
    once the SDK is done with them, as before -- the check at client construction warned)."""
    global _installed
    if not _installed:
        if not available("settle-ahead"):
            return False
        link = _private.ReceiverLinkAsync
        original = link._wait_for_disposition_outcome
        if not getattr(original, "_sbsync_patch", False):

            @functools.wraps(original)
            async def wait_for_disposition_outcome(self: Any, *args: Any, **kwargs: Any) -> Any:
                pause = SETTLEMENT_PAUSE.get()
                if pause is not None:
                    await pause.written(_connection_intact(self))
                return await original(self, *args, **kwargs)

            wait_for_disposition_outcome._sbsync_patch = True  # type: ignore[attr-defined]
            link._wait_for_disposition_outcome = wait_for_disposition_outcome
        _installed = True
    return True


def _connection_intact(link: Any) -> bool:
    """Whether nothing the loop has read so far says ``link``'s connection is gone: link
    attached, connection open, socket neither at EOF nor failed. (The loop reads the socket
    on every iteration, so a drop that came before the settlement's frame went out is seen
    here, and the settlement's caller then gets the SDK's error from its own call.)"""
    try:
        connection = link._session._connection
        transport = connection._transport
        reader, writer = transport.reader, transport.writer
        return bool(
            link.state == _private.LinkState.ATTACHED
            and connection.state == _private.ConnectionState.OPENED
            and connection._error is None
            and transport.connected
            and reader is not None
            and not getattr(reader, "_eof", False)  # EOF seen, even with unread frames before it
            and reader.exception() is None
            and writer is not None
            and not writer.transport.is_closing()
        )
    except AttributeError:
        return False


def settles_on_current_link(sdk: Any, message: Any) -> bool:
    """Whether the aio receiver ``sdk`` would settle ``message`` with a disposition on its open
    receive link without refusing the call first: peek-lock over pyamqp, receiver open and
    not shut down, session lock neither lost nor expired, message neither settled, peeked,
    deferred nor past its lock, and received on the link open now. Read from the caller's
    thread: each test is one attribute load (atomic under the GIL); a stale answer only
    sends the call down the ordinary path, which raises what the SDK raises.
    """
    try:
        if (
            sdk is None
            or sdk._receive_mode != ServiceBusReceiveMode.PEEK_LOCK
            or sdk._amqp_transport.KIND != "pyamqp"
            or not sdk._running
            or sdk._shutdown.is_set()
            or message._settled
            or message._is_deferred_message
            or message._is_peeked_message
            or message._receiver is not sdk
        ):
            return False
        session = sdk._session
        if session is None:
            if message._lock_expired:
                return False
        elif session._lock_lost or session._lock_expired:
            return False
        return bool(message._delivery_tag in sdk._handler._link._received_delivery_tags)
    except AttributeError:
        return False
