"""The proton adapter: connections, SASL, CBS, links, transfers and settlement echoes.

Runs only in the reactor thread. Broker state changes happen here (or in
``_management``) and are followed by a pump of the affected consumers.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
import weakref
from collections import deque
from typing import Any, Callable

from cproton import ffi as _ffi
from cproton import lib as _lib
from proton import Condition, Delivery, Endpoint, Handler, Link, Message, Terminus, symbol

from . import _codec as codec
from ._auth import AuthError, covers, resource_path, verify_sas
from ._broker import (
    NOT_ALLOWED,
    SERVER_BUSY,
    SESSION_LOCK_LOST,
    SIZE_EXCEEDED,
    TIMEOUT,
    Broker,
    BrokerError,
    Entity,
    Session,
)
from ._faults import FaultRules

_LOG = logging.getLogger(__name__)

SESSION_FILTER = "com.microsoft:session-filter"
LOCKED_UNTIL = "com.microsoft:locked-until-utc"
TIMEOUT_PROP = "com.microsoft:timeout"
_TICKS_EPOCH = 621355968000000000
_CREDIT = 1000
_DEFAULT_SESSION_WAIT_MS = 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Conn:
    """Per-connection state: granted tokens, links, consumers."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.tokens: dict[str, float] = {}  # granted path -> expiry (epoch s)
        self.consumers: set[Consumer] = set()
        self.closed = False

    def authorized(self, path: str) -> bool:
        now = time.time()
        return any(exp > now and covers(g, path.lower()) for g, exp in self.tokens.items())


class Consumer:
    """A client receiver link reading from an entity (the broker's lock holder)."""

    def __init__(self, link: Any, conn: Conn, entity: Entity, peek_lock: bool) -> None:
        self.link = link
        self.conn = conn
        self.entity = entity
        self.peek_lock = peek_lock
        self.session: Session | None = None
        self.session_wanted = False
        self.wait_deadline_ms = 0
        self.open = False
        self.name = link.name


class Adapter(Handler):
    """The proton event handler of the emulator."""

    def __init__(self, broker: Broker, rules: FaultRules, key_name: str, key: str,
                 max_message_size: int) -> None:
        super().__init__()
        self.broker = broker
        self.rules = rules
        self._key_name = key_name
        self._key = key
        self.max_message_size = max_message_size
        self.container: Any = None
        self.acceptor: Any = None
        self.listen_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.conns: set[Conn] = set()
        self.consumers: dict[Entity, list[Consumer]] = {}
        self.waiting: list[Consumer] = []  # session receivers waiting for any session
        self.calls: deque[tuple[Callable[[], Any], Any]] = deque()
        self._tag = 0
        self.stopping = False
        # every socket the reactor opened, closed for sure once it has stopped
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        from ._management import Management  # late: it imports this module's helpers
        self.mgmt = Management(self)

    # ------------------------------------------------------------ cross-thread calls

    def on_emu_call(self, event: Any) -> None:
        while self.calls:
            fn, done = self.calls.popleft()
            try:
                done.set_result(fn())
            except BaseException as exc:  # delivered to the calling thread
                done.set_exception(exc)

    def on_timer_task(self, event: Any) -> None:
        if self.stopping:
            return
        self.tick()
        self.container.schedule(0.05, self)

    # ------------------------------------------------------------ connections

    def on_connection_bound(self, event: Any) -> None:
        transport = event.transport
        sasl = transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS")
        conn = Conn(transport)
        event.connection.emu = conn
        self.conns.add(conn)
        self._track(getattr(getattr(transport, "_selectable", None), "_delegate", None))

    def on_connection_remote_open(self, event: Any) -> None:
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_session_remote_open(self, event: Any) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.emu_replies = {}
            event.session.open()

    def on_session_remote_close(self, event: Any) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    def on_connection_remote_close(self, event: Any) -> None:
        self._forget_conn(event.connection)
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    def on_transport_closed(self, event: Any) -> None:
        if event.connection is not None:
            self._forget_conn(event.connection)
        if self.stopping and not self.conns:
            self.container.stop()

    def on_transport_error(self, event: Any) -> None:
        cond = event.transport.condition
        _LOG.debug("transport error: %s", cond)

    def _conn(self, endpoint: Any) -> Conn | None:
        connection = endpoint if endpoint.__class__.__name__ == "Connection" else endpoint.connection
        try:
            return connection.emu
        except AttributeError:
            return None

    def _forget_conn(self, connection: Any) -> None:
        conn = self._conn(connection)
        if conn is None or conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        for cons in list(conn.consumers):
            self._drop_consumer(cons)

    # ------------------------------------------------------------ attach / detach

    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        conn = self._conn(link)
        if conn is None:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = (link.remote_target if link.is_receiver else link.remote_source).address or ""
        path = resource_path(address)
        try:
            if path == "$cbs":
                self._open_service_link(link, "cbs", address)
            elif path.endswith("/$management"):
                entity = self._entity_for(conn, path[: -len("/$management")])
                link.emu_entity = entity
                self._open_service_link(link, "mgmt", address)
            elif link.is_receiver:
                entity = self._entity_for(conn, path)
                if entity.kind in ("subscription", "dlq"):
                    raise BrokerError(NOT_ALLOWED, f"cannot send to {entity.path}")
                link.emu_kind = "ingest"
                link.emu_entity = entity
                link.max_message_size = self.max_message_size
                link.open()
                link.flow(_CREDIT)
            else:
                self._later(self.rules.delay_for("receive-attach"),
                            lambda: self._attach_consumer_or_refuse(link, conn, path))
        except BrokerError as err:
            self._refuse(link, err.condition, err.description)

    def _attach_consumer_or_refuse(self, link: Any, conn: Conn, path: str) -> None:
        if conn.closed or link.state & Endpoint.REMOTE_CLOSED:
            return  # the client gave up while the attach was delayed
        try:
            self._attach_consumer(link, conn, path)
        except BrokerError as err:
            self._refuse(link, err.condition, err.description)

    def _entity_for(self, conn: Conn, path: str) -> Entity:
        if not conn.authorized(path):
            raise BrokerError("amqp:unauthorized-access",
                              f"No valid token for '{path}'; put-token on $cbs first.", 401)
        return self.broker.lookup(path)

    def _open_service_link(self, link: Any, kind: str, address: str) -> None:
        link.emu_kind = kind
        if link.is_sender:
            link.emu_outbox = deque()
            link.session.emu_replies[address.lower()] = link
        link.open()
        if link.is_receiver:
            link.flow(_CREDIT)

    def _refuse(self, link: Any, condition: str, description: str) -> None:
        _LOG.debug("refusing link %s: %s", link.name, condition)
        if link.is_sender:
            link.source.type = Terminus.UNSPECIFIED  # null source tells the SDK "refused"
        else:
            link.target.type = Terminus.UNSPECIFIED
        link.emu_kind = "refused"
        link.open()
        link.condition = _condition(condition, description)
        link.close()

    def _attach_consumer(self, link: Any, conn: Conn, path: str) -> None:
        entity = self._entity_for(conn, path)
        if entity.kind == "topic":
            raise BrokerError(NOT_ALLOWED, f"cannot receive from topic {entity.path}")
        if self.rules.take_failure("receive-attach"):
            raise BrokerError(SERVER_BUSY, "The server is busy (injected fault).", 503)
        filters = _filter_map(link.remote_source)
        session_wanted = SESSION_FILTER in filters
        if session_wanted and not entity.session_capable:
            raise BrokerError(NOT_ALLOWED, f"{entity.path} does not require sessions.")
        if not session_wanted and entity.requires_session:
            raise BrokerError(NOT_ALLOWED, f"{entity.path} requires a session receiver.")
        peek_lock = link.remote_snd_settle_mode != Link.SND_SETTLED
        cons = Consumer(link, conn, entity, peek_lock)
        cons.session_wanted = session_wanted
        link.emu_kind = "consumer"
        link.emu_consumer = cons
        conn.consumers.add(cons)
        if not session_wanted:
            self._open_consumer(cons)
            return
        sid = filters[SESSION_FILTER]
        sess = entity.lock_session(sid if isinstance(sid, str) else None, cons, now_ms())
        if sess is not None:
            self._open_consumer(cons, sess)
            return
        props = link.remote_properties or {}
        wait = props.get(TIMEOUT_PROP)
        cons.wait_deadline_ms = now_ms() + (int(wait) if wait else _DEFAULT_SESSION_WAIT_MS)
        self.waiting.append(cons)

    def _open_consumer(self, cons: Consumer, sess: Session | None = None) -> None:
        link = cons.link
        cons.session = sess
        if sess is not None:
            src = link.source
            src.filter.clear()
            src.filter.put_map()
            src.filter.enter()
            src.filter.put_symbol(symbol(SESSION_FILTER))
            src.filter.put_string(sess.id)
            src.filter.exit()
            props = dict(link.remote_properties or {})
            props[symbol(LOCKED_UNTIL)] = sess.locked_until_ms * 10000 + _TICKS_EPOCH
            link.properties = {symbol(k): v for k, v in props.items()}
        link.open()
        cons.open = True
        self.consumers.setdefault(cons.entity, []).append(cons)
        self.pump_consumer(cons)

    def _serve_waiting(self) -> None:
        now = now_ms()
        for cons in list(self.waiting):
            if cons.conn.closed:
                self.waiting.remove(cons)
                continue
            sess = cons.entity.lock_session(None, cons, now)
            if sess is not None:
                self.waiting.remove(cons)
                self._open_consumer(cons, sess)
            elif cons.wait_deadline_ms <= now:
                self.waiting.remove(cons)
                cons.conn.consumers.discard(cons)
                self._refuse(cons.link, TIMEOUT, "No unlocked session with messages became "
                             "available before the timeout.")

    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        kind = getattr_safe(link, "emu_kind")
        if kind == "consumer":
            self._drop_consumer(link.emu_consumer)
        elif kind in ("cbs", "mgmt") and link.is_sender:
            replies = link.session.emu_replies
            for key in [k for k, v in replies.items() if v == link]:
                del replies[key]
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    def _drop_consumer(self, cons: Consumer) -> None:
        """Release everything a vanished receiver held (its locks return at once)."""
        cons.conn.consumers.discard(cons)
        if cons in self.waiting:
            self.waiting.remove(cons)
        was_open, cons.open = cons.open, False
        group = self.consumers.get(cons.entity)
        if group and cons in group:
            group.remove(cons)
        if was_open and cons.entity.release_holder(cons):
            self.pump_entity(cons.entity)
        if cons.session is not None:
            self._serve_waiting()

    # ------------------------------------------------------------ pumping

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        kind = getattr_safe(link, "emu_kind")
        if kind == "consumer":
            cons = link.emu_consumer
            if cons.open:
                self.pump_consumer(cons)
        elif kind in ("cbs", "mgmt") and link.is_sender:
            self._flush(link)

    def pump_entity(self, entity: Entity) -> None:
        group = self.consumers.get(entity)
        if group:
            for cons in list(group):
                if cons.open:
                    self.pump_consumer(cons)
            if len(group) > 1:  # rotate so no receiver always gets first pick
                group.append(group.pop(0))
        if entity.dlq is not None and entity.dlq.ready and self.consumers.get(entity.dlq):
            self.pump_entity(entity.dlq)
        if self.waiting and entity.session_capable:
            self._serve_waiting()

    def pump_consumer(self, cons: Consumer) -> None:
        link = cons.link
        entity = cons.entity
        sess = cons.session
        if cons.session_wanted and sess is None:
            return
        now = now_ms()
        while link.credit > 0:
            msg = entity.take(cons, sess, cons.peek_lock, now)
            if msg is None:
                break
            if cons.peek_lock:
                tag = msg.lock_token.bytes_le  # type: ignore[union-attr]
                data = msg.encode(msg.locked_until_ms)
            else:
                tag = msg.seq.to_bytes(8, "big")
                data = msg.encode()
            dlv = link.delivery(tag)
            link.send(data)
            link.advance()
            if not cons.peek_lock:
                dlv.settle()
        if entity.dlq is not None and entity.dlq.ready and self.consumers.get(entity.dlq):
            self.pump_entity(entity.dlq)

    def send_reply(self, session: Any, address: str, msg: Message) -> None:
        link = session.emu_replies.get(address.lower())
        if link is None:
            _LOG.debug("no reply link for %s", address)
            return
        link.emu_outbox.append(msg.encode())
        self._flush(link)

    def _flush(self, link: Any) -> None:
        outbox = link.emu_outbox
        while outbox and link.credit > 0:
            self._tag += 1
            dlv = link.delivery(str(self._tag))
            link.send(outbox.popleft())
            link.advance()
            dlv.settle()

    # ------------------------------------------------------------ deliveries

    def on_delivery(self, event: Any) -> None:
        dlv = event.delivery
        link = dlv.link
        if link.is_receiver:
            if dlv.partial or not dlv.readable:
                return
            data = link.recv(dlv.pending)
            link.advance()
            if link.credit < _CREDIT // 2:
                link.flow(_CREDIT - link.credit)
            kind = getattr_safe(link, "emu_kind")
            if kind == "ingest":
                self._ingest(link, dlv, data)
            elif kind == "cbs":
                self._cbs(link, dlv, data)
            elif kind == "mgmt":
                self._management(link, dlv, data)
            else:
                dlv.update(Delivery.REJECTED)
                dlv.settle()
        elif dlv.updated and dlv.remote_state:
            kind = getattr_safe(link, "emu_kind")
            if kind == "consumer":
                self._settle_from_link(link.emu_consumer, dlv)
            else:
                dlv.settle()

    def _later(self, seconds: float, fn: Callable[[], None]) -> None:
        if seconds > 0:
            self.container.schedule(seconds, _Call(fn))
        else:
            fn()

    def _ingest(self, link: Any, dlv: Any, data: bytes) -> None:
        entity: Entity = link.emu_entity
        error: BrokerError | None = None
        touched: list[Entity] = []
        if self.rules.take_failure("send"):
            error = BrokerError(SERVER_BUSY, "The server is busy (injected fault).", 503)
        elif len(data) > self.max_message_size:
            error = BrokerError(SIZE_EXCEEDED, f"The message ({len(data)} bytes) exceeds the "
                                f"limit of {self.max_message_size} bytes.")
        else:
            try:
                parts = codec.split_batch(data) or [data]
                parsed = [codec.parse_message(p) for p in parts]
                now = now_ms()
                for p in parsed:
                    entity.validate(p)
                for p in parsed:
                    touched.extend(entity.accept(p, now))
            except codec.CodecError as exc:
                error = BrokerError("amqp:decode-error", f"Malformed message: {exc}")
            except BrokerError as exc:
                error = exc

        def finish() -> None:
            if error is not None:
                dlv.local.condition = _condition(error.condition, error.description)
                dlv.update(Delivery.REJECTED)
            else:
                dlv.update(Delivery.ACCEPTED)
            dlv.settle()

        self._later(self.rules.delay_for("send"), finish)
        for ent in dict.fromkeys(touched):
            self.pump_entity(ent)

    def _settle_from_link(self, cons: Consumer, dlv: Any) -> None:
        state = dlv.remote_state
        if not cons.peek_lock:
            dlv.settle()
            return
        entity = cons.entity
        try:
            token = uuid.UUID(bytes_le=_raw_tag(dlv))
        except ValueError:
            dlv.settle()
            return
        returned = False
        try:
            if cons.session is not None and cons.session.holder is not cons:
                raise BrokerError(SESSION_LOCK_LOST, "The session lock was lost.", 410)
            if state == Delivery.ACCEPTED:
                entity.complete(token)
            elif state == Delivery.RELEASED:
                returned = entity.abandon(token, count=False)
            elif state == Delivery.MODIFIED:
                if dlv.remote.undeliverable:
                    entity.defer(token)
                else:
                    returned = entity.abandon(token)
            elif state == Delivery.REJECTED:
                cond = dlv.remote.condition
                info = (cond.info if cond is not None else None) or {}
                entity.dead_letter(token, _opt_str(info.get("DeadLetterReason")),
                                   _opt_str(info.get("DeadLetterErrorDescription")))
            else:
                return
        except BrokerError as err:
            if not dlv.settled:
                dlv.local.condition = _condition(err.condition, err.description)
                dlv.update(Delivery.REJECTED)
            dlv.settle()
            return
        if not dlv.settled:
            if state == Delivery.MODIFIED:
                dlv.local.failed = dlv.remote.failed
                dlv.local.undeliverable = dlv.remote.undeliverable
            dlv.update(state)  # the echo the SDK waits for (rejected without an error)
            _LOG.debug("echo %r local=%r", state, dlv.local_state)
        dlv.settle()
        if returned or state == Delivery.REJECTED:
            self.pump_entity(entity)

    # ------------------------------------------------------------ CBS

    def _cbs(self, link: Any, dlv: Any, data: bytes) -> None:
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        conn = self._conn(link)
        req = Message()
        try:
            req.decode(data)
        except Exception:  # malformed request: nothing to answer
            _LOG.debug("undecodable CBS request")
            return
        props: dict[Any, Any] = req.properties or {}
        if self.rules.take_failure("cbs"):
            code, text = 503, "The server is busy (injected fault)."
        else:
            try:
                body = req.body
                granted, expiry = verify_sas(body if isinstance(body, str) else "",
                                             self._key_name, self._key)
                name = props.get("name")
                if isinstance(name, str) and not covers(granted, resource_path(name)):
                    raise AuthError("the token does not cover the named audience")
                if conn is not None:
                    conn.tokens[granted] = expiry
                code, text = 200, "OK"
            except AuthError as exc:
                code, text = 401, f"Unauthorized: {exc}"
        reply = Message(correlation_id=req.id,
                        properties={"status-code": code, "status-description": text})
        session = link.session
        address = link.remote_target.address or "$cbs"
        self._later(self.rules.delay_for("cbs"),
                    lambda: self.send_reply(session, address, reply))

    # ------------------------------------------------------------ management

    def _management(self, link: Any, dlv: Any, data: bytes) -> None:
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self.mgmt.handle(link, data)

    # ------------------------------------------------------------ time & faults

    def tick(self) -> None:
        touched, lost = self.broker.tick(now_ms())
        for holder in lost:
            if isinstance(holder, Consumer):
                self._lose_session_link(holder)
        for ent in touched:
            self.pump_entity(ent)
        if self.waiting:
            self._serve_waiting()

    def _lose_session_link(self, cons: Consumer) -> None:
        link = cons.link
        if cons.open and not link.state & Endpoint.LOCAL_CLOSED:
            link.condition = _condition(SESSION_LOCK_LOST, "The session lock has expired.")
            link.close()
        cons.open = False
        group = self.consumers.get(cons.entity)
        if group and cons in group:
            group.remove(cons)

    def drop_connections(self) -> int:
        count = 0
        for conn in list(self.conns):
            sel = getattr(conn.transport, "_selectable", None)
            sock = getattr(sel, "_delegate", None)
            if isinstance(sock, socket.socket):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.transport.close_tail()
            conn.transport.close_head()
            count += 1
        return count

    def expire_session_lock(self, entity_path: str, session_id: str) -> None:
        entity = self.broker.lookup(entity_path)
        sess = entity.sessions.get(session_id)
        if sess is None or sess.holder is None:
            return
        holder = entity.lose_session(sess)
        if isinstance(holder, Consumer):
            self._lose_session_link(holder)
        self.pump_entity(entity)

    def expire_message_locks(self, entity_path: str) -> int:
        entity = self.broker.lookup(entity_path)
        victims = [m for m in entity.locks.values()
                   if not (entity.session_capable and m.session_id in entity.sessions)]
        for msg in victims:
            if msg.lock_token is not None:
                entity.abandon(msg.lock_token)
        self.pump_entity(entity)
        return len(victims)

    def stop_listening(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
        self.drop_connections()

    def resume_listening(self) -> None:
        if self.acceptor is None:
            self.listen()

    def listen(self) -> int:
        """Start accepting on ``listen_addr``; return the bound port."""
        self.acceptor = self.container.listen(f"{self.listen_addr[0]}:{self.listen_addr[1]}")
        sock = self.acceptor._selectable._delegate
        self._track(sock)
        return int(sock.getsockname()[1])

    def _track(self, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            self.sockets.add(sock)

    def close_sockets(self) -> None:
        for sock in list(self.sockets):
            try:
                sock.close()
            except OSError:
                pass
        self.sockets.clear()

    def forget_all(self) -> None:
        """The reactor has ended: release what every receiver held, without any I/O."""
        consumers = [c for conn in self.conns for c in conn.consumers]
        for cons in consumers:
            cons.open = False
        self.consumers.clear()
        self.waiting.clear()
        for cons in consumers:
            cons.entity.release_holder(cons)
        for conn in self.conns:
            conn.closed = True

    def shutdown(self) -> None:
        self.stopping = True
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
        if not self.conns:
            self.container.stop()
            return
        self.drop_connections()
        self.container.schedule(1.0, _Call(self.container.stop))  # in case a close hangs


class _Call(Handler):
    """A timer handler running one function."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self._fn = fn

    def on_timer_task(self, event: Any) -> None:
        self._fn()


def _condition(name: str, description: str) -> Condition:
    # the SDK indexes [condition, description, info]: info must be on the wire
    return Condition(name, description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})


def _raw_tag(dlv: Any) -> bytes:
    # Delivery.tag decodes the tag as UTF-8; lock-token tags are binary
    tag = _lib.pn_delivery_tag(dlv._impl)
    return bytes(_ffi.unpack(tag.start, tag.size))


def getattr_safe(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        return None


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _filter_map(terminus: Any) -> dict[str, Any]:
    data = terminus.filter
    data.rewind()
    if not data.next():
        return {}
    try:
        obj = data.get_object()
    except Exception:  # an exotic filter we cannot read is treated as absent
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if hasattr(value, "value") and hasattr(value, "descriptor"):
            value = value.value
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        out[str(key)] = value
    return out
