"""The ``Emulator``: a broker plus the protocol loop on a daemon thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable, TypeVar

from ._amqp import Adapter
from ._broker import Broker
from ._config import EntityConfig
from ._faults import FaultRules, Faults
from ._http import HttpHandler
from ._loop import Loop
from ._records import EntityStats
from ._tls import TlsConfig

_LOG = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"  # Microsoft's emulator's documented development default

T = TypeVar("T")


class Emulator:
    """A local Azure Service Bus namespace on loopback: AMQP, AMQPS and HTTP(S) on one port.

    Use as a context manager or call ``start()``/``stop()``; point the SDK at
    ``connection_string``. The port tells protocols apart by their first bytes: plain AMQP
    (``UseDevelopmentEmulator=true``), TLS (AMQPS, or HTTPS for the administration client)
    and plain HTTP. ``tls_port`` (0 = a free port) adds a TLS-only listener for clients that
    insist on one (the uAMQP transport's 5671). ``tls_cert``/``tls_key`` are PEM files for
    TLS; without them a development CA and a certificate for localhost, 127.0.0.1 and ::1
    are generated on first use, and ``ca_file`` is what clients trust
    (``connection_verify=emulator.ca_file``). ``http_handler`` serves HTTP (``_http``). Entities: ``queues`` / ``session_queues`` / ``topics`` by name,
    ``subscriptions`` / ``session_subscriptions`` as ``"topic/sub"``, or ``entities`` with
    full per-entity settings. ``lock_duration``, ``max_delivery_count`` and
    ``default_message_ttl`` (seconds, None = no expiry) are the defaults for entities that do
    not set their own. ``auto_create`` creates unknown queues and subscriptions on first use
    (they accept session and non-session receivers). Transfers above ``max_message_size``
    bytes are refused (MessageSizeExceededError). A next-available-session receiver that
    names no wait of its own (``com.microsoft:timeout``; the SDK's uAMQP transport never
    does) waits ``next_session_wait`` seconds for a session, 65 as the service. Entities and
    messages live in memory and survive ``stop()``/``start()``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, queues: Iterable[str] = (),
                 session_queues: Iterable[str] = (), topics: Iterable[str] = (),
                 subscriptions: Iterable[str] = (), session_subscriptions: Iterable[str] = (),
                 entities: Iterable[EntityConfig] = (), lock_duration: float = 60.0,
                 max_delivery_count: int = 10, default_message_ttl: float | None = None,
                 key_name: str = DEFAULT_KEY_NAME, key: str = DEFAULT_KEY,
                 auto_create: bool = False, max_message_size: int = 256 * 1024,
                 tls_port: int | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, next_session_wait: float = 65.0) -> None:
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self._key_name = key_name
        self._key = key
        self._broker = Broker(lock_duration=lock_duration, max_delivery_count=max_delivery_count,
                              default_message_ttl=default_message_ttl, auto_create=auto_create)
        for name in queues:
            self._broker.create(EntityConfig(name=name))
        for name in session_queues:
            self._broker.create(EntityConfig(name=name, requires_session=True))
        for name in topics:
            self._broker.create(EntityConfig(name=name, kind="topic"))
        for spec, sessions in [(s, False) for s in subscriptions] + \
                [(s, True) for s in session_subscriptions]:
            topic, _, sub = spec.partition("/")
            if sub.lower().startswith("subscriptions/"):  # "topic/Subscriptions/sub" also works
                sub = sub.split("/", 1)[1]
            self._broker.create(EntityConfig(name=sub, kind="subscription", topic=topic,
                                             requires_session=sessions))
        for cfg in entities:
            self._broker.create(cfg)
        self._rules = FaultRules()
        self._tls = TlsConfig(tls_cert, tls_key, host)
        self._adapter = Adapter(self._broker, self._rules, key_name, key, max_message_size,
                                self._tls, next_session_wait)
        self.faults = Faults(self._call, lambda: self._adapter, self._rules)
        self._thread: threading.Thread | None = None
        self._loop: Loop | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Emulator {self.host}:{self.port} key_name={self._key_name!r} {state}>"

    @property
    def ca_file(self) -> str:
        """The PEM file TLS clients should trust (the given ``tls_cert``, or the generated
        development CA, made on first access)."""
        return self._tls.ca_file

    @property
    def http_handler(self) -> HttpHandler:
        """Serves HTTP requests on the emulator's port (see ``sbsync.emulator._http``)."""
        return self._adapter.http_handler

    @http_handler.setter
    def http_handler(self, handler: HttpHandler) -> None:
        self._adapter.http_handler = handler

    @property
    def connection_string(self) -> str:
        return (f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={self._key_name};"
                f"SharedAccessKey={self._key};UseDevelopmentEmulator=true")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Listen and serve on a daemon thread; returns once connections are accepted."""
        with self._lock:
            if self._thread is not None:
                return self
            loop = Loop(self._adapter)
            try:
                self.port, self.tls_port = self._adapter.start(loop, self.host, self.port,
                                                               self.tls_port)
            except BaseException:  # e.g. the port is taken, or a bad certificate
                loop.close()
                raise
            thread = threading.Thread(target=self._run, args=(loop,), name="sbsync-emulator",
                                      daemon=True)
            self._loop = loop
            self._thread = thread
            thread.start()
            _LOG.info("emulator listening on %s:%d%s", self.host, self.port,
                      "" if self.tls_port is None else f" (TLS only on {self.tls_port})")
            return self

    @staticmethod
    def _run(loop: Loop) -> None:
        try:
            loop.run()
        except Exception:  # the loop died: log it, the thread ends
            _LOG.exception("emulator loop failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, and join the thread. Idempotent;
        entities and messages are kept for a later ``start``."""
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if threading.current_thread() is thread:  # stop() from an emulator callback
                self._adapter.shutdown()
                self._thread = self._loop = None
                return
            if thread.is_alive():
                try:
                    loop.call(self._adapter.shutdown, timeout)
                except Exception:  # already ended or wedged: joining is all that is left
                    _LOG.debug("shutdown call failed", exc_info=True)
            thread.join(timeout)
            self._thread = None
            self._loop = None

    def restart(self) -> Emulator:
        """Stop and start again on the same port, keeping all entities and messages."""
        self.stop()
        return self.start()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ cross-thread

    def _call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the loop thread (or here when not running) and return its result."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            with self._lock:  # not running: only callers like this one touch the broker
                return fn()
        if threading.current_thread() is thread:
            return fn()
        return loop.call(fn, timeout)

    # ------------------------------------------------------------ inspection

    def stats(self, entity_path: str) -> EntityStats:
        """Message counts of an entity (``queue``, ``topic/Subscriptions/sub``); any thread."""
        def snapshot() -> EntityStats:
            entity = self._broker.find(entity_path)
            if entity is None:
                raise KeyError(f"no entity {entity_path!r}")
            return entity.stats()
        return self._call(snapshot)

    def create_entity(self, config: EntityConfig) -> None:
        """Add a queue, topic or subscription (no-op if its path exists); any thread."""
        def create() -> None:
            self._broker.create(config)
        self._call(create)

