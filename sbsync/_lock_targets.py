"""How the renewer sees one lock through the facade: a message's or a session's.

The only place that knows both the renewer's needs (:class:`~sbsync._renewer.LockTarget`)
and the facade/SDK objects. Reads are plain attribute loads of SDK state (safe from any
thread under the GIL); the renewal itself is submitted to the receiver's portal through the
facade's one call path, so it is retried under the client's policy -- cut short by a
deadline that ends before the lock does.
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable
from concurrent.futures import Future
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage

from ._lost_locks import mark_lost
from ._sdk import (
    link_running,
    link_shut_down,
    mark_session_lock_lost,
    message_received_at,
    message_settled,
    renew_message_locks,
    sdk_session,
    session_lock_lost,
    session_started,
)
from .receiver import ServiceBusReceiver
from .session import ServiceBusSession

__all__ = ["target_for"]

QUIET = "quiet"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _receiver_state(receiver: ServiceBusReceiver) -> tuple[Any, str | None]:
    """The receiver's SDK object, and ``"quiet"`` if its owner closed it."""
    sdk = receiver._peek()
    if receiver._is_closed() or sdk is None or link_shut_down(sdk):
        return sdk, QUIET
    return sdk, None


class MessageLock:
    def __init__(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> None:
        self._receiver = receiver
        self._message = message

    def locked_until(self) -> datetime.datetime | None:
        return self._message.locked_until_utc

    def started(self) -> datetime.datetime:
        return message_received_at(self._message) or _utcnow()

    def gone(self) -> str | None:
        if message_settled(self._message):
            return QUIET
        sdk, state = _receiver_state(self._receiver)
        if state is not None:
            return state
        if not link_running(sdk):
            # The SDK closes its handler after a connection error; the locks went with the link.
            return "The receiver's link was closed after a connection error; the message lock went with it."
        return None

    @property
    def group(self) -> Hashable:
        return self._receiver  # one renew-lock request carries many lock tokens

    def renew_batch(self, targets: list[Any], deadline: float) -> Future[list[datetime.datetime | None]]:
        messages = [target._message for target in targets]
        return self._receiver._submit(
            "renew_message_lock",
            lambda r: renew_message_locks(r, messages),  # one request for them all
            policy=self._receiver._retry_policy.replace(deadline=deadline),
        )

    def record(self, error: Exception) -> None:
        self._message.auto_renew_error = error

    def lost(self, error: Exception) -> None:
        mark_lost(self._message, error)


class SessionLock:
    def __init__(self, receiver: ServiceBusReceiver, session: ServiceBusSession) -> None:
        self._receiver = receiver
        self._session = session

    def _sdk_session(self) -> Any:
        sdk = self._receiver._peek()
        return None if sdk is None else sdk_session(sdk)

    def locked_until(self) -> datetime.datetime | None:
        session = self._sdk_session()
        return None if session is None else session.locked_until_utc

    def started(self) -> datetime.datetime:
        session = self._sdk_session()
        return (session and session_started(session)) or _utcnow()

    def gone(self) -> str | None:
        sdk, state = _receiver_state(self._receiver)
        if state is not None:
            return state
        if session_lock_lost(sdk_session(sdk)):
            return "The session receiver's connection was lost, and the session lock with it."
        return None

    @property
    def group(self) -> Hashable:
        return self

    def renew_batch(self, targets: list[Any], deadline: float) -> Future[list[datetime.datetime | None]]:
        async def renew(receiver: Any) -> list[datetime.datetime | None]:
            return [await receiver.session.renew_lock()]

        return self._receiver._submit(
            "renew_session_lock",
            renew,
            policy=self._receiver._retry_policy.replace(deadline=deadline),
        )

    def record(self, error: Exception) -> None:
        self._session.auto_renew_error = error  # type: ignore[assignment]
        session = self._sdk_session()
        if session is not None:
            session.auto_renew_error = error

    def lost(self, error: Exception) -> None:
        # The SDK's own check: every later call on this receiver raises
        # SessionLockLostError(error=auto_renew_error), as after a dropped connection.
        session = self._sdk_session()
        if session is not None:
            mark_session_lock_lost(session)


def target_for(receiver: Any, renewable: Any) -> MessageLock | SessionLock:
    if not isinstance(receiver, ServiceBusReceiver):
        raise TypeError(
            "AutoLockRenewer.register needs the sbsync ServiceBusReceiver the message or session came from."
        )
    if isinstance(renewable, ServiceBusReceivedMessage):
        return MessageLock(receiver, renewable)
    if isinstance(renewable, ServiceBusSession):
        return SessionLock(receiver, renewable)
    raise TypeError(
        "AutoLockRenewer only supports registration of types "
        "azure.servicebus.ServiceBusReceivedMessage (via a receiver's receive methods) and "
        "sbsync.ServiceBusSession (via a session receiver's property receiver.session)."
    )
