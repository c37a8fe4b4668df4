"""A lean event loop for proton's protocol engine: sockets, timers, cross-thread calls.

proton's own ``Container`` routes every socket readiness change through Python event objects
and two handler layers. This loop drives the same engine (``Transport``, ``Connection``,
``Collector``) directly with a ``selectors`` selector and hands only the protocol events we
act on to the adapter: measured, the emulator's CPU per peek-lock receive+complete fell from
~286 to ~182 us and the SDK's receive+complete rate in one process rose by ~50%.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from cproton import isnull, pn_collector_peek, pn_collector_pop, pn_event_type
from proton import Collector, Connection, Event, Transport

from ._frames import FullFrames

_LOG = logging.getLogger(__name__)
_READ_CHUNK = 256 * 1024


class _Io:
    """One accepted socket and the engine objects bound to it."""

    __slots__ = ("closed", "connection", "sock", "transport", "want_write")

    def __init__(self, sock: socket.socket, transport: Any, connection: Any) -> None:
        self.sock = sock
        self.transport = transport
        self.connection = connection
        self.want_write = False
        self.closed = False


class Loop:
    """Runs on one thread; other threads only use ``call`` (and ``stop`` through it)."""

    def __init__(self, sink: Any) -> None:
        """``sink``: the adapter; gets ``bound``/``transport_closed`` and the ``on_*`` events."""
        self._sink = sink
        self._collector = Collector()
        self._selector = selectors.DefaultSelector()
        self._ios: dict[int, _Io] = {}
        self._listener: socket.socket | None = None
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = False
        self._stopping = False
        # protocol events the adapter acts on, by proton event type number
        self._handlers: dict[int, Callable[[Any], None]] = {}
        for etype, name in [
                (Event.CONNECTION_REMOTE_OPEN, "on_connection_remote_open"),
                (Event.CONNECTION_REMOTE_CLOSE, "on_connection_remote_close"),
                (Event.SESSION_REMOTE_OPEN, "on_session_remote_open"),
                (Event.SESSION_REMOTE_CLOSE, "on_session_remote_close"),
                (Event.LINK_REMOTE_OPEN, "on_link_remote_open"),
                (Event.LINK_REMOTE_CLOSE, "on_link_remote_close"),
                (Event.LINK_FLOW, "on_link_flow"),
                (Event.DELIVERY, "on_delivery")]:
            self._handlers[etype.number] = getattr(sink, name)

    # ------------------------------------------------------------ listening

    def listen(self, host: str, port: int) -> int:
        """Accept connections on host:port (0 = any free port); return the bound port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, "listener")
        return int(sock.getsockname()[1])

    def close_listener(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of descriptors: keep serving the others
            _LOG.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = FullFrames(Transport(Transport.SERVER))  # every field on the wire, as the service
        connection = Connection()
        connection.collect(self._collector)
        transport.bind(connection)
        io = _Io(sock, transport, connection)
        self._ios[sock.fileno()] = io
        self._selector.register(sock, selectors.EVENT_READ, io)
        self._sink.bound(connection, transport)

    # ------------------------------------------------------------ timers and calls

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), fn))

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the loop thread and return its result (from any other thread)."""
        done: Future[Any] = Future()
        self._calls.append((fn, done))
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are shutting down)
        return done.result(timeout)

    def stop(self) -> None:
        """End ``run`` after this iteration (loop thread only)."""
        self._stopping = True

    # ------------------------------------------------------------ connections

    def connections(self) -> list[Any]:
        return [io.connection for io in self._ios.values()]

    def drop_all(self) -> int:
        """Close every client socket abruptly; return how many."""
        ios = list(self._ios.values())
        for io in ios:
            self._close_io(io)
        return len(ios)

    def _close_io(self, io: _Io) -> None:
        if io.closed:
            return
        io.closed = True
        self._ios.pop(io.sock.fileno(), None)
        try:
            self._selector.unregister(io.sock)
        except (KeyError, ValueError):
            pass
        try:
            io.sock.close()
        except OSError:
            pass
        try:
            io.transport.close_tail()
            io.transport.close_head()
        except Exception:  # the engine may already consider it closed
            pass
        self._sink.transport_closed(io.connection)
        io.transport.unbind()

    def _read(self, io: _Io) -> None:
        transport = io.transport
        try:
            capacity = transport.capacity()
        except Exception:
            capacity = -1
        if capacity <= 0:
            if capacity < 0:  # the engine has stopped reading (closed or failed)
                self._close_io(io)
            return
        try:
            data = io.sock.recv(min(capacity, _READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_io(io)
            return
        try:
            transport.push(data)
        except Exception:  # garbage on the wire: the engine failed this connection
            _LOG.debug("transport input failed", exc_info=True)
            self._flush(io)
            self._close_io(io)

    def _flush(self, io: _Io) -> None:
        transport = io.transport
        while not io.closed:
            try:
                pending = transport.pending()
            except Exception:
                pending = -1
            if pending < 0:  # output closed: once the input is too, the socket goes
                if transport.closed:
                    self._close_io(io)
                return
            if pending == 0:
                if io.want_write:
                    io.want_write = False
                    self._selector.modify(io.sock, selectors.EVENT_READ, io)
                return
            try:
                sent = io.sock.send(transport.peek(pending))
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_io(io)
                return
            if sent:
                transport.pop(sent)
            if sent < pending:
                if not io.want_write:
                    io.want_write = True
                    self._selector.modify(io.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                          io)
                return

    # ------------------------------------------------------------ running

    def _dispatch(self) -> None:
        """Hand queued protocol events to the adapter."""
        coll = self._collector._impl
        handlers = self._handlers
        while True:
            impl = pn_collector_peek(coll)
            if isnull(impl):
                return
            handler = handlers.get(pn_event_type(impl))
            if handler is not None:
                event = Event.wrap(impl)
                try:
                    handler(event)
                except Exception:  # one bad event must not stop the emulator
                    _LOG.exception("handling %s failed", event.type)
            pn_collector_pop(coll)

    def run(self) -> None:
        self._running = True
        try:
            while not self._stopping:
                self._iteration()
        finally:
            self._running = False
            self._shutdown()

    def _iteration(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - now))
        for io in list(self._ios.values()):
            deadline = io.transport.tick(now)  # heartbeats and idle timeouts
            if deadline:
                timeout = max(0.0, min(timeout, deadline - now))
        for key, _ in self._selector.select(timeout):
            data = key.data
            if data is None:
                self._drain_wakeups()
            elif data == "listener":
                self._accept()
            elif isinstance(data, _Io) and not data.closed:
                self._read(data)
                self._dispatch()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._run_safely(fn)
        self._dispatch()
        for io in list(self._ios.values()):
            self._flush(io)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._calls:
            fn, done = self._calls.popleft()
            try:
                done.set_result(fn())
            except BaseException as exc:  # delivered to the calling thread
                done.set_exception(exc)
            self._dispatch()

    def _run_safely(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            _LOG.exception("emulator timer task failed")
        self._dispatch()

    def close(self) -> None:
        """Release the loop's sockets when it will not (or did not) ``run``."""
        if not self._running:
            self._shutdown()

    def _shutdown(self) -> None:
        for io in list(self._ios.values()):
            self._close_io(io)
        self.close_listener()
        while self._calls:  # callers racing with stop get an answer, not a hang
            _, done = self._calls.popleft()
            done.set_exception(RuntimeError("the emulator has stopped"))
        if self._selector.get_map() is not None:
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
