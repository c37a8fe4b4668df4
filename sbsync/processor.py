"""A session processor for synchronous code, in the shape of .NET's ServiceBusSessionProcessor.

Worker threads each take one session at a time (``NEXT_AVAILABLE_SESSION``), hand its messages to
the handler strictly in order, and release the session once it has been idle for
``session_idle_timeout`` so that a few workers can serve many sessions. Locks (the session's and
each message's) are kept alive by one :class:`~sbsync.AutoLockRenewer` while handlers run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage
from azure.servicebus.exceptions import (
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from ._lifecycle import Lifecycle
from ._renewer import AutoLockRenewer
from .exceptions import ClientClosedError

if TYPE_CHECKING:
    from .client import ServiceBusClient
    from .receiver import ServiceBusReceiver
    from .session import ServiceBusSession

_log = logging.getLogger(__name__)

# The longest a worker blocks outside a handler (taking a session, waiting for a message), so
# that stop() is noticed promptly.
_ACCEPT_WAIT = 1.0


@dataclass
class SessionContext:
    """What a handler gets besides the message: the session and its receiver.

    With ``auto_complete=False`` the handler settles messages itself through ``receiver``.
    """

    session: ServiceBusSession
    receiver: ServiceBusReceiver

    @property
    def session_id(self) -> str:
        return self.session.session_id


@dataclass
class ProcessorStats:
    """Counters a processor keeps; read them at any time (values may be a moment stale)."""

    messages_completed: int = 0
    messages_abandoned: int = 0
    handler_errors: int = 0
    sessions_accepted: int = 0
    sessions_lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)


Handler = Callable[[ServiceBusReceivedMessage, SessionContext], Any]
ErrorCallback = Callable[[BaseException, Optional[SessionContext]], Any]
SessionCallback = Callable[[SessionContext], Any]


class SessionProcessor:
    """Process a session-enabled queue or subscription with a pool of worker threads.

    Each worker holds at most one session at a time and calls ``handler(message, context)`` for
    its messages in order. If the handler returns, the message is completed (with
    ``auto_complete``); if it raises, the message is abandoned (so after the entity's max
    delivery count it is dead-lettered) and ``on_error(exception, context)`` is called. A lost
    session lock ends the work on that session; the worker moves on to the next one.
    """

    def __init__(
        self,
        client: ServiceBusClient,
        *,
        handler: Handler,
        queue_name: str | None = None,
        topic_name: str | None = None,
        subscription_name: str | None = None,
        max_concurrent_sessions: int = 8,
        session_idle_timeout: float = 5.0,
        max_lock_renewal_duration: float = 300.0,
        auto_complete: bool = True,
        on_error: ErrorCallback | None = None,
        on_session_start: SessionCallback | None = None,
        on_session_close: SessionCallback | None = None,
    ) -> None:
        if (queue_name is None) == (topic_name is None):
            raise ValueError("Give either queue_name, or topic_name with subscription_name.")
        if topic_name is not None and subscription_name is None:
            raise ValueError("topic_name needs subscription_name.")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}.")
        if max_concurrent_sessions < 1:
            raise ValueError("max_concurrent_sessions must be at least 1.")
        if session_idle_timeout <= 0 or max_lock_renewal_duration <= 0:
            raise ValueError("session_idle_timeout and max_lock_renewal_duration must be > 0.")
        self._client = client
        self._handler = handler
        self._queue_name = queue_name
        self._topic_name = topic_name
        self._subscription_name = subscription_name
        self._max_concurrent_sessions = max_concurrent_sessions
        self._session_idle_timeout = session_idle_timeout
        self._auto_complete = auto_complete
        self._on_error = on_error
        self._on_session_start = on_session_start
        self._on_session_close = on_session_close
        self._renewer = AutoLockRenewer(max_lock_renewal_duration=max_lock_renewal_duration)
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._client_gone = threading.Lock()  # taken once: the warning below is logged once
        self.stats = ProcessorStats()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads; returns at once."""
        if self._workers:
            raise RuntimeError("This SessionProcessor has already been started.")
        for index in range(self._max_concurrent_sessions):
            worker = threading.Thread(
                target=self._work, name=f"sbsync-processor-{index}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop taking messages, let handlers finish the message in hand, release sessions.

        Returns True if every worker ended within ``timeout`` seconds.
        """
        # Workers never block for longer than _ACCEPT_WAIT outside a handler, so they notice.
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.join(remaining)
        ended = not any(worker.is_alive() for worker in self._workers)
        if ended:
            self._renewer.close()
        return ended

    @property
    def renewals(self) -> int:
        """How many lock renewals (sessions and messages) this processor's renewer made."""
        return self._renewer.renewals

    def run_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` is called from another thread."""
        if not self._workers:
            self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def __enter__(self) -> SessionProcessor:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- workers ---------------------------------------------------------------------------

    def _open_receiver(self) -> ServiceBusReceiver:
        kwargs: dict[str, Any] = {
            "session_id": NEXT_AVAILABLE_SESSION,
            "max_wait_time": _ACCEPT_WAIT,
        }
        if self._queue_name is not None:
            return self._client.get_queue_receiver(self._queue_name, **kwargs)
        assert self._topic_name is not None and self._subscription_name is not None
        return self._client.get_subscription_receiver(
            self._topic_name, self._subscription_name, **kwargs
        )

    def _client_closed(self) -> bool:
        """Whether the client was closed under the running processor: its workers end (a closed
        client would reopen on their next call, with a loop thread nobody will close)."""
        if self._client._lifecycle is Lifecycle.OPEN:
            return False
        if self._client_gone.acquire(blocking=False):
            _log.warning("session processor stopping: its client was closed (stop the processor first)")
        return True

    def _work(self) -> None:
        while not self._stopping.is_set() and not self._client_closed():
            try:
                receiver = self._open_receiver()
            except ClientClosedError:
                if self._client_closed():
                    return
                raise
            try:
                self._serve_one_session(receiver)
            except ClientClosedError:
                if not self._client_closed():
                    raise
            except (OperationTimeoutError, SessionCannotBeLockedError):
                pass  # no session free right now; try again
            except (SessionLockLostError, MessageLockLostError) as exc:
                self.stats.add("sessions_lost")
                self._report(exc, None)
            except ServiceBusError as exc:
                if not self._stopping.is_set():
                    self._report(exc, None)
                    self._stopping.wait(0.5)  # do not spin on a broken connection
            finally:
                receiver.close()

    def _serve_one_session(self, receiver: ServiceBusReceiver) -> None:
        # The first receive takes the session; until then the receiver may be closed by stop().
        first = receiver.receive_messages(max_message_count=1, max_wait_time=_ACCEPT_WAIT)
        session = receiver.session
        context = SessionContext(session=session, receiver=receiver)
        # A lost session lock is logged by the renewer and raised by the worker's next call.
        self._renewer.register(receiver, session)
        self.stats.add("sessions_accepted")
        _log.debug("worker took session %s", session.session_id)
        if self._on_session_start is not None:
            self._on_session_start(context)
        try:
            pending = list(first)
            idle_since = time.monotonic()
            while not self._stopping.is_set():
                if not pending:
                    idle = time.monotonic() - idle_since
                    if idle >= self._session_idle_timeout:
                        break
                    pending = receiver.receive_messages(
                        max_message_count=1,
                        max_wait_time=min(self._session_idle_timeout - idle, 1.0),
                    )
                    continue
                self._handle(pending.pop(0), context)
                idle_since = time.monotonic()
        finally:
            if self._on_session_close is not None:
                self._on_session_close(context)

    def _handle(self, message: ServiceBusReceivedMessage, context: SessionContext) -> None:
        receiver = context.receiver
        # Messages of a session have no lock of their own: the session lock (renewed) covers them.
        try:
            self._handler(message, context)
        except Exception as exc:
            self.stats.add("handler_errors")
            self._report(exc, context)
            receiver.abandon_message(message)
            self.stats.add("messages_abandoned")
            return
        if self._auto_complete:
            receiver.complete_message(message)
            self.stats.add("messages_completed")

    def _report(self, exc: BaseException, context: SessionContext | None) -> None:
        if self._on_error is None:
            _log.error("SessionProcessor: %s", exc, exc_info=exc)
            return
        try:
            self._on_error(exc, context)
        except Exception:
            _log.exception("on_error callback raised")
