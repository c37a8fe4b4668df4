"""Exceptions raised by sbsync: every ``azure.servicebus.exceptions`` type, plus sbsync's own.

sbsync raises the SDK's own exception types unchanged, so ``except`` clauses written against
``azure.servicebus.exceptions`` keep working after switching the import to ``sbsync``.
Its own errors subclass the builtin the SDK uses for the same situation:

- :class:`ClientClosedError` (a ``ValueError``): the client, sender or receiver was closed, or
  was closed while the call was in progress. The SDK raises ``ValueError`` for a shut-down
  handler, so code that catches that keeps working.
- :class:`LoopThreadError` (a ``RuntimeError``): a blocking call was made from sbsync's own
  event-loop thread (it would wait for itself forever), or that thread is gone.
- :class:`IncompatibleSdkError` (a ``RuntimeError``): raised by the client's constructor when
  the installed azure-servicebus lacks something sbsync cannot work without; it names the
  supported range.
- :class:`UnsupportedTransportError` (a ``ValueError``): raised by the client's constructor
  for ``uamqp_transport=True``: sbsync runs the SDK on its pyamqp transport only.
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
    "IncompatibleSdkError",
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
    "UnsupportedTransportError",
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


class IncompatibleSdkError(RuntimeError):
    """The installed azure-servicebus lacks an internal sbsync cannot work without.

    The message names what is missing and the supported range of azure-servicebus versions.
    (Internals sbsync can do without only cost a WARNING naming the feature lost.)
    """


class UnsupportedTransportError(ValueError):
    """``uamqp_transport=True`` was passed: sbsync runs the SDK on its pyamqp transport only.

    uAMQP is deprecated upstream (azure-servicebus 7.12 made pyamqp the default); drop the
    option, which also works with the official SDK.
    """


#: What to do next, by what was closed.
_REMEDY = {
    "client": "use the client again to reopen it (as the SDK's client reopens), or create a new one.",
    "sender": "get a new one from an open ServiceBusClient (client.get_queue_sender(...) or get_topic_sender(...)).",
    "receiver": "get a new one from an open ServiceBusClient (client.get_queue_receiver(...) or "
    "get_subscription_receiver(...)).",
}


def closed_error(kind: str, *, during_call: bool = False) -> ClientClosedError:
    """A :class:`ClientClosedError` for a ``kind`` ("client", "sender", ...) that says what to do."""
    what = f"The {kind} was closed while the call was in progress" if during_call else f"The {kind} is closed"
    remedy = _REMEDY.get(kind, "create a new one from an open ServiceBusClient.")
    return ClientClosedError(f"{what}; {remedy}")
