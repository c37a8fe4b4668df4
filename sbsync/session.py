"""``ServiceBusSession``: the blocking twin of ``azure.servicebus.ServiceBusSession``."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from azure.servicebus.exceptions import AutoLockRenewFailed, AutoLockRenewTimeout

from ._handle import check_type
from ._sdk import session_lock_expired

if TYPE_CHECKING:
    from .receiver import ServiceBusReceiver

__all__ = ["ServiceBusSession"]


class ServiceBusSession:
    """The session held by a session receiver: its id, state and lock.

    Get it from ``receiver.session``; its calls go through that receiver.

    :ivar auto_renew_error: Set by an ``AutoLockRenewer`` when it fails to renew this session's lock.
    """

    def __init__(self, receiver: ServiceBusReceiver) -> None:
        self._receiver = receiver
        self.auto_renew_error: AutoLockRenewFailed | AutoLockRenewTimeout | None = None

    def __repr__(self) -> str:
        return f"<sbsync.ServiceBusSession session_id={self.session_id!r}>"

    @property
    def session_id(self) -> str:
        """The session id (the one locked, for a ``NEXT_AVAILABLE_SESSION`` receiver once open)."""
        return self._receiver._attr("session").session_id

    @property
    def locked_until_utc(self) -> datetime.datetime | None:
        """When the session lock expires (UTC); None until the receiver has opened."""
        return self._receiver._attr("session").locked_until_utc

    @property
    def _lock_expired(self) -> bool:
        # For lock renewers: the same test the SDK's own renewer makes.
        return session_lock_expired(self._receiver._attr("session"))

    def get_state(self, *, timeout: float | None = None, **kwargs: Any) -> bytes:
        """The session state (None when never set)."""
        return self._receiver._run(
            "get_state", lambda r: r.session.get_state(timeout=timeout, **kwargs), timeout=timeout
        )

    def set_state(
        self, state: str | bytes | bytearray | None, *, timeout: float | None = None, **kwargs: Any
    ) -> None:
        """Replace the session state (None clears it)."""
        check_type(state, (str, bytes, bytearray, type(None)), "state")
        self._receiver._run(
            "set_state", lambda r: r.session.set_state(state, timeout=timeout, **kwargs), timeout=timeout
        )

    def renew_lock(self, *, timeout: float | None = None, **kwargs: Any) -> datetime.datetime:
        """Renew the session lock; returns the new expiry (UTC)."""
        return self._receiver._run(
            "renew_lock", lambda r: r.session.renew_lock(timeout=timeout, **kwargs), timeout=timeout
        )
