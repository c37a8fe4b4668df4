"""The ``Emulator``: a broker plus a proton reactor on a daemon thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from proton.reactor import ApplicationEvent, Container, EventInjector

from ._amqp import Adapter
from ._broker import Broker, EntityStats
from ._config import EntityConfig
from ._faults import FaultRules, Faults

_LOG = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"  # Microsoft's emulator's documented development default

T = TypeVar("T")


class Emulator:
    """A local Azure Service Bus namespace on loopback AMQP (no TLS).

    Use as a context manager or call ``start()``/``stop()``; point the SDK at
    ``connection_string``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, queues: Iterable[str] = (),
                 session_queues: Iterable[str] = (), topics: Iterable[str] = (),
                 subscriptions: Iterable[str] = (), session_subscriptions: Iterable[str] = (),
                 entities: Iterable[EntityConfig] = (), lock_duration: float = 60.0,
                 max_delivery_count: int = 10, default_message_ttl: float | None = None,
                 key_name: str = DEFAULT_KEY_NAME, key: str = DEFAULT_KEY,
                 auto_create: bool = False, max_message_size: int = 256 * 1024) -> None:
        self.host = host
        self.port = port
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
            self._broker.create(EntityConfig(name=sub, kind="subscription", topic=topic,
                                             requires_session=sessions))
        for cfg in entities:
            self._broker.create(cfg)
        self._rules = FaultRules()
        self._adapter = Adapter(self._broker, self._rules, key_name, key, max_message_size)
        self.faults = Faults(self._call, lambda: self._adapter, self._rules)
        self._thread: threading.Thread | None = None
        self._container: Any = None
        self._injector: EventInjector | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Emulator {self.host}:{self.port} key_name={self._key_name!r} {state}>"

    @property
    def connection_string(self) -> str:
        return (f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={self._key_name};"
                f"SharedAccessKey={self._key};UseDevelopmentEmulator=true")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        with self._lock:
            if self._thread is not None:
                return self
            ready: Future[None] = Future()
            container = Container(self._adapter)
            self._container = container
            self._adapter.container = container
            self._adapter.stopping = False
            injector = EventInjector()
            self._injector = injector
            container.selectable(injector)

            def run() -> None:
                try:
                    self._adapter.listen_addr = (self.host, self.port)
                    self.port = self._adapter.listen()
                    self._adapter.listen_addr = (self.host, self.port)
                    container.schedule(0.05, self._adapter)
                except BaseException as exc:
                    ready.set_exception(exc)
                    injector.close()
                    return
                ready.set_result(None)
                try:
                    container.run()
                except Exception:  # the reactor died: log it, the thread ends
                    _LOG.exception("emulator reactor failed")
                finally:
                    self._close_leftovers()

            # listen() must run where the reactor runs, so the thread does both
            thread = threading.Thread(target=run, name="sbsync-emulator",
                                      daemon=True)
            self._thread = thread
            thread.start()
            try:
                ready.result(timeout=10)
            except BaseException:
                self._thread = None
                thread.join(timeout=5)
                raise
            _LOG.info("emulator listening on %s:%d", self.host, self.port)
            return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            try:
                self._call(self._adapter.shutdown, timeout=timeout)
            except Exception:  # already dead or wedged: joining below is all that is left
                _LOG.debug("shutdown call failed", exc_info=True)
            thread.join(timeout)
            if self._injector is not None:
                for fd in self._injector.pipe:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                self._injector = None
            self._thread = None
            self._container = None

    def restart(self) -> Emulator:
        """Stop and start again on the same port, keeping all entities and messages."""
        self.stop()
        return self.start()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _close_leftovers(self) -> None:
        self._adapter.forget_all()
        self._adapter.conns.clear()
        self._adapter.acceptor = None
        self._adapter.close_sockets()

    # ------------------------------------------------------------ cross-thread

    def _call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` inside the reactor thread and return its result."""
        if self._thread is None or self._injector is None:
            with self._lock:  # not running: only callers like this one touch the broker
                return fn()
        if threading.current_thread() is self._thread:
            return fn()
        done: Future[T] = Future()
        self._adapter.calls.append((fn, done))
        self._injector.trigger(ApplicationEvent("emu_call"))
        return done.result(timeout)

    # ------------------------------------------------------------ inspection

    def stats(self, entity_path: str) -> EntityStats:
        return self._call(lambda: self._broker.lookup(entity_path).stats())

    def create_entity(self, config: EntityConfig) -> None:
        self._call(lambda: self._broker.create(config))

