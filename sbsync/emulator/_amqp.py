"""The protocol adapter: connections, CBS, link attach routing, incoming transfers.

Runs only on the loop thread (``_loop``). Broker state changes happen here, in
``_consumers`` or in ``_management``, and are followed by a pump of the affected receivers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from typing import Any, Callable

from proton import Delivery, Endpoint, Message, Terminus, int32, symbol, ulong

from . import _codec as codec
from ._auth import AuthError, covers, resource_path, verify_sas
from ._broker import Broker, Entity
from ._consumers import Consumer, Consumers
from ._faults import FaultRules
from ._frontdoor import FrontDoor
from ._http import HttpHandler, not_found
from ._loop import Loop
from ._management import Management
from ._records import NOT_ALLOWED, SERVER_BUSY, SIZE_EXCEEDED, BrokerError
from ._tls import TlsConfig
from ._wire import attr, error_condition, now_ms

_LOG = logging.getLogger(__name__)

_CREDIT = 1000  # transfers a client may send before we top its credit up
_TICK_S = 0.05  # resolution of lock expiry, scheduled messages and TTL
_MAX_BATCH = "com.microsoft:max-message-batch-size"


class Conn:
    """Per-connection state: granted tokens and the receivers it holds."""

    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}  # granted path -> expiry (epoch s)
        self.consumers: set[Consumer] = set()
        self.closed = False

    def authorized(self, path: str) -> bool:
        now = time.time()
        return any(exp > now and covers(g, path.lower()) for g, exp in self.tokens.items())


class Adapter:
    """The protocol side of the emulator: reacts to proton engine events from ``Loop``."""

    def __init__(self, broker: Broker, rules: FaultRules, key_name: str, key: str,
                 max_message_size: int, tls: TlsConfig, next_session_wait: float) -> None:
        self.broker = broker
        self.tls = tls
        # how long a next-available-session attach without com.microsoft:timeout waits
        self.next_session_wait_ms = int(next_session_wait * 1000)
        self.http_handler: HttpHandler = not_found  # the administration API plugs in here
        self.rules = rules
        self._key_name = key_name
        self._key = key
        self.max_message_size = max_message_size
        self.loop: Loop | None = None
        self._listening: list[tuple[str, int, bool]] = []  # (host, port, tls_only)
        self.conns: set[Conn] = set()
        self.consumers = Consumers(self)
        self._tag = 0
        self.mgmt = Management(self)

    def start(self, loop: Loop, host: str, port: int,
              tls_port: int | None = None) -> tuple[int, int | None]:
        """Listen on host:port (and a TLS-only host:tls_port) with a fresh loop (the previous
        one, if any, has ended); return the bound ports."""
        self.loop = loop
        if tls_port is not None or self.tls.given:
            self.tls.context()  # a bad certificate fails start(), not the first client
        port = loop.listen(host, port)
        if tls_port is not None:
            tls_port = loop.listen(host, tls_port, tls_only=True)
        self._listening = [(host, port, False)]
        if tls_port is not None:
            self._listening.append((host, tls_port, True))
        loop.schedule(_TICK_S, self._tick_task)
        return port, tls_port

    def _tick_task(self) -> None:
        self.tick()
        assert self.loop is not None
        self.loop.schedule(_TICK_S, self._tick_task)

    # ------------------------------------------------------------ connections

    def front_door(self, tls_only: bool) -> FrontDoor:
        """What stands between a new socket and proton (``_frontdoor``)."""
        return FrontDoor(self.tls.context, tls_only, self._http)

    def _http(self) -> HttpHandler:
        return self.http_handler

    def bound(self, connection: Any, transport: Any) -> None:
        # no transport.sasl(): the front door has done SASL (``_sasl``)
        conn = Conn()
        connection.emu = conn
        self.conns.add(conn)

    def transport_closed(self, connection: Any) -> None:
        self._forget_conn(connection)

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

    def conn_of(self, endpoint: Any) -> Conn | None:
        connection = endpoint if endpoint.__class__.__name__ == "Connection" else endpoint.connection
        try:
            return connection.emu
        except AttributeError:
            return None

    def _forget_conn(self, connection: Any) -> None:
        conn = self.conn_of(connection)
        if conn is None or conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        for cons in list(conn.consumers):
            self.consumers.drop(cons)

    # ------------------------------------------------------------ attach / detach

    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        conn = self.conn_of(link)
        if conn is None:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = (link.remote_target if link.is_receiver else link.remote_source).address or ""
        path = resource_path(address)
        _LOG.debug("attach %s %r (%s)", "sender" if link.is_receiver else "receiver",
                   address, link.name)
        try:
            if path == "$cbs":
                self._open_service_link(link, "cbs", address)
            elif path.endswith("/$management"):
                # authorised by a token for the node itself (the JS SDK puts one for
                # ENTITY/$management) or for its entity, as the service does
                entity = self.entity_for(conn, path[: -len("/$management")], path)
                link.emu_entity = entity
                self._open_service_link(link, "mgmt", address)
            elif link.is_receiver:
                entity = self.entity_for(conn, path)
                if entity.kind in ("subscription", "dlq"):
                    raise BrokerError(NOT_ALLOWED, f"cannot send to {entity.path}")
                link.emu_kind = "ingest"
                link.emu_entity = entity
                link.max_message_size = self.max_message_size
                # the SDK sizes ServiceBusMessageBatch from this (else it assumes 256 KiB)
                link.properties = {symbol(_MAX_BATCH): ulong(self.max_message_size)}
                link.open()
                link.flow(_CREDIT)
            else:
                self.later(self.rules.delay_for("receive-attach"),
                           lambda: self.consumers.attach(link, conn, path))
        except BrokerError as err:
            self.refuse(link, err.condition, err.description)

    def entity_for(self, conn: Conn, path: str, address: str | None = None) -> Entity:
        """The entity at ``path``, if a token granted on this connection covers ``address``
        (the link's own address; default ``path``)."""
        address = path if address is None else address
        if not conn.authorized(address):
            raise BrokerError("amqp:unauthorized-access",
                              f"No valid token for '{address}'; put-token on $cbs first.", 401)
        return self.broker.lookup(path)

    def _open_service_link(self, link: Any, kind: str, address: str) -> None:
        link.emu_kind = kind
        if link.is_sender:
            link.emu_outbox = deque()
            link.session.emu_replies[address.lower()] = link
        link.open()
        if link.is_receiver:
            link.flow(_CREDIT)

    def refuse(self, link: Any, condition: str, description: str) -> None:
        _LOG.debug("refusing link %s: %s", link.name, condition)
        if link.is_sender:
            link.source.type = Terminus.UNSPECIFIED  # null source tells the SDK "refused"
        else:
            link.target.type = Terminus.UNSPECIFIED
        link.emu_kind = "refused"
        link.open()
        link.condition = error_condition(condition, description)
        link.close()

    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        kind = attr(link, "emu_kind")
        if kind == "consumer":
            self.consumers.drop(link.emu_consumer)
        elif kind in ("cbs", "mgmt") and link.is_sender:
            replies = link.session.emu_replies
            for key in [k for k, v in replies.items() if v == link]:
                del replies[key]
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    # ------------------------------------------------------------ pumping

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        kind = attr(link, "emu_kind")
        if kind == "consumer":
            cons = link.emu_consumer
            if cons.open:
                self.consumers.pump(cons)
        elif kind in ("cbs", "mgmt") and link.is_sender:
            self._flush(link)

    def pump_entity(self, entity: Entity) -> None:
        self.consumers.pump_entity(entity)

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
            kind = attr(link, "emu_kind")
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
            kind = attr(link, "emu_kind")
            if kind == "consumer":
                self.consumers.settle(link.emu_consumer, dlv)
            else:
                dlv.settle()

    def later(self, seconds: float, fn: Callable[[], None]) -> None:
        if seconds > 0 and self.loop is not None:
            self.loop.schedule(seconds, fn)
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
                parsed = self._parse_transfer(data)
                now = now_ms()
                for p in parsed:
                    entity.validate(p)
                for p in parsed:
                    touched.extend(entity.accept(p, now))
            except codec.CodecError as exc:
                error = BrokerError("amqp:decode-error", f"Malformed message: {exc}")
            except BrokerError as exc:
                error = exc
            except Exception as exc:  # a bug of ours: refuse rather than leave the sender waiting
                _LOG.exception("storing a message failed")
                error = BrokerError("amqp:internal-error", f"Internal error: {exc!r}", 500)

        def finish() -> None:
            if error is not None:
                dlv.local.condition = error_condition(error.condition, error.description)
                dlv.update(Delivery.REJECTED)
            else:
                dlv.update(Delivery.ACCEPTED)
            dlv.settle()

        self.later(self.rules.delay_for("send"), finish)
        for ent in dict.fromkeys(touched):
            self.pump_entity(ent)

    @staticmethod
    def _parse_transfer(data: bytes) -> list[codec.ParsedMessage]:
        """The messages of one transfer: a batch envelope's inner messages, else itself.

        The envelope is recognised by its shape (proton does not expose the transfer's
        message-format); a body that merely looks like one but does not parse as messages
        throughout is taken as a plain message."""
        inner = codec.split_batch(data)
        parsed = None
        if inner:
            try:
                parsed = [codec.parse_message(p) for p in inner]
            except codec.CodecError:
                pass
        if parsed is None:
            parsed = [codec.parse_message(data)]
        for p in parsed:
            if not p.has_id:
                codec.ensure_message_id(p, uuid.uuid4().hex)
        return parsed

    # ------------------------------------------------------------ CBS

    def settle_request(self, dlv: Any) -> None:
        """Accept a CBS or management request and put the disposition on the wire now:
        the service settles a request before it replies (uAMQP logs an error per call
        otherwise), while proton would frame our reply's transfer first and the batched
        disposition after it."""
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        transport = dlv.link.connection.transport
        if transport is not None:
            transport.pending()  # frames what is settled so far, ahead of any reply

    def _cbs(self, link: Any, dlv: Any, data: bytes) -> None:
        self.settle_request(dlv)
        conn = self.conn_of(link)
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
        reply = Message(correlation_id=req.id,  # status-code is an AMQP int, as the service's
                        properties={"status-code": int32(code), "status-description": text})
        session = link.session
        address = link.remote_target.address or "$cbs"
        self.later(self.rules.delay_for("cbs"),
                   lambda: self.send_reply(session, address, reply))

    # ------------------------------------------------------------ management

    def _management(self, link: Any, dlv: Any, data: bytes) -> None:
        self.settle_request(dlv)
        self.mgmt.handle(link, data)

    # ------------------------------------------------------------ time & faults

    def tick(self) -> None:
        touched, lost = self.broker.tick(now_ms())
        for holder in lost:
            if isinstance(holder, Consumer):
                self.consumers.lose_session_link(holder)
        for ent in touched:
            self.pump_entity(ent)
        if self.consumers.waiting:
            self.consumers.serve_waiting()

    def drop_connections(self) -> int:
        return self.loop.drop_all() if self.loop is not None else 0

    def expire_session_lock(self, entity_path: str, session_id: str) -> None:
        self.consumers.expire_session_lock(self._existing(entity_path), session_id)

    def expire_message_locks(self, entity_path: str) -> int:
        return self.consumers.expire_message_locks(self._existing(entity_path))

    def _existing(self, entity_path: str) -> Entity:
        entity = self.broker.find(entity_path)
        if entity is None:
            raise KeyError(f"no entity {entity_path!r}")
        return entity

    def stop_listening(self) -> None:
        if self.loop is not None:
            self.loop.close_listener()
            self.loop.drop_all()

    def resume_listening(self) -> None:
        if self.loop is not None and not self.loop.listening:
            for host, port, tls_only in self._listening:
                self.loop.listen(host, port, tls_only)

    def shutdown(self) -> None:
        """Close everything and end the loop (loop thread)."""
        if self.loop is not None:
            self.loop.stop()
