"""Errors coming up from the SDK (and pyamqp below it), mapped to sbsync's: the one place.

Like httpx's ``map_httpcore_exceptions``: :func:`map_sdk_errors` wraps every facade call
(``Handle._attempts``), retries included, and turns

- the SDK's "handler has already been shutdown" ``ValueError``, a connection error, or its
  "Handler failed" error for a link it then tore down (a settlement on a link the broker had
  detached), on a link that is gone, into ``MessageLockLostError`` / ``SessionLockLostError``
  (the lock went with the link: one error type for "this lock is gone", whatever took it);
- an authentication error the SDK could not describe into one that says what to check.

Everything else passes through unchanged: sbsync raises the SDK's own exception types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable

from azure.servicebus.exceptions import (
    ServiceBusAuthenticationError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from ..exceptions import ClientClosedError
from ._hooks import available, probe, shutdown_patterns

__all__ = ["explain_auth_error", "is_handler_failure", "is_shutdown_error", "map_sdk_errors"]

#: The SDK's text for an error it could not describe (its CBS mapping drops the broker's
#: "401 Unauthorized" description, so a wrong key reads like this).
_GENERIC_SDK_MESSAGE = "Service Bus has encountered an error."


def explain_auth_error(exc: ServiceBusAuthenticationError, entity: str) -> ServiceBusAuthenticationError:
    """The same error with a message that says what to check, when the SDK's says nothing."""
    if not str(exc).startswith(_GENERIC_SDK_MESSAGE):
        return exc
    return ServiceBusAuthenticationError(
        message=f"Authentication failed for {entity!r}: check SharedAccessKeyName/SharedAccessKey in the "
        f"connection string (or the credential), and that it grants access to {entity!r}. ({exc})",
        error=exc,
    )


def is_shutdown_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK's refusal of a call on a shut-down handler (hook
    ``shutdown-error``: a plain ValueError, recognised by the text the SDK itself produces)."""
    if not isinstance(exc, ValueError) or isinstance(exc, ClientClosedError) or not available("shutdown-error"):
        return False
    text = str(exc)
    return any(pattern.match(text) for pattern in shutdown_patterns(probe()))


def is_handler_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK's catch-all for an unexpected error below it (``"Handler
    failed: ..."``, a plain ServiceBusError around pyamqp's ValueError, e.g. "Link already
    closed."), after which the SDK tears its handler down."""
    return type(exc) is ServiceBusError and isinstance(exc.inner_exception, ValueError)


@contextlib.contextmanager
def map_sdk_errors(
    subject: str, lost_with_link: Callable[[BaseException], ServiceBusError | None]
) -> Iterator[None]:
    """Map what the SDK raises inside the block (see the module docstring).

    ``subject`` names the entity (or namespace) in messages; ``lost_with_link(cause)`` is the
    lost-lock error the failed operation must end with, or None if the link is not gone.
    """
    try:
        yield
    except ServiceBusAuthenticationError as exc:
        explained = explain_auth_error(exc, subject)
        if explained is exc:
            raise
        raise explained from exc
    except (ServiceBusError, ValueError) as exc:
        lost = lost_with_link(exc) if _may_have_taken_the_link(exc) else None
        if lost is None:
            raise
        raise lost from exc


def _may_have_taken_the_link(exc: ServiceBusError | ValueError) -> bool:
    """The errors after which the SDK's link may be gone: a refusal on a shut-down handler, a
    connection error, or the SDK's catch-all after which it tears its handler down."""
    if isinstance(exc, ValueError):
        return is_shutdown_error(exc)
    return isinstance(exc, ServiceBusConnectionError) or is_handler_failure(exc)
