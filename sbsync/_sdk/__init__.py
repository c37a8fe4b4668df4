"""The one door to azure-servicebus's internals (private names, patch points, the error map).

sbsync leans on the async SDK's internals for what its public API cannot do: warm links,
settlement beside a waiting receive, management-link credit, compiled batch fills, lock
bookkeeping. Every private SDK name sbsync uses is reached through this package, and nowhere
else (the emulator aside, which shares no code with the facade). :mod:`._hooks` lists each
use with why it is needed, the SDK versions verified, and its fallback; the check at client
construction (:func:`check_hooks`) makes a missing one a WARNING with a fallback, or a clear
:class:`~sbsync.exceptions.IncompatibleSdkError` -- never silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.servicebus import ServiceBusMessageBatch

from ._batch import fill
from ._compat import require_deferred_lock_token, require_session_listing
from ._errors import explain_auth_error, is_handler_failure, is_shutdown_error, map_sdk_errors
from ._hooks import (
    HOOKS,
    SDK_VERSION,
    SUPPORTED_RANGE,
    Hook,
    available,
    check_hooks,
    report_missing,
)
from ._links import SettleTimeouts, instrument
from ._logs import install_log_filter
from ._state import (
    is_deferred,
    link_reusable,
    link_running,
    link_shut_down,
    mark_session_lock_lost,
    message_received_at,
    message_settled,
    renew_message_locks,
    sdk_says_retryable,
    sdk_session,
    session_lock_expired,
    session_lock_lost,
    session_started,
)
from ._tracing import now_ns, record_send_span, tracing_enabled

__all__ = [
    "HOOKS",
    "SDK_VERSION",
    "SUPPORTED_RANGE",
    "Hook",
    "SettleTimeouts",
    "available",
    "check_hooks",
    "explain_auth_error",
    "fill_batch",
    "install_log_filter",
    "instrument",
    "is_deferred",
    "is_handler_failure",
    "is_shutdown_error",
    "link_reusable",
    "link_running",
    "link_shut_down",
    "map_sdk_errors",
    "mark_session_lock_lost",
    "message_received_at",
    "message_settled",
    "now_ns",
    "record_send_span",
    "renew_message_locks",
    "report_missing",
    "require_deferred_lock_token",
    "require_session_listing",
    "sdk_says_retryable",
    "sdk_session",
    "session_lock_expired",
    "session_lock_lost",
    "session_started",
    "tracing_enabled",
]


def fill_batch(batch: ServiceBusMessageBatch, messages: Sequence[Any]) -> int:
    """Add ``messages`` to ``batch`` until one does not fit; how many went in (``add_message``'s
    steps, one compiled encoding each: hook ``batch-fill``)."""
    return fill(batch, messages, available("batch-fill"), tracing_enabled())
