"""What the lowest SDK in the range lacks, refused clearly (hooks ``session-listing`` and
``deferred-lock-token``; both arrived in azure-servicebus 7.15)."""

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
    """Raise if ``message`` is a deferred message the SDK returned without its lock token
    (azure-servicebus before 7.15): it cannot be settled or renewed."""
    if (
        not available("deferred-lock-token")
        and is_deferred(message)
        and not message_settled(message)
        and getattr(message, "lock_token", None) is None
    ):
        raise IncompatibleSdkError(
            f"azure-servicebus {SDK_VERSION} returns deferred messages without their lock token, so "
            "they cannot be settled or renewed (fixed in 7.15). Install 'azure-servicebus>=7.15,<8', "
            "or receive deferred messages with receive_mode=RECEIVE_AND_DELETE."
        )
