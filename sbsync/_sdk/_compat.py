"""What the lowest SDK in the range lacks, refused clearly: session listing (hook
``session-listing``, azure-servicebus 7.15+), and settling a deferred message that came
without its lock token (before 7.15 the SDK reads it only from the message's delivery
annotations, where the service puts it)."""

from __future__ import annotations

from typing import Any

from ..exceptions import IncompatibleSdkError
from ._hooks import SDK_VERSION, available
from ._state import is_deferred, message_settled

__all__ = ["require_deferred_lock_token", "require_session_listing"]


def require_session_listing() -> None:
    """Raise unless the aio client can list sessions (azure-servicebus 7.15+)."""
    if not available("session-listing"):
        raise IncompatibleSdkError(
            f"Listing sessions needs azure-servicebus>=7.15 (it added session listing); "
            f"{SDK_VERSION} is installed. Install 'azure-servicebus>=7.15,<8'."
        )


def require_deferred_lock_token(message: Any) -> None:
    """Raise if ``message`` is a deferred message the SDK returned without its lock token: it
    cannot be settled or renewed (the SDK would send a null token and get a broker error)."""
    if (
        is_deferred(message)
        and not message_settled(message)
        and getattr(message, "lock_token", None) is None
    ):
        raise IncompatibleSdkError(
            f"This deferred message came without its lock token, so it cannot be settled or renewed "
            f"(azure-servicebus {SDK_VERSION}; before 7.15 the SDK reads the token only from the "
            "message's delivery annotations). Install 'azure-servicebus>=7.15,<8', or receive "
            "deferred messages with receive_mode=RECEIVE_AND_DELETE."
        )
