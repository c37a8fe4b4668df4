"""The registry of every private SDK name sbsync relies on, and the check made at client construction.

Each :class:`Hook` names the private attributes it needs, why sbsync needs them, the SDK
versions it was verified on, and what happens without them: a ``fallback`` (sbsync keeps
working, slower or with less, and logs one WARNING naming the feature lost and the SDK
version) or none (the SDK is refused with :class:`~sbsync.exceptions.IncompatibleSdkError`
naming the supported range). Whether a hook's targets exist is probed once per process on
real, unconnected SDK objects (a client from a dummy connection string, its receivers and
sender, a received message): no I/O, about 3 ms.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.servicebus
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import ServiceBusError

from ..exceptions import IncompatibleSdkError
from . import _private
from ._batch import self_check

__all__ = ["HOOKS", "SDK_VERSION", "SUPPORTED_RANGE", "Hook", "available", "check_hooks", "report_missing"]

_LOGGER = logging.getLogger("sbsync.sdk")

#: The installed azure-servicebus.
SDK_VERSION: str = azure.servicebus.__version__
#: What setup.cfg accepts (a test keeps the two equal). The floor is 7.15: before it the SDK
#: does not wait for the broker's verdict on a settlement, so completing a message whose lock
#: was lost "succeeds" silently; it also lacks session listing (README, "Supported versions").
SUPPORTED_RANGE = ">=7.15,<8"
FLOOR = (7, 15)
CEILING = (8,)
#: The SDK versions the whole suite ran on.
VERIFIED = "7.15.0"


def version_info(version: str) -> tuple[int, ...]:
    """``"7.15.0b1"`` -> ``(7, 15, 0)``: the release numbers only."""
    numbers = []
    for part in version.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers)

_DUMMY_CONNECTION = "Endpoint=sb://sbsync-probe.invalid/;SharedAccessKeyName=probe;SharedAccessKey=probe"


class Probe:
    """Unconnected SDK objects to look for private names on (built without I/O or a loop)."""

    def __init__(self) -> None:
        client = AsyncServiceBusClient.from_connection_string(_DUMMY_CONNECTION)
        self.receiver: Any = client.get_queue_receiver("probe")
        self.session_receiver: Any = client.get_queue_receiver("probe", session_id="probe")
        self.sender: Any = client.get_queue_sender("probe")
        self.client: Any = client
        self.message: Any = None
        try:
            self.message = ServiceBusReceivedMessage(
                _private.PyamqpMessage(data=[b"probe"]),
                receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                receiver=self.receiver,
            )
        except Exception:  # a message cannot be built this way: its hooks count as missing
            _LOGGER.debug("probe message not built", exc_info=True)


def _has(obj: Any, *names: str) -> bool:
    return obj is not None and all(hasattr(obj, name) for name in names)


def _is_coroutine_method(obj: Any, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(obj, name, None))


def _assigns(cls: type, name: str) -> bool:
    """Whether some ``__init__`` in ``cls``'s MRO mentions ``self.<name>`` (for objects the
    probe cannot build: a pyamqp connection needs a socket)."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def _link_state(p: Probe) -> bool:
    return all(
        _has(h, "_running") and isinstance(getattr(h, "_shutdown", None), asyncio.Event)
        for h in (p.receiver, p.sender)
    )


def _session_state(p: Probe) -> bool:
    return _has(getattr(p.session_receiver, "_session", None), "_lock_lost", "_session_start", "_lock_expired")


def _shutdown_error(p: Probe) -> bool:
    return len(shutdown_patterns(p)) == 2


_ACTION = "sbsyncprobeaction"
_shutdown_patterns: dict[int, list[re.Pattern[str]]] = {}


def _refusal_text(call: Callable[[], Any]) -> str | None:
    try:
        call()
    except ValueError as exc:
        return str(exc)
    except Exception:
        return None
    return None


def shutdown_patterns(p: Probe) -> list[re.Pattern[str]]:
    """The texts of the ValueErrors the SDK raises for a call on a shut-down handler
    (``_check_live``) and for settling on a link it closed (``_check_message_alive``, the
    action named in it): read from the SDK itself, so the error map follows its wording."""
    if id(p) not in _shutdown_patterns:
        texts: list[str | None] = []
        receiver = p.receiver
        if _has(receiver, "_shutdown", "_check_live"):
            receiver._shutdown.set()
            try:
                texts.append(_refusal_text(receiver._check_live))
            finally:
                receiver._shutdown.clear()
        if _has(receiver, "_check_message_alive") and p.message is not None:
            texts.append(_refusal_text(lambda: receiver._check_message_alive(p.message, _ACTION)))
        _shutdown_patterns.clear()
        _shutdown_patterns[id(p)] = [
            re.compile(re.escape(text).replace(_ACTION, r"[\w ]+") + r"\Z")
            for text in texts
            if text and "shutdown" in text
        ]
    return _shutdown_patterns[id(p)]


def _socket_timeouts(p: Probe) -> bool:
    client, connection = _private.ReceiveClientAsync, _private.ConnectionAsync
    return (
        client is not None
        and connection is not None
        and _assigns(client, "_socket_timeout")
        and _assigns(connection, "_socket_timeout")
    )


def _link_open(p: Probe) -> bool:
    client = _private.AMQPClientAsync
    return (
        client is not None
        and _is_coroutine_method(client, "client_ready_async")
        and all(callable(getattr(h, "_create_handler", None)) for h in (p.receiver, p.sender))
    )


def _keep_alive_stop(p: Probe) -> bool:
    client = _private.AMQPClientAsync
    return (
        client is not None
        and _assigns(client, "_keep_alive_thread")
        and all(_is_coroutine_method(h, "_close_handler") and _has(h, "_handler") for h in (p.receiver, p.sender))
    )


def _batch_fill(p: Probe) -> bool:
    # In an empty context: with tracing on, the probe messages' spans must not join the trace
    # of whoever constructs the first client.
    return contextvars.Context().run(self_check, getattr(p.sender, "_amqp_transport", None))


def _grouped_send_tracing(p: Probe) -> bool:
    names = ("SPAN_NAME_SEND", "TraceOperationTypes", "add_span_attributes", "get_span_link_from_message")
    return _has(_private.sdk_tracing, *names) and _has(ServiceBusMessage("probe"), "_message")


def _batch_renewal(p: Probe) -> bool:
    return (
        _private.MGMT_RESPONSE_MESSAGE_EXPIRATION is not None
        and _private.utc_from_timestamp is not None
        and _is_coroutine_method(p.receiver, "_renew_locks")
        and _has(p.receiver, "_check_live")
        and _has(p.message, "_expiry")
    )


def _retryable_flag(p: Probe) -> bool:
    return hasattr(ServiceBusError("probe", retryable=True), "_retryable")


@dataclass(frozen=True)
class Hook:
    """One use of private SDK names: what for, on which versions, and what happens without them."""

    name: str
    #: What sbsync does with it, as a WARNING names it when lost.
    feature: str
    #: The private names (``aio.ServiceBusReceiver._running`` ...).
    targets: str
    #: Why the public API does not do: one line.
    why: str
    #: What sbsync does instead; None: it cannot work without (the SDK is refused).
    fallback: str | None
    present: Callable[[Probe], bool]
    verified: str = VERIFIED


HOOKS: dict[str, Hook] = {
    hook.name: hook
    for hook in (
        Hook(
            "link-state",
            "link state (open, shut down)",
            "aio ServiceBusSender/ServiceBusReceiver ._running, ._shutdown",
            "warm links, lock-loss detection and the lazy-open guard need to know whether a link is "
            "open; the SDK has no public flag",
            None,
            _link_state,
        ),
        Hook(
            "session-state",
            "session lock state",
            "aio ServiceBusReceiver._session (._lock_lost, ._session_start, ._lock_expired)",
            "the renewer reports a session lock lost with the link and counts its max renewal time "
            "from the session's start; the SDK keeps both private",
            None,
            _session_state,
        ),
        Hook(
            "message-settled",
            "message settlement state",
            "ServiceBusReceivedMessage._settled",
            "the renewer stops quietly once a message is settled; the SDK has no public flag",
            None,
            lambda p: _has(p.message, "_settled"),
        ),
        Hook(
            "shutdown-error",
            "lost-lock errors after a dropped link",
            "aio ServiceBusReceiver._check_live, ._check_message_alive (their ValueError texts)",
            "the SDK refuses a settlement on a link it closed after a connection error with a plain "
            "ValueError; sbsync raises MessageLockLostError/SessionLockLostError instead",
            "such calls raise the SDK's ValueError instead of MessageLockLostError/SessionLockLostError",
            _shutdown_error,
        ),
        Hook(
            "link-log",
            "DEBUG log of link opens and replacements",
            "aio ServiceBusSender/ServiceBusReceiver._open",
            "the SDK opens and reopens links inside other calls, invisibly",
            "links open without sbsync.links DEBUG lines",
            lambda p: _is_coroutine_method(p.receiver, "_open") and _is_coroutine_method(p.sender, "_open"),
        ),
        Hook(
            "close-socket",
            "closing the socket of a handler torn down after a connection error",
            "aio ServiceBusSender/ServiceBusReceiver._close_handler, ._handler._connection._transport.writer",
            "pyamqp skips closing the transport of a connection already in END: the socket lingers "
            "(CLOSE_WAIT) until garbage collection",
            "such sockets close only when the garbage collector finds them",
            lambda p: _is_coroutine_method(p.receiver, "_close_handler")
            and _is_coroutine_method(p.sender, "_close_handler")
            and _has(p.receiver, "_handler"),
        ),
        Hook(
            "link-open",
            "opening links at the pace of the broker's replies",
            "aio ServiceBusSender/ServiceBusReceiver._create_handler, ._handler; pyamqp "
            "AMQPClientAsync.client_ready_async",
            "the SDK reads one handshake frame per readiness check and sleeps 50 ms between checks: "
            "a link open (about 9 frames) takes ~0.45 s however fast the broker answers",
            "links open at the SDK's pace (~0.45 s each, plus the network)",
            _link_open,
        ),
        Hook(
            "keep-alive-stop",
            "closing links without waiting for the SDK's keep-alive tick",
            "pyamqp AMQPClientAsync._keep_alive_thread; aio ServiceBusSender/ServiceBusReceiver._handler, "
            "._close_handler",
            "pyamqp's close awaits its keep-alive task, which looks for the shutdown once a second: "
            "~0.5 s per link close, spent waiting",
            "closing a link (client.close(), a receiver's close) waits up to 1 s more",
            _keep_alive_stop,
        ),
        Hook(
            "mgmt-credit",
            "renewing the $management reply link's credit",
            "aio ServiceBusReceiver._mgmt_request_response, ._handler._mgmt_links",
            "pyamqp grants that link 10,000 credits once; a credit-honouring broker then stops answering",
            "after 10,000 management calls (session state, lock renewals, peeks) on one receiver a "
            "credit-honouring broker stops answering: recreate long-lived receivers",
            lambda p: _is_coroutine_method(p.receiver, "_mgmt_request_response") and _has(p.receiver, "_handler"),
        ),
        Hook(
            "settle-socket-timeout",
            "fast settlement beside a waiting receive",
            "pyamqp ReceiveClientAsync._socket_timeout, ConnectionAsync._socket_timeout",
            "a settlement whose reply a waiting receive read waits a whole socket read timeout (0.2 s)",
            "settling while another thread waits in a receive takes up to 0.4 s",
            _socket_timeouts,
        ),
        Hook(
            "batch-fill",
            "filling a group's batch with one compiled encoding per message",
            "ServiceBusMessageBatch._amqp_transport, ._message, ._size, ._count, ._messages, "
            "._tracing_attributes; ServiceBusMessage._message; _common.utils.transform_outbound_messages; "
            "_common.constants._BATCH_MESSAGE_OVERHEAD_COST; _common.tracing.trace_message; "
            "azure.servicebus._pyamqp._encode (encode_payload, its typed encoders, _ENCODE_MAP, "
            "_FIELD_DEFINITIONS); _pyamqp.message.Message, Header, Properties (._definition, ._code)",
            "add_message encodes a message twice with pyamqp's generic encoder: the largest cost per "
            "message on the loop thread of a sender shared by many threads",
            "grouped messages are added the public way (add_message): about 20% fewer msgs/s with 16 "
            "threads on one sender",
            _batch_fill,
        ),
        Hook(
            "trace-grouped-sends",
            "a send span for each caller of a shared (grouped) transfer",
            "_common.tracing.SPAN_NAME_SEND, .TraceOperationTypes, .add_span_attributes, "
            ".get_span_link_from_message; ServiceBusMessage._message",
            "the SDK's send span of a grouped transfer can be the child of one caller's span only; "
            "the others get the span the SDK would have made for their message sent alone",
            "with tracing on, callers whose messages share a transfer get no send span of their own "
            "(their messages still carry their own trace context)",
            _grouped_send_tracing,
        ),
        Hook(
            "batch-lock-renewal",
            "renewing many message locks in one request",
            "aio ServiceBusReceiver._renew_locks, ._check_live; ServiceBusReceivedMessage._expiry; "
            "_common.constants.MGMT_RESPONSE_MESSAGE_EXPIRATION, _common.utils.utc_from_timestamp",
            "renew-lock takes many lock tokens, but the public renew_message_lock sends one",
            "the renewer sends one renew request per message lock",
            _batch_renewal,
        ),
        Hook(
            "deferred-flag",
            "settling received messages beside a waiting receive",
            "ServiceBusReceivedMessage._is_deferred_message",
            "a deferred message is settled by a management request, which must not overlap others",
            "every settlement waits for the receiver's other link operations",
            lambda p: _has(p.message, "_is_deferred_message"),
        ),
        Hook(
            "received-time",
            "counting max_lock_renewal_duration from receipt",
            "ServiceBusReceivedMessage._received_timestamp_utc",
            "the SDK's renewer counts from when the message was received, and so does sbsync's",
            "max_lock_renewal_duration counts from registration",
            lambda p: _has(p.message, "_received_timestamp_utc"),
        ),
        Hook(
            "session-listing",
            "ServiceBusClient.list_queue_sessions/list_subscription_sessions",
            "aio ServiceBusClient.list_queue_sessions, .list_subscription_sessions (azure-servicebus 7.15+)",
            "sbsync runs the aio client's session listing; azure-servicebus added it in 7.15",
            "list_queue_sessions/list_subscription_sessions raise IncompatibleSdkError",
            lambda p: hasattr(p.client, "list_queue_sessions") and hasattr(p.client, "list_subscription_sessions"),
        ),
        Hook(
            "retryable-flag",
            "the SDK's retryable verdict on errors",
            "ServiceBusError._retryable",
            "the SDK marks errors it maps from AMQP conditions retryable or not, privately",
            "only errors of the known transient types are retried",
            _retryable_flag,
        ),
    )
}

_lock = threading.RLock()
_checked = False
_missing: set[str] = set()
_warned: set[str] = set()
_refusal: IncompatibleSdkError | None = None
_probe: Probe | None = None


def probe() -> Probe:
    """The probe objects (built once)."""
    global _probe
    with _lock:
        if _probe is None:
            _probe = Probe()
        return _probe


def _refuse(hook: Hook) -> IncompatibleSdkError:
    return IncompatibleSdkError(
        f"sbsync cannot run on azure-servicebus {SDK_VERSION}: {hook.feature} needs {hook.targets}, "
        f"which it lacks ({hook.why}). Install a supported version: "
        f"pip install 'azure-servicebus{SUPPORTED_RANGE}' (verified: {hook.verified})."
    )


def _warn(hook: Hook, detail: str = "") -> None:
    if hook.name in _warned:
        return
    _warned.add(hook.name)
    _LOGGER.warning(
        "azure-servicebus %s: %s unavailable (%s not found%s); %s. sbsync is verified on azure-servicebus %s.",
        SDK_VERSION,
        hook.feature,
        hook.targets,
        detail,
        hook.fallback,
        hook.verified,
    )


def _check_version() -> IncompatibleSdkError | None:
    """Below the floor: refused. Above the range: one WARNING (each hook is still checked)."""
    found = version_info(SDK_VERSION)
    if found < FLOOR:
        return IncompatibleSdkError(
            f"sbsync needs azure-servicebus{SUPPORTED_RANGE}; {SDK_VERSION} is installed. Before 7.15 "
            "the SDK does not wait for the broker's verdict on a settlement (completing a message "
            "whose lock was lost would seem to succeed). Install: pip install 'azure-servicebus"
            f"{SUPPORTED_RANGE}'."
        )
    if found[:1] >= CEILING:
        _LOGGER.warning(
            "azure-servicebus %s is newer than sbsync's supported range (%s, verified on %s); "
            "each internal sbsync relies on was checked, and any missing one is reported.",
            SDK_VERSION,
            SUPPORTED_RANGE,
            VERIFIED,
        )
    return None


def check_hooks() -> None:
    """At client construction: a supported SDK version, and every hook present, or its fallback
    warned once, or refused."""
    global _checked, _refusal
    with _lock:
        if not _checked:
            _refusal = _check_version()
            p = probe()
            for hook in HOOKS.values():
                try:
                    ok = bool(hook.present(p))
                except Exception:
                    _LOGGER.debug("probe for %s failed", hook.name, exc_info=True)
                    ok = False
                if ok:
                    continue
                _missing.add(hook.name)
                if hook.fallback is None:
                    _refusal = _refusal or _refuse(hook)
                elif _refusal is None:  # a refused SDK gets the one error, not warnings besides
                    _warn(hook)
            _checked = True
        if _refusal is not None:
            raise _refusal


def available(name: str) -> bool:
    """Whether hook ``name`` can be used (checked once per process)."""
    if not _checked:
        try:
            check_hooks()
        except IncompatibleSdkError:
            pass
    return name not in _missing


def report_missing(name: str, detail: str = "") -> None:
    """A hook's target turned out missing at use (on an object the probe cannot build):
    use the fallback from now on, and say so once."""
    with _lock:
        _missing.add(name)
        _warn(HOOKS[name], detail)


def reset() -> None:
    """Forget the check (tests remove hook targets, then check again)."""
    global _checked, _refusal, _probe
    with _lock:
        _checked = False
        _refusal = None
        _probe = None
        _missing.clear()
        _warned.clear()
        _shutdown_patterns.clear()
