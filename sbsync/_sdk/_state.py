"""Reading (and in two places setting) SDK state the public API does not expose.

Each accessor names its hook (see :mod:`._hooks`); the versions verified are the hooks'.
Reads are plain attribute loads, safe from any thread under the GIL.
"""

from __future__ import annotations

import datetime
from typing import Any

from . import _private
from ._hooks import available

__all__ = [
    "is_deferred",
    "link_reusable",
    "link_running",
    "link_shut_down",
    "mark_session_lock_lost",
    "message_received_at",
    "message_settled",
    "renew_message_locks",
    "sdk_says_retryable",
    "sdk_session",
    "session_lock_expired",
    "session_lock_lost",
    "session_started",
]


# -- link-state (required) ----------------------------------------------------------------------


def link_running(sdk: Any) -> bool:
    """Whether an aio sender/receiver has its link open (the SDK opens it lazily)."""
    return bool(getattr(sdk, "_running", False))


def link_shut_down(sdk: Any) -> bool:
    """Whether an aio sender/receiver was closed (by its owner: it refuses every call)."""
    return bool(sdk._shutdown.is_set())


def link_reusable(sdk: Any) -> bool:
    """An SDK sender whose link is up and that nobody shut down."""
    return link_running(sdk) and not link_shut_down(sdk)


# -- session-state (required) -------------------------------------------------------------------


def sdk_session(sdk: Any) -> Any:
    """The aio receiver's session object (None for a receiver without sessions)."""
    return sdk._session


def session_lock_lost(session: Any) -> bool:
    """Set by the SDK when a connection error took the session's link (and lock) with it."""
    return bool(session._lock_lost)


def mark_session_lock_lost(session: Any) -> None:
    """The SDK's own mark: every later call on the receiver raises SessionLockLostError."""
    session._lock_lost = True


def session_started(session: Any) -> datetime.datetime | None:
    """When the session was accepted (the renewer's max duration counts from there)."""
    return session._session_start


def session_lock_expired(session: Any) -> bool:
    """The SDK's own test of the session lock's expiry (lock renewers read it)."""
    return bool(session._lock_expired)


# -- message hooks ------------------------------------------------------------------------------


def message_settled(message: Any) -> bool:
    """Whether a received message was settled (message-settled, required)."""
    return bool(message._settled)


def message_received_at(message: Any) -> datetime.datetime | None:
    """When the message was received (received-time); None when unknown."""
    if not available("received-time"):
        return None
    return getattr(message, "_received_timestamp_utc", None)


def is_deferred(message: Any) -> bool:
    """Whether the message came from receive_deferred_messages (deferred-flag): it is settled
    by a management request. When the SDK does not say, assume it may be (the safe lane)."""
    if not available("deferred-flag"):
        return True
    return bool(getattr(message, "_is_deferred_message", False))


async def renew_message_locks(sdk: Any, messages: list[Any]) -> list[datetime.datetime | None]:
    """Loop thread: renew the locks of many messages of one aio receiver in one request
    (batch-lock-renewal); one public ``renew_message_lock`` each as the fallback.

    Messages settled meanwhile are left out (None).
    """
    live = [m for m in messages if not message_settled(m) and m.lock_token]
    if live and available("batch-lock-renewal"):
        sdk._check_live()
        response = await sdk._renew_locks(*(m.lock_token for m in live))
        for message, expiry_ms in zip(live, response[_private.MGMT_RESPONSE_MESSAGE_EXPIRATION]):
            message._expiry = _private.utc_from_timestamp(expiry_ms / 1000.0)
        return [m._expiry if m in live else None for m in messages]
    renewed = {id(m): await sdk.renew_message_lock(m) for m in live}
    return [renewed.get(id(m)) for m in messages]


# -- errors -------------------------------------------------------------------------------------


def sdk_says_retryable(error: BaseException) -> bool:
    """The SDK's own verdict on an error it mapped from an AMQP condition (retryable-flag)."""
    return available("retryable-flag") and bool(getattr(error, "_retryable", False))
