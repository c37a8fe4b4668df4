"""Client receivers: attach (with session assignment), pumping messages into links, and
settlement over the link with the echo the SDK waits for.

Runs only on the loop thread.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from proton import Delivery, Endpoint, Link, symbol

from ._broker import Entity
from ._records import NOT_ALLOWED, SERVER_BUSY, SESSION_LOCK_LOST, TIMEOUT, BrokerError, Session
from ._wire import error_condition, filter_map, now_ms, opt_str, raw_tag

if TYPE_CHECKING:
    from ._amqp import Adapter, Conn

_LOG = logging.getLogger(__name__)

SESSION_FILTER = "com.microsoft:session-filter"
LOCKED_UNTIL = "com.microsoft:locked-until-utc"
TIMEOUT_PROP = "com.microsoft:timeout"
_TICKS_EPOCH = 621355968000000000  # .NET ticks at the Unix epoch


def _timeout_text(wait_ms: int) -> str:
    """The service's words when no session turned up in time (its .NET TimeSpan format)."""
    seconds, ms = divmod(wait_ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    span = f"{hours:02d}:{minutes:02d}:{seconds:02d}" + (f".{ms:03d}0000" if ms else "")
    return (f"The operation did not complete within the allotted timeout of {span}. No "
            "unlocked session with messages became available.")


class Consumer:
    """A client receiver link reading from an entity (the broker's lock holder)."""

    def __init__(self, link: Any, conn: Conn, entity: Entity, peek_lock: bool) -> None:
        self.link = link
        self.conn = conn
        self.entity = entity
        self.peek_lock = peek_lock
        self.session: Session | None = None
        self.session_wanted = False
        self.wait_ms = 0
        self.wait_deadline_ms = 0
        self.open = False
        self.name = link.name


class Consumers:
    """Every open receiver link, grouped by entity, and the session receivers still waiting
    for a session."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.by_entity: dict[Entity, list[Consumer]] = {}
        self.waiting: list[Consumer] = []

    # ------------------------------------------------------------ attach / detach

    def attach(self, link: Any, conn: Conn, path: str) -> None:
        if conn.closed or link.state & Endpoint.REMOTE_CLOSED:
            return  # the client gave up while the attach was delayed
        try:
            self._attach(link, conn, path)
        except BrokerError as err:
            self.adapter.refuse(link, err.condition, err.description)

    def _attach(self, link: Any, conn: Conn, path: str) -> None:
        adapter = self.adapter
        entity = adapter.entity_for(conn, path)
        if entity.kind == "topic":
            raise BrokerError(NOT_ALLOWED, f"cannot receive from topic {entity.path}")
        if adapter.rules.take_failure("receive-attach"):
            raise BrokerError(SERVER_BUSY, "The server is busy (injected fault).", 503)
        filters = filter_map(link.remote_source)
        session_wanted = SESSION_FILTER in filters
        if session_wanted and not entity.session_capable:
            raise BrokerError(NOT_ALLOWED, f"{entity.path} does not require sessions.")
        if not session_wanted and entity.requires_session:
            raise BrokerError(NOT_ALLOWED, f"{entity.path} requires a session receiver.")
        # receive-and-delete is the only mode where the client wants pre-settled transfers
        cons = Consumer(link, conn, entity, link.remote_snd_settle_mode != Link.SND_SETTLED)
        cons.session_wanted = session_wanted
        link.emu_kind = "consumer"
        link.emu_consumer = cons
        conn.consumers.add(cons)
        if not session_wanted:
            self._open(cons)
            return
        sid = filters[SESSION_FILTER]
        sess = entity.lock_session(sid if isinstance(sid, str) else None, cons, now_ms())
        if sess is not None:
            self._open(cons, sess)
            return
        wait = (link.remote_properties or {}).get(TIMEOUT_PROP)
        cons.wait_ms = int(wait) if wait is not None else adapter.next_session_wait_ms
        cons.wait_deadline_ms = now_ms() + cons.wait_ms
        self.waiting.append(cons)

    def _open(self, cons: Consumer, sess: Session | None = None) -> None:
        link = cons.link
        cons.session = sess
        if sess is not None:
            # the SDK reads the session id and lock expiry from our attach
            flt = link.source.filter
            flt.clear()
            flt.put_map()
            flt.enter()
            flt.put_symbol(symbol(SESSION_FILTER))
            flt.put_string(sess.id)
            flt.exit()
            props = dict(link.remote_properties or {})
            props[symbol(LOCKED_UNTIL)] = sess.locked_until_ms * 10000 + _TICKS_EPOCH
            link.properties = {symbol(k): v for k, v in props.items()}
        link.open()
        cons.open = True
        self.by_entity.setdefault(cons.entity, []).append(cons)
        self.pump(cons)

    def serve_waiting(self) -> None:
        now = now_ms()
        for cons in list(self.waiting):
            if cons.conn.closed:
                self.waiting.remove(cons)
                continue
            sess = cons.entity.lock_session(None, cons, now)
            if sess is not None:
                self.waiting.remove(cons)
                self._open(cons, sess)
            elif cons.wait_deadline_ms <= now:
                self.waiting.remove(cons)
                cons.conn.consumers.discard(cons)
                self.adapter.refuse(cons.link, TIMEOUT, _timeout_text(cons.wait_ms))

    def drop(self, cons: Consumer) -> None:
        """Release everything a vanished receiver held (its locks return at once)."""
        cons.conn.consumers.discard(cons)
        if cons in self.waiting:
            self.waiting.remove(cons)
        was_open, cons.open = cons.open, False
        self._ungroup(cons)
        if was_open and cons.entity.release_holder(cons):
            self.pump_entity(cons.entity)
        if cons.session is not None:
            self.serve_waiting()

    def _ungroup(self, cons: Consumer) -> None:
        group = self.by_entity.get(cons.entity)
        if group and cons in group:
            group.remove(cons)

    def lose_session_link(self, cons: Consumer) -> None:
        """The session lock is gone: detach the receiver with session-lock-lost."""
        link = cons.link
        if cons.open and not link.state & Endpoint.LOCAL_CLOSED:
            link.condition = error_condition(SESSION_LOCK_LOST, "The session lock has expired.")
            link.close()
        cons.open = False
        self._ungroup(cons)

    # ------------------------------------------------------------ pumping

    def pump_entity(self, entity: Entity) -> None:
        group = self.by_entity.get(entity)
        if group:
            for cons in list(group):
                if cons.open:
                    self.pump(cons)
            if len(group) > 1:  # rotate so no receiver always gets first pick
                group.append(group.pop(0))
        self._pump_dead_letters(entity)
        if self.waiting and entity.session_capable:
            self.serve_waiting()

    def _pump_dead_letters(self, entity: Entity) -> None:
        dlq = entity.dlq
        if dlq is not None and dlq.ready and self.by_entity.get(dlq):
            self.pump_entity(dlq)

    def pump(self, cons: Consumer) -> None:
        link = cons.link
        entity = cons.entity
        sess = cons.session
        if cons.session_wanted and sess is None:
            return
        now = now_ms()
        peek_lock = cons.peek_lock
        while link.credit > 0:
            msg = entity.take(cons, sess, peek_lock, now)
            if msg is None:
                break
            if peek_lock:
                tag = msg.lock_token.bytes_le  # type: ignore[union-attr]
                data = msg.encode(msg.locked_until_ms)
            else:
                tag = msg.seq.to_bytes(8, "big")
                data = msg.encode()
            dlv = link.delivery(tag)
            link.send(data)
            link.advance()
            if not peek_lock:
                dlv.settle()
        if link.drain_mode:  # the client asked for what is there, then the credit back
            link.drained()
        self._pump_dead_letters(entity)

    # ------------------------------------------------------------ settlement

    def settle(self, cons: Consumer, dlv: Any) -> None:
        """Apply the client's outcome for a delivery and echo it, settled."""
        state = dlv.remote_state
        if not cons.peek_lock:
            dlv.settle()
            return
        entity = cons.entity
        try:
            token = uuid.UUID(bytes_le=raw_tag(dlv))
        except ValueError:
            dlv.settle()
            return
        returned = False
        try:
            if cons.session is not None and cons.session.holder is not cons:
                raise BrokerError(SESSION_LOCK_LOST, "The session lock was lost.", 410)
            if state == Delivery.ACCEPTED:
                entity.complete(token)
            elif state == Delivery.RELEASED:  # unwanted prefetch: not a delivery attempt
                returned = entity.abandon(token, count=False)
            elif state == Delivery.MODIFIED:
                if dlv.remote.undeliverable:
                    entity.defer(token)
                else:
                    returned = entity.abandon(token)
            elif state == Delivery.REJECTED:
                cond = dlv.remote.condition
                info = (cond.info if cond is not None else None) or {}
                entity.dead_letter(token, opt_str(info.get("DeadLetterReason")),
                                   opt_str(info.get("DeadLetterErrorDescription")))
            else:
                return
        except BrokerError as err:
            if not dlv.settled:
                dlv.local.condition = error_condition(err.condition, err.description)
                dlv.update(Delivery.REJECTED)
            dlv.settle()
            return
        if not dlv.settled:
            if state == Delivery.MODIFIED:
                dlv.local.failed = dlv.remote.failed
                dlv.local.undeliverable = dlv.remote.undeliverable
            dlv.update(state)  # the echo the SDK waits for (rejected without an error)
        dlv.settle()
        if returned or state == Delivery.REJECTED:
            self.pump_entity(entity)

    # ------------------------------------------------------------ faults

    def expire_session_lock(self, entity: Entity, session_id: str) -> None:
        sess = entity.sessions.get(session_id)
        if sess is None or sess.holder is None:
            return
        holder = entity.lose_session(sess)
        if isinstance(holder, Consumer):
            self.lose_session_link(holder)
        self.pump_entity(entity)

    def expire_message_locks(self, entity: Entity) -> int:
        victims = [m for m in entity.locks.values()
                   if not (entity.session_capable and m.session_id in entity.sessions)]
        for msg in victims:
            if msg.lock_token is not None:
                entity.abandon(msg.lock_token)
        self.pump_entity(entity)
        return len(victims)
