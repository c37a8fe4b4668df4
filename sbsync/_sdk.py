"""The one door to ``azure.servicebus``'s private names.

Each accessor says why sbsync needs it and the SDK versions it was verified on. A missing
name falls back to the public behaviour with one WARNING naming what is lost.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from typing import Any, Protocol

from azure.servicebus import ServiceBusReceiveMode

__all__ = [
    "SETTLEMENT_PAUSE",
    "SettlementPause",
    "settlement_pause_installed",
    "settles_on_current_link",
]

_LOGGER = logging.getLogger(__name__)


# -- settlement on the receive link (issue 17) ----------------------------------------------
#
# Why: settling a message received on the receive link writes a disposition frame, then the
# SDK reads the connection until the broker's verdict comes back -- holding pyamqp's socket
# lock, so the next settlement's frame cannot even be written meanwhile. sbsync lets the
# settlement's caller go on once its frame is written and has the verdict read when the
# caller's next call wants it (sbsync/_settlement.py): a hook pauses the SDK's own
# settlement, between writing and reading, while a context variable says so. Everything
# else (outcomes, errors, management-link fallback) stays the SDK's own code. Knowing that
# the SDK would settle on the link and would not refuse the call needs the receiver's and
# the message's private state (settles_on_current_link).
# Verified on: azure-servicebus 7.15.0 (pyamqp; settlement outcomes awaited). An SDK whose
# pyamqp link has no _wait_for_disposition_outcome settles without awaiting the verdict:
# there is nothing to pause, and settlements return once written, as that SDK's do.


class SettlementPause(Protocol):
    async def written(self, connection_intact: bool) -> None:
        """The frame is out: if the connection still looks intact, let the caller go and
        wait until the verdict is wanted; otherwise go on and read it now."""


#: Set by a settlement's task (in its own context) to the pause the hook awaits.
SETTLEMENT_PAUSE: contextvars.ContextVar[SettlementPause | None] = contextvars.ContextVar(
    "sbsync_settlement_pause", default=None
)

_hook_state: bool | None = None


def settlement_pause_installed() -> bool:
    """Install (once) the hook that awaits ``SETTLEMENT_PAUSE`` before pyamqp's aio receiver
    link reads a settlement's verdict; False, with one WARNING, if this SDK lacks the method
    (settlements then return once the SDK is done with them, as before)."""
    global _hook_state
    if _hook_state is None:
        _hook_state = _install_settlement_pause()
    return _hook_state


def _install_settlement_pause() -> bool:
    try:
        from azure.servicebus._pyamqp.aio._receiver_async import ReceiverLink

        original = ReceiverLink._wait_for_disposition_outcome
    except (ImportError, AttributeError):
        _LOGGER.warning(
            "This azure-servicebus has no pyamqp ReceiverLink._wait_for_disposition_outcome: "
            "settlements wait for the SDK to finish them (slower receive loops, same results)."
        )
        return False
    if getattr(original, "_sbsync_hook", False):
        return True

    @functools.wraps(original)
    async def wait_for_disposition_outcome(self: Any, *args: Any, **kwargs: Any) -> Any:
        pause = SETTLEMENT_PAUSE.get()
        if pause is not None:
            await pause.written(_connection_intact(self))
        return await original(self, *args, **kwargs)

    wait_for_disposition_outcome._sbsync_hook = True  # type: ignore[attr-defined]
    ReceiverLink._wait_for_disposition_outcome = wait_for_disposition_outcome  # type: ignore[method-assign]
    return True


def _connection_intact(link: Any) -> bool:
    """Whether nothing the loop has read so far says ``link``'s connection is gone: the
    link attached, the connection open, its socket neither at EOF nor failed. (The loop
    reads the socket on every iteration, so a drop that happened before the settlement's
    frame went out is seen here.)"""
    try:
        from azure.servicebus._pyamqp.constants import ConnectionState, LinkState

        connection = link._session._connection
        transport = connection._transport
        reader, writer = transport.reader, transport.writer
        return (
            link.state == LinkState.ATTACHED
            and connection.state == ConnectionState.OPENED
            and connection._error is None
            and transport.connected
            and reader is not None
            and not getattr(reader, "_eof", False)  # EOF seen, even with unread frames before it
            and reader.exception() is None
            and writer is not None
            and not writer.transport.is_closing()
        )
    except (ImportError, AttributeError):
        return False


def settles_on_current_link(sdk: Any, message: Any) -> bool:
    """Whether the aio receiver ``sdk`` would settle ``message`` with a disposition on its open
    receive link without refusing the call first: peek-lock over pyamqp, receiver open and
    not shut down, session lock neither lost nor expired, message neither settled, peeked,
    deferred nor past its lock, and received on the link open now. Read from the caller's
    thread: each test is one attribute load (atomic under the GIL); a stale answer only
    sends the call down the slow path, which raises what the SDK raises.
    """
    try:
        if (
            sdk._receive_mode != ServiceBusReceiveMode.PEEK_LOCK
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
        link = sdk._handler._link
        return message._delivery_tag in link._received_delivery_tags
    except AttributeError:
        return False
