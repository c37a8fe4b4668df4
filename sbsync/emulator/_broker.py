"""The broker model: entities, messages, locks, sessions, dead-letter, scheduled, deferred, TTL,
subscription rules, duplicate detection and auto-forwarding.

Pure data structures driven by the protocol adapter from the loop thread; no I/O and no
proton here. Times are wall-clock milliseconds (they travel to clients as lock expiries).
``holder`` values are opaque tokens of the adapter (its receiving links).
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable

from . import _codec as codec
from ._config import EntityConfig
from ._records import (
    ACTIVE,
    DEFERRED,
    LOCK_LOST,
    MESSAGE_NOT_FOUND,
    NOT_ALLOWED,
    NOT_FOUND,
    SCHEDULED,
    SESSION_CANNOT_BE_LOCKED,
    SESSION_LOCK_LOST,
    BrokerError,
    EntityStats,
    Session,
    StoredMessage,
)
from ._rules import DEFAULT_RULE, MessageView, Rule, route

_LOG = logging.getLogger(__name__)

DLQ_SUFFIX = "/$deadletterqueue"
TRANSFER_DLQ_SUFFIX = "/$transfer/$deadletterqueue"
#: "MaxTransferHopCountExceeded: the maximum number of allowed hops when forwarding between
#: queues. Value is set to 4." (learn.microsoft.com, "Service Bus dead-letter queues"); such
#: a message goes to the forwarding entity's transfer dead-letter queue.
MAX_HOPS = 4


class Entity:
    """A queue, topic, subscription or dead-letter sub-queue."""

    def __init__(self, path: str, kind: str, cfg: EntityConfig,
                 lock_ms: int, max_delivery: int, ttl_ms: int | None, auto: bool,
                 broker: Broker | None = None) -> None:
        self.path = path
        self.kind = kind  # queue | topic | subscription | dlq
        self.auto = auto
        self.broker = broker
        self.created_ms = self.updated_ms = self.accessed_ms = int(time.time() * 1000)
        #: administration API settings kept only to be shown back (MaxSizeInMegabytes, ...)
        self.extra: dict[str, str] = {}
        self.deleted = False
        self.configure(cfg, lock_ms, max_delivery, ttl_ms)
        self.rules: list[Rule] = list(cfg.rules) if cfg.rules is not None \
            else [Rule(DEFAULT_RULE)]
        self.plain_rules = True
        self.rules_changed()
        self._seen: dict[Any, int] = {}  # message id -> end of its duplicate window
        self._seen_order: deque[tuple[int, Any]] = deque()
        self.messages: dict[int, StoredMessage] = {}
        self.ready: list[int] = []
        self.sessions: dict[str, Session] = {}
        self.locks: dict[uuid.UUID, StoredMessage] = {}
        self.subscriptions: list[Entity] = []
        self._lock_heap: list[tuple[int, int, uuid.UUID]] = []
        self._sched_heap: list[tuple[int, int]] = []
        self._expiry_heap: list[tuple[int, int]] = []
        self._session_heap: list[tuple[int, str]] = []  # (lock expiry, session id)
        self._next_seq = 1
        self.dlq: Entity | None = None
        self.tdlq: Entity | None = None  # the transfer dead-letter queue (forwarding failures)

    def __repr__(self) -> str:
        return f"Entity({self.path!r}, {self.kind})"

    def configure(self, cfg: EntityConfig, lock_ms: int, max_delivery: int,
                  ttl_ms: int | None) -> None:
        """(Re)apply settings; messages already held keep their expiry."""
        self.cfg = cfg
        self.requires_session = cfg.requires_session and self.kind != "dlq"
        self.session_capable = self.requires_session or (self.auto and self.kind != "dlq")
        self.lock_ms = lock_ms
        self.max_delivery = max_delivery
        self.ttl_ms = ttl_ms
        self.dlq_on_expiry = cfg.dead_lettering_on_message_expiration
        self.dup_window_ms = int(cfg.duplicate_detection_window * 1000) \
            if cfg.requires_duplicate_detection and self.kind in ("queue", "topic") else None
        self.forward_to = cfg.forward_to if self.kind in ("queue", "subscription") else None
        self.forward_dlq_to = cfg.forward_dead_lettered_messages_to \
            if self.kind in ("queue", "subscription") else None

    def rules_changed(self) -> None:
        """Recompute the fast path: only the default TrueFilter rule means every message."""
        self.plain_rules = len(self.rules) == 1 and self.rules[0].is_default

    # ------------------------------------------------------------ duplicates

    def _duplicate(self, parsed: codec.ParsedMessage, now_ms: int) -> bool:
        """True when duplicate detection is on and this message id was seen in the window."""
        window = self.dup_window_ms
        if window is None:
            return False
        bare = parsed.bare
        if bare[:3] != b"\x00\x53\x73":
            return False
        fields = codec.decode(bare, 3)[0]
        mid = fields[0] if fields else None
        if mid is None:
            return False
        key = (type(mid).__name__, bytes(mid) if isinstance(mid, memoryview) else mid)
        seen, order = self._seen, self._seen_order
        while order and order[0][0] <= now_ms:
            end, old = order.popleft()
            if seen.get(old) == end:
                del seen[old]
        if key in seen:
            _LOG.debug("%r: duplicate message id %r dropped", self, mid)
            return True
        seen[key] = now_ms + window
        order.append((now_ms + window, key))
        return False

    # ------------------------------------------------------------ enqueue

    def _seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def validate(self, parsed: codec.ParsedMessage) -> None:
        """Raise if the message cannot be sent here (checked for a whole batch first)."""
        if self.kind == "dlq":
            raise BrokerError(NOT_ALLOWED, "cannot send to a dead-letter queue")
        if self.requires_session and parsed.group_id is None:
            raise BrokerError(NOT_ALLOWED, f"{self.path} requires a session id on every message")

    def accept(self, parsed: codec.ParsedMessage, now_ms: int,
               seq: int | None = None) -> list[Entity]:
        """Store a sent message (fan-out for topics); return the entities given new messages.

        A topic assigns the sequence number; each subscription keeps it, so one number
        names the same message everywhere (and cancelling a scheduled one works)."""
        self.accessed_ms = now_ms
        if self.kind == "topic":
            touched: list[Entity] = []
            self._cap_ttl(parsed)
            if not self._duplicate(parsed, now_ms):
                self._fan_out(parsed, now_ms, lambda sub, p, s: touched.extend(
                    sub.accept(p, now_ms, s)))
            return touched
        self.validate(parsed)
        if seq is None and self._duplicate(parsed, now_ms):
            return []
        msg = StoredMessage(parsed, seq or self._seq(), now_ms)
        sched = msg.annotation("x-opt-scheduled-enqueue-time")
        if isinstance(sched, int) and sched > now_ms:
            self.schedule(msg, sched)
            return []
        return [self] if self._activate(msg, now_ms) else []

    def _cap_ttl(self, parsed: codec.ParsedMessage) -> None:
        """A topic's default time to live caps its messages' own (the smaller wins); each
        subscription then applies its own default the same way."""
        if self.ttl_ms is not None and (not parsed.ttl_ms or parsed.ttl_ms > self.ttl_ms):
            parsed.ttl_ms = self.ttl_ms

    def _fan_out(self, parsed: codec.ParsedMessage, now_ms: int,
                 deliver: Callable[[Entity, codec.ParsedMessage, int], Any]) -> int:
        """Hand each subscription the copies its rules select; returns the sequence number.

        A topic assigns the number; a subscription's first copy keeps it (so cancelling a
        scheduled message works across subscriptions), copies made by rule actions get
        their own."""
        seq = self._seq()
        view: MessageView | None = None
        for sub in self.subscriptions:
            if sub.plain_rules:
                copies = [parsed]
            else:
                if view is None:  # decoded once per message, for all subscriptions
                    view = MessageView(parsed, seq, now_ms)
                copies = route(sub.rules, view)
            first = True
            for copy in copies:
                # a message without a session id cannot go to a session-enabled subscription
                if sub.requires_session and copy.group_id is None:
                    continue
                deliver(sub, copy, seq if first else self._seq())
                first = False
        return seq

    def schedule(self, msg: StoredMessage, at_ms: int) -> int:
        msg.state = SCHEDULED
        self.messages[msg.seq] = msg
        heapq.heappush(self._sched_heap, (at_ms, msg.seq))
        return msg.seq

    def schedule_parsed(self, parsed: codec.ParsedMessage, at_ms: int, now_ms: int,
                        seq: int | None = None) -> int:
        """Schedule a message (management schedule-message); returns its sequence number.
        A duplicate (duplicate detection on) is dropped and gets a number naming nothing."""
        if seq is None and self._duplicate(parsed, now_ms):
            return self._seq()
        if self.kind == "topic":
            self._cap_ttl(parsed)
            return self._fan_out(parsed, now_ms, lambda sub, p, s: sub.schedule_parsed(
                p, at_ms, now_ms, s))
        self.validate(parsed)
        msg = StoredMessage(parsed, seq or self._seq(), now_ms)
        if at_ms <= now_ms:
            self._activate(msg, now_ms)
            return msg.seq
        return self.schedule(msg, at_ms)

    def cancel_scheduled(self, seqs: Iterable[int]) -> None:
        targets = self.subscriptions if self.kind == "topic" else [self]
        for ent in targets:
            for seq in seqs:
                msg = ent.messages.get(seq)
                if msg is not None and msg.state == SCHEDULED:
                    del ent.messages[seq]

    def _activate(self, msg: StoredMessage, now_ms: int) -> bool:
        """Make a message available here, or forward it; True when it stayed here."""
        if self.forward_to is not None:
            if self._forward(msg, self.forward_to, now_ms):
                return False
            if msg.hops >= MAX_HOPS and self.tdlq is not None:
                msg.set_app_props({"DeadLetterReason": "MaxTransferHopCountExceeded",
                                   "DeadLetterErrorDescription": "The message exceeded the "
                                   f"maximum of {MAX_HOPS} forwarding hops."})
                msg.state = ACTIVE
                msg.expires_ms = msg.ttl_ms = None
                self.tdlq.messages[msg.seq] = msg
                heapq.heappush(self.tdlq.ready, msg.seq)
                if self.broker is not None:
                    self.broker.touched.append(self.tdlq)
                return False
        msg.state = ACTIVE
        msg.enqueued_ms = now_ms
        ttl = msg.ttl_ms
        if self.ttl_ms is not None and (ttl is None or ttl > self.ttl_ms):
            ttl = msg.ttl_ms = self.ttl_ms
        if ttl and self.kind != "dlq":
            msg.expires_ms = now_ms + ttl
            heapq.heappush(self._expiry_heap, (msg.expires_ms, msg.seq))
        self.messages[msg.seq] = msg
        self._make_ready(msg)
        return True

    def _forward(self, msg: StoredMessage, target_path: str, now_ms: int) -> bool:
        """Move a message to ``target_path`` (a queue or topic); False when it cannot go
        (hop limit, missing or unsuitable destination) and stays with the caller."""
        broker = self.broker
        if broker is None or msg.hops >= MAX_HOPS:
            return False
        target = broker.find(target_path)
        if target is None or target.kind not in ("queue", "topic") or target is self:
            _LOG.warning("%r: cannot forward to %r: no such queue or topic", self, target_path)
            return False
        parsed = msg.to_parsed()
        parsed.hops = msg.hops + 1
        try:
            touched = target.accept(parsed, now_ms)
        except BrokerError as err:
            _LOG.warning("%r: forwarding to %r failed: %s", self, target_path, err.description)
            return False
        self.messages.pop(msg.seq, None)
        broker.touched.extend(touched)
        return True

    def _make_ready(self, msg: StoredMessage) -> None:
        if self.session_capable and msg.session_id is not None:
            sess = self.sessions.get(msg.session_id)
            if sess is None:
                sess = self.sessions[msg.session_id] = Session(msg.session_id)
            heapq.heappush(sess.ready, msg.seq)
        else:
            heapq.heappush(self.ready, msg.seq)

    # ------------------------------------------------------------ receive

    def take(self, holder: Any, session: Session | None, peek_lock: bool,
             now_ms: int) -> StoredMessage | None:
        """The next available message for ``holder``: locked (peek-lock) or removed."""
        heap = session.ready if session is not None else self.ready
        messages = self.messages
        while heap:
            seq = heapq.heappop(heap)
            msg = messages.get(seq)
            if msg is None or msg.state != ACTIVE or msg.lock_token is not None:
                continue
            if msg.expires_ms is not None and msg.expires_ms <= now_ms:
                self._expire(msg)
                continue
            if peek_lock:
                until = session.locked_until_ms if session is not None else now_ms + self.lock_ms
                self._lock(msg, holder, until, session is None)
            else:
                del messages[seq]
            return msg
        return None

    def _lock(self, msg: StoredMessage, holder: Any, until_ms: int, expires: bool) -> None:
        token = uuid.uuid4()
        msg.lock_token = token
        msg.locked_until_ms = until_ms
        msg.holder = holder
        self.locks[token] = msg
        if expires:  # session messages live and die with their session's lock
            heapq.heappush(self._lock_heap, (until_ms, msg.seq, token))

    # ------------------------------------------------------------ settlement

    def locked(self, token: uuid.UUID, session_id: str | None = None) -> StoredMessage:
        msg = self.locks.get(token)
        if msg is None:
            raise BrokerError(LOCK_LOST, "The lock supplied is invalid. Either the lock "
                              "expired, or the message has already been removed.", 410)
        if session_id is not None and msg.session_id != session_id:
            raise BrokerError(LOCK_LOST, "The lock token belongs to another session.", 410)
        return msg

    def complete(self, token: uuid.UUID) -> None:
        msg = self.locked(token)
        self._unlock(msg)
        self.messages.pop(msg.seq, None)

    def abandon(self, token: uuid.UUID, count: bool = True) -> bool:
        """Return a locked message; ``count`` False for a release (not a delivery attempt).
        True when it became available again."""
        msg = self.locked(token)
        self._unlock(msg)
        return self._return(msg, count)

    def _return(self, msg: StoredMessage, count: bool) -> bool:
        if count:
            msg.delivery_count += 1
            if msg.delivery_count >= self.max_delivery and self.kind != "dlq":
                self.dead_letter_msg(msg, "MaxDeliveryCountExceeded",
                                     f"Message could not be consumed after {self.max_delivery} "
                                     "delivery attempts.")
                return False
        if msg.expires_ms is not None and msg.expires_ms <= time.time() * 1000:
            self._expire(msg)  # it expired while locked: its expiry entry is already spent
            return False
        if msg.state == ACTIVE:
            self._make_ready(msg)
            return True
        return False

    def defer(self, token: uuid.UUID) -> None:
        msg = self.locked(token)
        self._unlock(msg)
        msg.state = DEFERRED

    def dead_letter(self, token: uuid.UUID, reason: str | None,
                    description: str | None) -> None:
        msg = self.locked(token)
        if self.dlq is None:
            raise BrokerError(NOT_ALLOWED, "Messages in a dead-letter queue cannot be "
                              "dead-lettered again.")
        self._unlock(msg)
        self.dead_letter_msg(msg, reason, description)

    def dead_letter_msg(self, msg: StoredMessage, reason: str | None,
                        description: str | None) -> None:
        self.messages.pop(msg.seq, None)
        dlq = self.dlq
        if dlq is None:  # already in a dead-letter queue: nowhere further to go
            return
        extra: dict[str, Any] = {}
        if reason is not None:
            extra["DeadLetterReason"] = reason
        if description is not None:
            extra["DeadLetterErrorDescription"] = description
        if extra:
            msg.set_app_props(extra)
        msg.state = ACTIVE
        msg.expires_ms = None
        msg.ttl_ms = None
        msg.lock_token = None
        if self.forward_dlq_to is not None \
                and self._forward(msg, self.forward_dlq_to, int(time.time() * 1000)):
            return
        dlq.messages[msg.seq] = msg
        heapq.heappush(dlq.ready, msg.seq)

    def _unlock(self, msg: StoredMessage) -> None:
        if msg.lock_token is not None:
            self.locks.pop(msg.lock_token, None)
        msg.lock_token = None
        msg.holder = None

    def renew(self, token: uuid.UUID, now_ms: int) -> int:
        msg = self.locked(token)
        if msg.session_id is not None and self.session_capable and msg.session_id in self.sessions:
            return self.sessions[msg.session_id].locked_until_ms
        msg.locked_until_ms = now_ms + self.lock_ms
        heapq.heappush(self._lock_heap, (msg.locked_until_ms, msg.seq, token))
        return msg.locked_until_ms

    def release_holder(self, holder: Any, count: bool = True) -> bool:
        """Release every message lock and session lock of a vanished receiver (as if they had
        expired now). True when messages became available."""
        back = False
        for msg in [m for m in self.locks.values() if m.holder is holder]:
            self._unlock(msg)
            back = self._return(msg, count) or back
        for sess in [s for s in self.sessions.values() if s.holder is holder]:
            sess.holder = None
            sess.locked_until_ms = 0
            back = back or bool(sess.ready)
            self._forget_if_empty(sess)
        return back

    def _forget_if_empty(self, sess: Session) -> None:
        # an unlocked session without queued messages or state is re-created on demand;
        # dropping it keeps memory bounded when session ids are many and short-lived
        if not sess.ready and sess.state is None and sess.holder is None:
            self.sessions.pop(sess.id, None)

    # ------------------------------------------------------------ sessions

    def lock_session(self, session_id: str | None, holder: Any,
                     now_ms: int) -> Session | None:
        """Lock a named session, or the next available one (None when there is none).
        Raises when the named session is locked by another receiver."""
        if session_id is not None:
            sess = self.sessions.get(session_id)
            if sess is None:
                sess = self.sessions[session_id] = Session(session_id)
            if sess.holder is not None and sess.locked_until_ms > now_ms:
                raise BrokerError(SESSION_CANNOT_BE_LOCKED, f"The session {session_id!r} is "
                                  "locked by another receiver.", 409)
        else:
            sess = self._available_session(now_ms)
            if sess is None:
                return None
        if sess.holder is not None:  # an expired lock the tick has not reaped yet
            self._release_session_messages(sess)
        sess.holder = holder
        sess.locked_until_ms = now_ms + self.lock_ms
        heapq.heappush(self._session_heap, (sess.locked_until_ms, sess.id))
        return sess

    def _available_session(self, now_ms: int) -> Session | None:
        for sess in self.sessions.values():
            if (sess.holder is None or sess.locked_until_ms <= now_ms) and self._has_live(sess, now_ms):
                return sess
        return None

    def _has_live(self, sess: Session, now_ms: int) -> bool:
        while sess.ready:
            msg = self.messages.get(sess.ready[0])
            if msg is not None and msg.state == ACTIVE and msg.lock_token is None:
                if msg.expires_ms is None or msg.expires_ms > now_ms:
                    return True
                self._expire(msg)
            heapq.heappop(sess.ready)
        return False

    def held_session(self, session_id: Any, holders: set[Any], now_ms: int) -> Session:
        """The session ``session_id`` if one of ``holders`` holds its lock, else lock-lost."""
        sess = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if sess is None or sess.holder is None or sess.holder not in holders \
                or sess.locked_until_ms <= now_ms:
            raise BrokerError(SESSION_LOCK_LOST, "The session lock has expired or was "
                              "released; accept the session again.", 410)
        return sess

    def renew_session(self, sess: Session, now_ms: int) -> int:
        sess.locked_until_ms = now_ms + self.lock_ms
        heapq.heappush(self._session_heap, (sess.locked_until_ms, sess.id))
        for msg in self.locks.values():
            if msg.session_id == sess.id:
                msg.locked_until_ms = sess.locked_until_ms
        return sess.locked_until_ms

    def lose_session(self, sess: Session) -> Any:
        """The session lock is gone: its locked messages return (counted). Returns the holder."""
        holder = sess.holder
        sess.holder = None
        sess.locked_until_ms = 0
        self._release_session_messages(sess)
        self._forget_if_empty(sess)
        return holder

    def _release_session_messages(self, sess: Session) -> None:
        for msg in [m for m in self.locks.values() if m.session_id == sess.id]:
            self._unlock(msg)
            self._return(msg, True)

    def list_sessions(self, since_ms: int | None) -> list[str]:
        """Sessions with messages or state (``since_ms`` None), else those whose state was
        set after ``since_ms``."""
        if since_ms is not None:
            return [sess.id for sess in self.sessions.values()
                    if sess.state is not None and sess.updated_ms > since_ms]
        found = dict.fromkeys(m.session_id for m in self.messages.values()
                              if m.session_id is not None)
        found.update((sess.id, None) for sess in self.sessions.values() if sess.state is not None)
        return list(found)

    # ------------------------------------------------------------ browse / deferred

    def peek(self, from_seq: int, count: int, session_id: str | None) -> list[StoredMessage]:
        seqs = heapq.nsmallest(count, (s for s, m in self.messages.items()
                                       if s >= from_seq and (session_id is None
                                                             or m.session_id == session_id)))
        return [self.messages[s] for s in seqs]

    def by_sequence(self, seqs: Iterable[int], holder: Any, session: Session | None,
                    peek_lock: bool, now_ms: int) -> list[StoredMessage]:
        found = []
        for seq in seqs:
            msg = self.messages.get(seq)
            if msg is None or msg.state != DEFERRED or msg.lock_token is not None or (
                    session is not None and msg.session_id != session.id):
                raise BrokerError(MESSAGE_NOT_FOUND, f"Deferred message {seq} was not found.", 404)
            found.append(msg)
        for msg in found:
            if peek_lock:
                until = session.locked_until_ms if session is not None else now_ms + self.lock_ms
                self._lock(msg, holder, until, session is None)
            else:
                del self.messages[msg.seq]
        return found

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> tuple[bool, list[Any]]:
        """Expire locks, activate scheduled messages, drop/dead-letter expired ones.
        Returns (messages became available, holders whose session lock was lost)."""
        back = False
        heap = self._lock_heap
        while heap and heap[0][0] <= now_ms:
            _, seq, token = heapq.heappop(heap)
            msg = self.locks.get(token)
            if msg is None:
                continue
            if msg.locked_until_ms > now_ms:
                continue  # renewed; a newer heap entry exists
            self._unlock(msg)
            back = self._return(msg, True) or back
        sched = self._sched_heap
        while sched and sched[0][0] <= now_ms:
            _, seq = heapq.heappop(sched)
            msg = self.messages.get(seq)
            if msg is not None and msg.state == SCHEDULED:
                del self.messages[seq]
                back = self._activate(msg, now_ms) or back
        exp = self._expiry_heap
        while exp and exp[0][0] <= now_ms:
            _, seq = heapq.heappop(exp)
            msg = self.messages.get(seq)
            if msg is not None and msg.lock_token is None and msg.expires_ms is not None \
                    and msg.expires_ms <= now_ms:
                self._expire(msg)
        lost = []
        sheap = self._session_heap
        while sheap and sheap[0][0] <= now_ms:
            _, sid = heapq.heappop(sheap)
            sess = self.sessions.get(sid)
            if sess is not None and sess.holder is not None and sess.locked_until_ms <= now_ms:
                lost.append(self.lose_session(sess))
                back = back or bool(sess.ready)
        return back, lost

    def _expire(self, msg: StoredMessage) -> None:
        if self.dlq_on_expiry:
            self.dead_letter_msg(msg, "TTLExpiredException", "The message expired and was "
                                 "dead lettered.")
        else:
            self.messages.pop(msg.seq, None)

    def stats(self) -> EntityStats:
        st = EntityStats()
        for msg in self.messages.values():
            if msg.lock_token is not None:
                st.locked += 1
            elif msg.state == SCHEDULED:
                st.scheduled += 1
            elif msg.state == DEFERRED:
                st.deferred += 1
            else:
                st.active += 1
        if self.dlq is not None:
            st.dead_letter = len(self.dlq.messages)
        st.locked_sessions = sum(1 for sess in self.sessions.values() if sess.holder is not None)
        return st


class Broker:
    """All entities of one emulator namespace."""

    def __init__(self, *, lock_duration: float, max_delivery_count: int,
                 default_message_ttl: float | None, auto_create: bool) -> None:
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.default_ttl = default_message_ttl
        self.auto_create = auto_create
        self.entities: dict[str, Entity] = {}  # lower-case path -> entity (incl. sub-queues)
        #: entities given messages by forwarding; the adapter pumps and clears them
        self.touched: list[Entity] = []

    def create(self, cfg: EntityConfig, auto: bool = False) -> Entity:
        path = cfg.path
        key = path.lower()
        existing = self.entities.get(key)
        if existing is not None:
            return existing
        if cfg.kind == "subscription":
            topic = self.entities.get((cfg.topic or "").lower())
            if topic is None:
                topic = self.create(EntityConfig(name=cfg.topic or "", kind="topic"), auto)
            elif topic.kind != "topic":
                self._make_topic(topic)
        lock_ms, max_dc, ttl_ms = self._settings(cfg)
        ent = Entity(path, cfg.kind, cfg, lock_ms, max_dc, ttl_ms, auto, self)
        self.entities[key] = ent
        if cfg.kind != "topic":
            dlq = Entity(path + "/$DeadLetterQueue", "dlq", cfg, lock_ms, max_dc, None, False,
                         self)
            tdlq = Entity(path + "/$Transfer/$DeadLetterQueue", "dlq", cfg, lock_ms,
                          max_dc, None, False, self)
            ent.dlq = dlq
            ent.tdlq = tdlq
            self.entities[key + DLQ_SUFFIX] = dlq
            self.entities[key + TRANSFER_DLQ_SUFFIX] = tdlq
        if cfg.kind == "subscription":
            self.entities[(cfg.topic or "").lower()].subscriptions.append(ent)
        _LOG.debug("created %r", ent)
        return ent

    def _settings(self, cfg: EntityConfig) -> tuple[int, int, int | None]:
        lock_ms = int(1000 * (cfg.lock_duration if cfg.lock_duration is not None
                              else self.lock_duration))
        max_dc = cfg.max_delivery_count if cfg.max_delivery_count is not None \
            else self.max_delivery_count
        ttl = cfg.default_message_ttl if cfg.default_message_ttl is not None else self.default_ttl
        ttl_ms = int(ttl * 1000) if ttl is not None else None
        return lock_ms, max_dc, ttl_ms

    def update(self, ent: Entity, cfg: EntityConfig) -> None:
        """Apply new settings to an existing entity (and its dead-letter queues)."""
        lock_ms, max_dc, ttl_ms = self._settings(cfg)
        ent.configure(cfg, lock_ms, max_dc, ttl_ms)
        ent.updated_ms = int(time.time() * 1000)
        for suffix in (DLQ_SUFFIX, TRANSFER_DLQ_SUFFIX):
            sub = self.entities.get(ent.path.lower() + suffix)
            if sub is not None:
                sub.configure(cfg, lock_ms, max_dc, None)

    def delete(self, ent: Entity) -> list[Entity]:
        """Remove an entity with its sub-queues (and a topic's subscriptions); returns every
        entity removed."""
        gone = [ent]
        if ent.kind == "topic":
            for sub in list(ent.subscriptions):
                gone.extend(self.delete(sub))
        key = ent.path.lower()
        for k in (key, key + DLQ_SUFFIX, key + TRANSFER_DLQ_SUFFIX):
            removed = self.entities.pop(k, None)
            if removed is not None:
                removed.deleted = True
                if removed is not ent:
                    gone.append(removed)
        if ent.kind == "subscription":
            topic = self.entities.get(key.split("/", 1)[0])
            if topic is not None and ent in topic.subscriptions:
                topic.subscriptions.remove(ent)
        _LOG.debug("deleted %r", ent)
        return gone

    def drain_touched(self) -> list[Entity]:
        touched, self.touched = self.touched, []
        return touched

    def _make_topic(self, ent: Entity) -> None:
        """An auto-created "queue" turns out to be a topic (a subscription of it is used)."""
        if not ent.auto:
            raise BrokerError(NOT_ALLOWED, f"{ent.path} is a queue, not a topic.")
        _LOG.debug("auto-created %r becomes a topic", ent)
        key = ent.path.lower()
        for suffix in (DLQ_SUFFIX, TRANSFER_DLQ_SUFFIX):
            self.entities.pop(key + suffix, None)
        ent.kind = "topic"
        ent.dlq = None
        ent.session_capable = False
        ent.messages.clear()  # as on the real service: nothing is kept for subscriptions
        ent.ready.clear()      # that did not exist yet
        ent.sessions.clear()

    def find(self, path: str) -> Entity | None:
        """The entity at ``path`` if it exists (never auto-creates)."""
        return self.entities.get(path.strip("/").lower())

    def lookup(self, path: str) -> Entity:
        key = path.strip("/").lower()
        ent = self.entities.get(key)
        if ent is not None:
            return ent
        if self.auto_create and key and "$" not in key:
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[1].lower() == "subscriptions":
                return self.create(EntityConfig(name=parts[2], kind="subscription",
                                                topic=parts[0]), auto=True)
            if len(parts) == 1:
                return self.create(EntityConfig(name=parts[0]), auto=True)
        if self.auto_create and key.endswith(DLQ_SUFFIX):
            self.lookup(path.strip("/")[: -len(DLQ_SUFFIX)])
            return self.entities[key]
        raise BrokerError(NOT_FOUND, f"The messaging entity '{path}' could not be found.", 404)

    def tick(self, now_ms: int) -> tuple[list[Entity], list[Any]]:
        touched, lost = [], []
        for ent in list(self.entities.values()):
            if not (ent._lock_heap or ent._sched_heap or ent._expiry_heap or ent._session_heap):
                continue
            back, holders = ent.tick(now_ms)
            if back:
                touched.append(ent)
            lost.extend(holders)
        touched.extend(self.drain_touched())
        return touched, lost
