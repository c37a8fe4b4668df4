"""A lean event loop for proton's protocol engine: sockets, timers, cross-thread calls.

proton's own ``Container`` routes every socket readiness change through Python event objects
and two handler layers. This loop drives the same engine (``Transport``, ``Connection``,
``Collector``) directly with a ``selectors`` selector and hands only the protocol events we
act on to the adapter: measured, the emulator's CPU per peek-lock receive+complete fell from
~286 to ~182 us and the SDK's receive+complete rate in one process rose by ~50%.

A new connection starts behind a ``FrontDoor`` (``_frontdoor``: protocol sniffing, TLS,
SASL, HTTP). A plain AMQP connection leaves it once SASL is done and from then on runs the
direct path (socket <-> transport) as before; the others keep it.
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
from ._frontdoor import FrontDoor, FrontError

_LOG = logging.getLogger(__name__)
_READ_CHUNK = 256 * 1024


class _Io:
    """One accepted socket and the engine objects bound to it (once it speaks AMQP)."""

    __slots__ = ("closed", "connection", "front", "sock", "transport", "want_write")

    def __init__(self, sock: socket.socket, front: FrontDoor) -> None:
        self.sock = sock
        self.front: FrontDoor | None = front  # None: plain AMQP on the direct path
        self.transport: Any = None
        self.connection: Any = None
        self.want_write = False
        self.closed = False


class _Listener:
    __slots__ = ("addr", "sock", "tls_only")

    def __init__(self, sock: socket.socket, addr: tuple[str, int], tls_only: bool) -> None:
        self.sock = sock
        self.addr = addr
        self.tls_only = tls_only


class Loop:
    """Runs on one thread; other threads only use ``call`` (and ``stop`` through it)."""

    def __init__(self, sink: Any) -> None:
        """``sink``: the adapter; gives ``front_door(tls_only)``, gets
        ``bound``/``transport_closed`` and the ``on_*`` events."""
        self._sink = sink
        self._collector = Collector()
        self._selector = selectors.DefaultSelector()
        self._ios: dict[int, _Io] = {}
        self._listeners: list[_Listener] = []
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

    def listen(self, host: str, port: int, tls_only: bool = False) -> int:
        """Accept connections on host:port (0 = any free port); return the bound port.
        ``tls_only``: refuse connections that do not open with a TLS handshake."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        bound = int(sock.getsockname()[1])
        listener = _Listener(sock, (host, bound), tls_only)
        self._listeners.append(listener)
        self._selector.register(sock, selectors.EVENT_READ, listener)
        return bound

    def close_listener(self) -> list[tuple[str, int, bool]]:
        """Stop accepting; return what was listened on, as ``listen`` arguments."""
        closed = []
        for listener in self._listeners:
            self._selector.unregister(listener.sock)
            listener.sock.close()
            closed.append((*listener.addr, listener.tls_only))
        self._listeners = []
        return closed

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    def _accept(self, listener: _Listener) -> None:
        try:
            sock, _ = listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of descriptors: keep serving the others
            _LOG.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        io = _Io(sock, self._sink.front_door(listener.tls_only))
        self._ios[sock.fileno()] = io
        self._selector.register(sock, selectors.EVENT_READ, io)

    def _bind(self, io: _Io) -> None:
        """The connection speaks AMQP: give it a proton transport (SASL is already done)."""
        transport = FullFrames(Transport(Transport.SERVER))  # every field on the wire, as the service
        connection = Connection()
        connection.collect(self._collector)
        transport.bind(connection)
        io.transport = transport
        io.connection = connection
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
        return [io.connection for io in self._ios.values() if io.connection is not None]

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
        if io.transport is None:
            return
        try:
            io.transport.close_tail()
            io.transport.close_head()
        except Exception:  # the engine may already consider it closed
            pass
        self._sink.transport_closed(io.connection)
        io.transport.unbind()

    def _read(self, io: _Io) -> None:
        if io.front is not None:
            self._read_front(io)
            return
        transport = io.transport
        try:
            capacity = transport.capacity()
        except Exception:
            capacity = -1
        if capacity <= 0:
            if capacity < 0:  # the engine has stopped reading (closed or failed)
                self._close_io(io)
            return
        data = self._recv(io, min(capacity, _READ_CHUNK))
        if not data:
            return
        try:
            transport.push(data)
        except Exception:  # garbage on the wire: the engine failed this connection
            _LOG.debug("transport input failed", exc_info=True)
            self._flush(io)
            self._close_io(io)

    def _recv(self, io: _Io, size: int) -> bytes | None:
        """Up to ``size`` bytes from the socket; None when there are none yet, or when the
        peer has gone (the connection is then closed)."""
        try:
            data = io.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._close_io(io)
            return None
        return data

    def _flush(self, io: _Io) -> None:
        if io.front is not None:
            self._flush_front(io)
            return
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

    # ------------------------------------------------------------ behind the front door

    def _read_front(self, io: _Io) -> None:
        front = io.front
        assert front is not None
        data = self._recv(io, _READ_CHUNK)
        if not data:
            return
        try:
            front.feed(data)
        except FrontError as exc:
            _LOG.debug("closing a connection: %s", exc)
            front.closing = True
        self._to_transport(io, front)

    def _to_transport(self, io: _Io, front: FrontDoor) -> None:
        """Hand the transport all the plaintext AMQP the front door holds. proton reads whole
        frames as they are pushed, so its capacity comes back at once; what is left over
        (only a transport that stopped reading) is dropped."""
        if not front.amqp or io.closed:
            return
        if io.transport is None:
            self._bind(io)
        transport = io.transport
        data = front.amqp_in
        try:
            while data:
                capacity = transport.capacity()
                if capacity <= 0:
                    data.clear()
                    break
                chunk = bytes(data[:capacity])
                del data[:capacity]
                transport.push(chunk)
        except Exception:  # garbage on the wire: the engine failed this connection
            _LOG.debug("transport input failed", exc_info=True)
            data.clear()

    def _flush_front(self, io: _Io) -> None:
        """Transport output through the front door (TLS) to the socket, until either is
        drained; then close, or leave the front door for the direct path."""
        front = io.front
        assert front is not None
        transport = io.transport
        done = front.closing
        out = front.out
        while True:
            if transport is not None and not done:
                pending = 0
                try:
                    while len(out) < _READ_CHUNK:
                        pending = transport.pending()
                        if pending <= 0:
                            break
                        front.send_amqp(transport.peek(pending))
                        transport.pop(pending)
                except FrontError:
                    pending, done = -1, True
                except Exception:
                    pending = -1
                if pending < 0 and transport.closed:  # both directions ended
                    front.close_tls()
                    done = True
            if not out:
                break
            try:
                sent = io.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_io(io)
                return
            del out[:sent]
            if out:  # the socket is full: wait until it is writable
                if not io.want_write:
                    io.want_write = True
                    self._selector.modify(io.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                          io)
                return
        if io.want_write:
            io.want_write = False
            self._selector.modify(io.sock, selectors.EVENT_READ, io)
        if done:
            self._close_io(io)
        elif front.direct:
            io.front = None  # plain AMQP from here on: straight between socket and proton

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
            transport = io.transport
            if transport is not None:
                deadline = transport.tick(now)  # heartbeats and idle timeouts
                if deadline:
                    timeout = max(0.0, min(timeout, deadline - now))
        for key, _ in self._selector.select(timeout):
            data = key.data
            if data is None:
                self._drain_wakeups()
            elif isinstance(data, _Io):
                if not data.closed:
                    self._read(data)
                    self._dispatch()
            else:
                self._accept(data)
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
