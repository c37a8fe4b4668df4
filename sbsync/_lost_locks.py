"""The lost-lock registry: messages whose lock a renewer reported lost (a leaf module, shared
by the renewer's lock targets, which mark, and the receiver, which checks)."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.exceptions import MessageLockLostError

__all__ = ["mark_lost", "raise_if_lock_lost"]

# Messages whose lock a renewer reported lost, with the error their next call raises.
_LOST: weakref.WeakKeyDictionary[Any, BaseException] = weakref.WeakKeyDictionary()
_LOST_GUARD = threading.Lock()


def mark_lost(message: ServiceBusReceivedMessage, error: Exception) -> None:
    with _LOST_GUARD:
        _LOST[message] = error


def raise_if_lock_lost(message: ServiceBusReceivedMessage) -> None:
    """Raise ``MessageLockLostError`` at once if a renewer reported this message's lock lost.

    The error carries the renewer's (``message.auto_renew_error``) as ``error``. (A lost
    session lock needs no such check: the SDK's own session receiver refuses every call.)
    """
    if not isinstance(message, ServiceBusReceivedMessage):
        return  # not a message at all: the SDK's own TypeError says so
    with _LOST_GUARD:
        error = _LOST.get(message)
    if error is not None:
        raise MessageLockLostError(
            message="The lock on the message was lost: it could not be kept alive.", error=error
        )
