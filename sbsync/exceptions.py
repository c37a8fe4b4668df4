"""Exceptions raised by sbsync: every ``azure.servicebus.exceptions`` type, plus sbsync's own.

sbsync raises the SDK's own exception types unchanged, so ``except`` clauses written against
``azure.servicebus.exceptions`` keep working after switching the import to ``sbsync``.
Its own errors subclass the builtin the SDK uses for the same situation:

- :class:`ClientClosedError` (a ``ValueError``): the client, sender or receiver was closed, or
  was closed while the call was in progress. The SDK raises ``ValueError`` for a shut-down
  handler, so code that catches that keeps working.
- :class:`LoopThreadError` (a ``RuntimeError``): a blocking call was made from sbsync's own
  event-loop thread (it would wait for itself forever), or that thread is gone.
"""

from __future__ import annotations

from azure.core.exceptions import AzureError
from azure.servicebus.exceptions import (
    AutoLockRenewFailed,
    AutoLockRenewTimeout,
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityAlreadyExistsError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

__all__ = [
    "AutoLockRenewFailed",
    "AutoLockRenewTimeout",
    "AzureError",
    "ClientClosedError",
    "LoopThreadError",
    "MessageAlreadySettled",
    "MessageLockLostError",
    "MessageNotFoundError",
    "MessageSizeExceededError",
    "MessagingEntityAlreadyExistsError",
    "MessagingEntityDisabledError",
    "MessagingEntityNotFoundError",
    "OperationTimeoutError",
    "ServiceBusAuthenticationError",
    "ServiceBusAuthorizationError",
    "ServiceBusCommunicationError",
    "ServiceBusConnectionError",
    "ServiceBusError",
    "ServiceBusQuotaExceededError",
    "ServiceBusServerBusyError",
    "SessionCannotBeLockedError",
    "SessionLockLostError",
]


class ClientClosedError(ValueError):
    """The client, sender or receiver is closed (or was closed during the call).

    Create a new ``ServiceBusClient`` (or a new sender/receiver from an open client).
    """


class LoopThreadError(RuntimeError):
    """A blocking sbsync call was made where it cannot complete.

    Raised when called from sbsync's own event-loop thread (for example from a callback
    running on it): the call would wait for the very thread that has to serve it.
    """


#: What to do next, by what was closed.
_REMEDY = {
    "client": "create a new ServiceBusClient.",
    "sender": "get a new one from an open ServiceBusClient (client.get_queue_sender(...) or get_topic_sender(...)).",
    "receiver": "get a new one from an open ServiceBusClient (client.get_queue_receiver(...) or "
    "get_subscription_receiver(...)).",
}


def closed_error(kind: str, *, during_call: bool = False) -> ClientClosedError:
    """A :class:`ClientClosedError` for a ``kind`` ("client", "sender", ...) that says what to do."""
    what = f"The {kind} was closed while the call was in progress" if during_call else f"The {kind} is closed"
    remedy = _REMEDY.get(kind, "create a new one from an open ServiceBusClient.")
    return ClientClosedError(f"{what}; {remedy}")
