"""Management operations (``ENTITY/$management`` request/response)."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

from proton import UNDESCRIBED, Array, Data, Message, int32, symbol, timestamp

from . import _codec as codec
from ._broker import Entity
from ._records import ARGUMENT_ERROR, SERVER_BUSY, BrokerError, Session
from ._wire import now_ms

if TYPE_CHECKING:
    from ._amqp import Adapter
    from ._consumers import Consumer

_LOG = logging.getLogger(__name__)
_VENDOR = "com.microsoft:"
_YEAR_10000_MS = 253402300800000  # the SDK's "all sessions" sentinel is at or beyond this

Reply = tuple[int, str, Any, Optional[str]]  # status, description, body, error condition


def _array(type_code: int, items: list[Any]) -> Array:
    return Array(UNDESCRIBED, type_code, *items)  # type: ignore[arg-type]


def _key(k: Any) -> str:
    return k.decode() if isinstance(k, bytes) else str(k)


def _elements(value: Any) -> list[Any]:
    if isinstance(value, Array):
        return list(value.elements)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise BrokerError(ARGUMENT_ERROR, "expected an array", 400)


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(bytes=bytes(value)) if isinstance(value, (bytes, memoryview)) \
            else uuid.UUID(str(value))
    except (ValueError, TypeError) as exc:
        raise BrokerError(ARGUMENT_ERROR, f"invalid lock token {value!r}", 400) from exc


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Management:
    """Dispatches management requests arriving on an entity's ``$management`` node."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._ops: dict[str, Callable[[Entity, dict[str, Any], set[Any], Any], Reply]] = {
            "renew-lock": self._renew_lock,
            "update-disposition": self._update_disposition,
            "peek-message": self._peek,
            "receive-by-sequence-number": self._receive_by_seq,
            "schedule-message": self._schedule,
            "cancel-scheduled-message": self._cancel_scheduled,
            "get-session-state": self._get_state,
            "set-session-state": self._set_state,
            "renew-session-lock": self._renew_session,
            "get-message-sessions": self._list_sessions,
        }

    def handle(self, link: Any, data: bytes) -> None:
        req = Message()
        try:
            req.decode(data)
        except Exception:
            _LOG.debug("undecodable management request")
            return
        raw_props: dict[Any, Any] = req.properties or {}
        props = {_key(k): v for k, v in raw_props.items()}
        op = _str(props.get("operation")) or ""
        status, text, body, condition = self._dispatch(link, op, req.body, props)
        _LOG.debug("%s on %s -> %d %s", op, link.emu_entity.path, status, condition or "")
        # the service's types: statusCode an AMQP int (uAMQP refuses a long), errorCondition
        # a symbol
        app: dict[Any, Any] = {"statusCode": int32(status), "statusDescription": text}
        if condition:
            app["errorCondition"] = symbol(condition)
        response = Message(correlation_id=req.id if req.id is not None else req.correlation_id,
                           properties=app, body=body)
        session = link.session
        address = link.remote_target.address or ""
        adapter = self.adapter
        adapter.later(adapter.rules.delay_for(op),
                       lambda: adapter.send_reply(session, address, response))

    def _dispatch(self, link: Any, op: str, body: Any, props: dict[str, Any]) -> Reply:
        adapter = self.adapter
        handler = self._ops.get(op[len(_VENDOR):]) if op.startswith(_VENDOR) else None
        if handler is None:
            return 501, f"Unsupported operation {op!r}.", None, "amqp:not-implemented"
        if adapter.rules.take_failure(op):
            return 503, "The server is busy (injected fault).", None, SERVER_BUSY
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return 400, "The request body must be a map.", None, ARGUMENT_ERROR
        body = {_key(k): v for k, v in body.items()}
        conn = adapter.conn_of(link)
        holders: set[Any] = set(conn.consumers) if conn is not None else set()
        assoc = _str(props.get("associated-link-name"))
        owner = next((c for c in holders if c.name == assoc), None) if assoc else None
        entity: Entity = link.emu_entity
        try:
            return handler(entity, body, holders, owner)
        except BrokerError as err:
            return err.status, err.description, None, err.condition
        except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
            return 400, f"Malformed request: {exc!r}", None, ARGUMENT_ERROR
        except Exception as exc:  # a bug of ours: answer rather than leave the client waiting
            _LOG.exception("management operation %s failed", op)
            return 500, f"Internal error: {exc!r}", None, "amqp:internal-error"

    def _session(self, entity: Entity, body: dict[str, Any], holders: set[Any]) -> Session:
        return entity.held_session(_str(body.get("session-id")), holders, now_ms())

    # ------------------------------------------------------------ message locks

    def _renew_lock(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                    owner: Consumer | None) -> Reply:
        now = now_ms()
        tokens = [_uuid(t) for t in _elements(body["lock-tokens"])]
        expirations = [timestamp(entity.renew(t, now)) for t in tokens]
        return 200, "OK", {"expirations": _array(Data.TIMESTAMP, expirations)}, None

    def _update_disposition(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                            owner: Consumer | None) -> Reply:
        status = _str(body["disposition-status"])
        tokens = [_uuid(t) for t in _elements(body["lock-tokens"])]
        if body.get("session-id") is not None:
            self._session(entity, body, holders)
        reason = _str(body.get("deadletter-reason"))
        description = _str(body.get("deadletter-description"))
        returned = False
        for token in tokens:
            if status == "completed":
                entity.complete(token)
            elif status == "abandoned":
                returned = entity.abandon(token) or returned
            elif status == "defered":
                entity.defer(token)
            elif status == "suspended":
                entity.dead_letter(token, reason, description)
            else:
                raise BrokerError(ARGUMENT_ERROR, f"unknown disposition {status!r}", 400)
        if returned or status == "suspended":
            self.adapter.pump_entity(entity)
        return 200, "OK", {}, None

    # ------------------------------------------------------------ browse / deferred / scheduled

    def _peek(self, entity: Entity, body: dict[str, Any], holders: set[Any],
              owner: Consumer | None) -> Reply:
        from_seq = int(body.get("from-sequence-number") or 0)
        count = int(body.get("message-count") or 1)
        found = entity.peek(from_seq, max(count, 1), _str(body.get("session-id")))
        if not found:
            return 204, "No messages", None, None
        return 200, "OK", {"messages": [{"message": m.encode()} for m in found]}, None

    def _receive_by_seq(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                        owner: Consumer | None) -> Reply:
        seqs = [int(s) for s in _elements(body["sequence-numbers"])]
        peek_lock = int(body.get("receiver-settle-mode", 1) or 0) != 0
        sess = self._session(entity, body, holders) if body.get("session-id") is not None \
            else None
        holder = owner if owner is not None else (sess.holder if sess is not None else None)
        found = entity.by_sequence(seqs, holder, sess, peek_lock, now_ms())
        out = []
        for m in found:
            token = m.lock_token if peek_lock else None
            item: dict[str, Any] = {"message": m.encode(m.locked_until_ms if peek_lock else None, token)}
            if token is not None:
                item["lock-token"] = m.lock_token
            out.append(item)
        return 200, "OK", {"messages": out}, None

    def _schedule(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                  owner: Consumer | None) -> Reply:
        now = now_ms()
        seqs = []
        for item in body["messages"]:
            item = {_key(k): v for k, v in item.items()}
            parsed = codec.parse_message(bytes(item["message"]))
            if entity.requires_session and parsed.group_id is None:
                sid = _str(item.get("session-id"))
                parsed.group_id = sid
            raw_at = dict(parsed.annotations).get("x-opt-scheduled-enqueue-time")
            at = now
            if raw_at is not None:
                _, vpos = codec.decode(raw_at, 0)
                value = codec.decode(raw_at, vpos)[0]
                at = int(value) if isinstance(value, int) else now
            seqs.append(entity.schedule_parsed(parsed, at, now))
        self.adapter.pump_entity(entity)  # a schedule time in the past enqueues at once
        return 200, "OK", {"sequence-numbers": _array(Data.LONG, seqs)}, None

    def _cancel_scheduled(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                          owner: Consumer | None) -> Reply:
        entity.cancel_scheduled([int(s) for s in _elements(body["sequence-numbers"])])
        return 200, "OK", {}, None

    # ------------------------------------------------------------ sessions

    def _get_state(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                   owner: Consumer | None) -> Reply:
        sess = self._session(entity, body, holders)
        return 200, "OK", {"session-state": sess.state}, None

    def _set_state(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                   owner: Consumer | None) -> Reply:
        sess = self._session(entity, body, holders)
        state = body.get("session-state")
        if state is not None and not isinstance(state, (bytes, memoryview)):
            raise BrokerError(ARGUMENT_ERROR, "session-state must be binary", 400)
        sess.state = bytes(state) if state is not None else None
        sess.updated_ms = now_ms()
        return 200, "OK", {}, None

    def _renew_session(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                       owner: Consumer | None) -> Reply:
        sess = self._session(entity, body, holders)
        until = entity.renew_session(sess, now_ms())
        return 200, "OK", {"expiration": timestamp(until)}, None

    def _list_sessions(self, entity: Entity, body: dict[str, Any], holders: set[Any],
                       owner: Consumer | None) -> Reply:
        since = body.get("last-updated-time")
        since_ms = None if since is None or int(since) >= _YEAR_10000_MS - 86400000 else int(since)
        skip = int(body.get("skip") or 0)
        top = int(body.get("top") or 2**31 - 1)
        ids = entity.list_sessions(since_ms)[skip: skip + top]
        if not ids:
            return 204, "No sessions", None, None
        return 200, "OK", {"skip": int32(skip + len(ids)),
                           "sessions-ids": _array(Data.STRING, ids)}, None
