"""Flask integration: one sbsync client per app and process, and the helpers a view needs.

Install with ``pip install 'sbsync[flask]'``.

.. code-block:: python

    from flask import Flask, request
    from sbsync.flask import ServiceBus

    servicebus = ServiceBus()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["SERVICEBUS_CONNECTION_STR"] = os.environ["SERVICEBUS_CONNECTION_STR"]
        servicebus.init_app(app)          # or ServiceBus(app)

        @app.post("/customers/<customer_id>/orders")
        def post_order(customer_id: str):
            servicebus.send(request.get_json(), queue_name="orders", session_id=customer_id)
            return {"accepted": True}, 202

        return app

Configuration (``app.config``):

``SERVICEBUS_CONNECTION_STR``
    A connection string. Or, for Microsoft Entra ID (managed identity and so on):
``SERVICEBUS_FULLY_QUALIFIED_NAMESPACE`` and ``SERVICEBUS_CREDENTIAL``
    ``<name>.servicebus.windows.net`` and a credential object (``DefaultAzureCredential()``,
    sync or async).
``SERVICEBUS_CLIENT_OPTIONS``
    Extra keyword arguments for :class:`sbsync.ServiceBusClient` (``retry_total=`` ...).
``SERVICEBUS_TIMEOUT``
    Seconds that one helper call may take, link opening included (default 10): a view never
    blocks a worker thread for longer. ``None`` for no bound.

Lifetime. ``init_app`` creates the app's :class:`sbsync.ServiceBusClient` (no network I/O:
links open on first use) and stores it in ``app.extensions["servicebus"]``. There is one client
per app per process, never one per request; every thread shares it. Senders are cached too,
one per queue or topic, opened on the first send and kept open, because opening an AMQP link
is a handshake (a dozen frames and a token) while a send on an open link costs about a
millisecond. The client and its senders are closed at interpreter exit (a gunicorn or uwsgi
worker exiting) or by :meth:`ServiceBus.close`, e.g. at the end of a test.

Forking servers. sbsync clients are fork-safe: a client created in the parent (gunicorn
``--preload``, uwsgi without ``lazy-apps``) works in every forked worker, which starts its own
event-loop thread and connection on first use and never touches the parent's. No
``post_fork`` hook is needed.

WSGI without Flask (Django, Pyramid, bare WSGI): the same shape by hand. One module-level
client per process and one sender per entity, both shared by every thread::

    # myproject/servicebus.py
    import os
    import sbsync

    client = sbsync.ServiceBusClient.from_connection_string(os.environ["SERVICEBUS_CONNECTION_STR"])
    orders = client.get_queue_sender("orders")   # the link opens on the first send

    # in a view
    from myproject.servicebus import orders
    orders.send_messages(sbsync.ServiceBusMessage(body, session_id=customer_id), timeout=10)

Creating them at import time is fine, even before a fork: they do no I/O until first used,
and each process then builds its own loop thread and connection. The process closes them at
exit; ``atexit.register(client.close)`` closes the links gracefully rather than dropping them.
See ``docs/wsgi.rst`` for the gunicorn and uwsgi settings.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

try:
    from flask import Flask, current_app
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "sbsync.flask needs Flask, which is not installed: pip install 'sbsync[flask]'"
    ) from _exc

from azure.servicebus import ServiceBusMessage

from .client import ServiceBusClient
from .exceptions import ClientClosedError
from .receiver import ServiceBusReceiver
from .sender import ServiceBusSender

__all__ = ["EXTENSION_KEY", "ServiceBus", "ServiceBusState"]

#: The key of the extension's :class:`ServiceBusState` in ``app.extensions``.
EXTENSION_KEY = "servicebus"
_DEFAULT_TIMEOUT = 10.0

# States to repair in a forked child (see _after_fork_in_child).
_STATES: weakref.WeakSet[ServiceBusState] = weakref.WeakSet()


class ServiceBusState:
    """What the extension keeps per app: the client and its cached senders.

    Found in ``app.extensions["servicebus"]``. Thread-safe.
    """

    def __init__(self, client: ServiceBusClient, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        self._senders: dict[tuple[str, str], ServiceBusSender] = {}
        self._lock = threading.Lock()
        self._closed = False
        _STATES.add(self)

    def open_client(self) -> ServiceBusClient:
        """The client, unless the extension was closed: ``servicebus.close(app)`` is final for
        the app (a ``ServiceBusClient`` alone would reopen on its next use)."""
        if self._closed:
            raise ClientClosedError(
                "The app's Service Bus extension was closed (servicebus.close(app)); "
                "initialise a new ServiceBus for the app."
            )
        return self.client

    def sender(self, kind: str, name: str) -> ServiceBusSender:
        """The cached sender for ``("queue" | "topic", name)``, created on first request."""
        key = (kind, name)
        sender = self._senders.get(key)
        if sender is not None:
            return sender
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                client = self.open_client()
                if kind == "queue":
                    sender = client.get_queue_sender(name)
                else:
                    sender = client.get_topic_sender(name)
                self._senders[key] = sender
            return sender

    def close(self) -> None:
        """Close the client and with it every cached sender. Idempotent."""
        atexit.unregister(self.close)
        self._closed = True
        self.client.close()

    def _reset_lock(self) -> None:
        # A fork can happen while another thread holds the lock; the child has no such thread.
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for state in list(_STATES):
        state._reset_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _make_client(config: Mapping[str, Any]) -> ServiceBusClient:
    options = dict(config.get("SERVICEBUS_CLIENT_OPTIONS") or {})
    conn_str = config.get("SERVICEBUS_CONNECTION_STR")
    namespace = config.get("SERVICEBUS_FULLY_QUALIFIED_NAMESPACE")
    credential = config.get("SERVICEBUS_CREDENTIAL")
    if conn_str and (namespace or credential):
        raise ValueError(
            "Set either SERVICEBUS_CONNECTION_STR, or SERVICEBUS_FULLY_QUALIFIED_NAMESPACE with "
            "SERVICEBUS_CREDENTIAL, not both."
        )
    if conn_str:
        return ServiceBusClient.from_connection_string(conn_str, **options)
    if namespace and credential is not None:
        return ServiceBusClient(namespace, credential, **options)
    raise ValueError(
        "sbsync.flask needs SERVICEBUS_CONNECTION_STR, or SERVICEBUS_FULLY_QUALIFIED_NAMESPACE "
        "and SERVICEBUS_CREDENTIAL, in app.config."
    )


def _to_message(message: Any, session_id: str | None, message_kwargs: dict[str, Any]) -> ServiceBusMessage:
    """A ``ServiceBusMessage`` from a message, ``str``/``bytes``, or JSON-serializable data."""
    if isinstance(message, ServiceBusMessage):
        if message_kwargs:
            raise TypeError("Message properties go on the ServiceBusMessage itself, not as keywords.")
        if session_id is not None:
            message.session_id = session_id
        return message
    if not isinstance(message, (str, bytes)):
        message = json.dumps(message, separators=(",", ":"))
        message_kwargs.setdefault("content_type", "application/json")
    return ServiceBusMessage(message, session_id=session_id, **message_kwargs)


def _one_entity(queue_name: str | None, topic_name: str | None) -> tuple[str, str]:
    if queue_name is not None and topic_name is None:
        return "queue", queue_name
    if topic_name is not None and queue_name is None:
        return "topic", topic_name
    raise TypeError("Give exactly one of queue_name= and topic_name=.")


class ServiceBus:
    """The Flask extension: ``ServiceBus(app)``, or ``servicebus = ServiceBus()`` then
    ``servicebus.init_app(app)`` in an app factory.

    The helpers use the current app's client (``flask.current_app``), or ``app=`` when given,
    so they work in views, CLI commands and anywhere an app context is pushed.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Create the app's client from ``app.config`` and register it in ``app.extensions``."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("sbsync.flask is already initialised for this app.")
        app.config.setdefault("SERVICEBUS_TIMEOUT", _DEFAULT_TIMEOUT)
        state = ServiceBusState(_make_client(app.config), app.config["SERVICEBUS_TIMEOUT"])
        app.extensions[EXTENSION_KEY] = state
        # Close the links gracefully when the process ends (a worker's exit), not per request.
        atexit.register(state.close)

    # -- access ------------------------------------------------------------------------------

    def state(self, app: Flask | None = None) -> ServiceBusState:
        """The app's :class:`ServiceBusState` (the current app's by default)."""
        target = app if app is not None else current_app
        try:
            return target.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError(
                "sbsync.flask is not initialised for this app: call ServiceBus(app) or init_app(app)."
            ) from None

    def client(self, app: Flask | None = None) -> ServiceBusClient:
        """The app's :class:`sbsync.ServiceBusClient`, shared by all threads of this process."""
        return self.state(app).client

    def get_sender(
        self,
        *,
        queue_name: str | None = None,
        topic_name: str | None = None,
        app: Flask | None = None,
    ) -> ServiceBusSender:
        """The app's sender for a queue or a topic: one per entity per process, kept open.

        Do not close it; it is closed with the client.
        """
        kind, name = _one_entity(queue_name, topic_name)
        return self.state(app).sender(kind, name)

    # -- helpers for views ---------------------------------------------------------------------

    def send(
        self,
        message: Any,
        *,
        queue_name: str | None = None,
        topic_name: str | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        app: Flask | None = None,
        **message_kwargs: Any,
    ) -> None:
        """Send one message to a queue or a topic; returns once Service Bus accepted it.

        ``message`` is a ``ServiceBusMessage``, a ``str``/``bytes`` body, or anything
        ``json.dumps`` takes (sent with ``content_type="application/json"``). Other keywords
        (``message_id=``, ``application_properties=``, ``subject=`` ...) are
        ``ServiceBusMessage`` properties. ``timeout`` defaults to ``SERVICEBUS_TIMEOUT``.
        Sends from concurrent requests share the sender's link (and its transfers).
        """
        kind, name = _one_entity(queue_name, topic_name)
        state = self.state(app)
        outgoing = _to_message(message, session_id, message_kwargs)
        state.sender(kind, name).send_messages(outgoing, timeout=_timeout(timeout, state))

    def get_session_state(
        self,
        session_id: str,
        *,
        queue_name: str | None = None,
        topic_name: str | None = None,
        subscription_name: str | None = None,
        timeout: float | None = None,
        app: Flask | None = None,
    ) -> bytes | None:
        """A session's state (None when never set), from a queue or a topic subscription.

        Service Bus reads state under the session's lock, so this takes the lock for a moment.
        While a worker holds the session the call retries (the SDK deems that retryable) until
        the session is free or ``timeout`` runs out, then raises ``SessionCannotBeLockedError``
        or ``OperationTimeoutError`` (a view may answer 409/503 with ``Retry-After``). Each
        call opens a session link (a handshake: a few round trips); its close runs in the background.
        """
        state = self.state(app)
        receiver = self._session_receiver(state, session_id, queue_name, topic_name, subscription_name)
        try:
            return receiver.session.get_state(timeout=_timeout(timeout, state))
        finally:
            receiver.close()

    def set_session_state(
        self,
        session_id: str,
        session_state: str | bytes | bytearray | None,
        *,
        queue_name: str | None = None,
        topic_name: str | None = None,
        subscription_name: str | None = None,
        timeout: float | None = None,
        app: Flask | None = None,
    ) -> None:
        """Replace a session's state (None clears it); same locking as :meth:`get_session_state`."""
        state = self.state(app)
        receiver = self._session_receiver(state, session_id, queue_name, topic_name, subscription_name)
        try:
            receiver.session.set_state(session_state, timeout=_timeout(timeout, state))
        finally:
            receiver.close()

    @staticmethod
    def _session_receiver(
        state: ServiceBusState,
        session_id: str,
        queue_name: str | None,
        topic_name: str | None,
        subscription_name: str | None,
    ) -> ServiceBusReceiver:
        if not isinstance(session_id, str) or not session_id:
            raise TypeError("session_id must be a non-empty string.")
        kind, name = _one_entity(queue_name, topic_name)
        if kind == "queue":
            if subscription_name is not None:
                raise TypeError("subscription_name= goes with topic_name=, not queue_name=.")
            return state.open_client().get_queue_receiver(name, session_id=session_id)
        if subscription_name is None:
            raise TypeError("topic_name= needs subscription_name=.")
        return state.open_client().get_subscription_receiver(name, subscription_name, session_id=session_id)

    def close(self, app: Flask | None = None) -> None:
        """Close the app's client and senders now (tests; an app being discarded). Idempotent."""
        self.state(app).close()


def _timeout(timeout: float | None, state: ServiceBusState) -> float | None:
    return timeout if timeout is not None else state.timeout
