"""Message and session records of the broker, its error type and conditions."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

from . import _codec as codec

ACTIVE, DEFERRED, SCHEDULED = 0, 1, 2  # x-opt-message-state values


# error conditions (as the SDK maps them)
NOT_FOUND = "amqp:not-found"
NOT_ALLOWED = "amqp:not-allowed"
LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"
SESSION_CANNOT_BE_LOCKED = "com.microsoft:session-cannot-be-locked"
MESSAGE_NOT_FOUND = "com.microsoft:message-not-found"
ARGUMENT_ERROR = "com.microsoft:argument-error"
TIMEOUT = "com.microsoft:timeout"
SERVER_BUSY = "com.microsoft:server-busy"
SIZE_EXCEEDED = "amqp:link:message-size-exceeded"


class BrokerError(Exception):
    """A failure the client should see as an AMQP error condition."""

    def __init__(self, condition: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description
        self.status = status


@dataclass
class EntityStats:
    active: int = 0
    locked: int = 0
    scheduled: int = 0
    deferred: int = 0
    dead_letter: int = 0
    #: Sessions whose lock a receiver holds (expired locks not yet reaped included).
    locked_sessions: int = 0


_K_ENQUEUED = codec.enc_symbol("x-opt-enqueued-time") + b"\x83"
_K_SEQ = codec.enc_symbol("x-opt-sequence-number") + b"\x81"
_K_ENQ_SEQ = codec.enc_symbol("x-opt-enqueue-sequence-number") + b"\x81"
_K_LOCKED = codec.enc_symbol("x-opt-locked-until") + b"\x83"
_K_STATE = codec.enc_symbol("x-opt-message-state")
_K_LOCK_TOKEN = codec.enc_symbol("x-opt-lock-token")
_OURS = frozenset(("x-opt-enqueued-time", "x-opt-sequence-number",
                   "x-opt-enqueue-sequence-number", "x-opt-locked-until", "x-opt-message-state"))
_pack_q = struct.Struct(">q").pack


class StoredMessage:
    """One message held by an entity: the bare message as sent plus broker state."""

    __slots__ = ("annotations", "app_end", "app_start", "bare", "delivery_count", "durable",
                 "enqueued_ms", "expires_ms", "holder", "lock_token", "locked_until_ms",
                 "priority", "seq", "session_id", "state", "ttl_ms")

    def __init__(self, parsed: codec.ParsedMessage, seq: int, now_ms: int) -> None:
        self.seq = seq
        self.durable = parsed.durable
        self.priority = parsed.priority
        self.ttl_ms = parsed.ttl_ms
        self.annotations = parsed.annotations
        self.bare = parsed.bare
        self.app_start = parsed.app_start
        self.app_end = parsed.app_end
        self.session_id = parsed.group_id
        self.enqueued_ms = now_ms
        self.expires_ms: int | None = None
        self.state = ACTIVE
        self.delivery_count = 0
        self.lock_token: uuid.UUID | None = None
        self.locked_until_ms = 0
        self.holder: Any = None

    def annotation(self, key: str) -> Any:
        for k, raw in self.annotations:
            if k == key:
                _, vpos = codec.decode(raw, 0)
                return codec.decode(raw, vpos)[0]
        return None

    def set_app_props(self, extra: dict[str, Any]) -> None:
        """Add or replace application properties (dead-letter reason and description)."""
        old = self.bare[self.app_start:self.app_end]
        kept = codec.map_entries(old, 3) if old else []
        new = codec.encode_app_props(extra, kept)
        if not old:  # no section yet: it goes after the properties section, if any
            self.app_start = self.app_end = codec.properties_end(self.bare)
        self.bare = self.bare[:self.app_start] + new + self.bare[self.app_end:]
        self.app_end = self.app_start + len(new)

    def encode(self, locked_until_ms: int | None = None, lock_token: uuid.UUID | None = None) -> bytes:
        """The message as delivered now: fresh header and broker annotations, bare message as
        the sender wrote it. ``lock_token``: for a message received by sequence number (not on
        a link, so no delivery tag), carried as the service does, in the delivery annotations
        (clients before azure-servicebus 7.15 read it only there)."""
        seq = _pack_q(self.seq)
        ours = [_K_ENQUEUED, _pack_q(self.enqueued_ms), _K_SEQ, seq, _K_ENQ_SEQ, seq]
        count = 3
        if locked_until_ms is not None:
            ours += (_K_LOCKED, _pack_q(locked_until_ms))
            count += 1
        if self.state != ACTIVE:
            ours += (_K_STATE, codec.enc_value(self.state))
            count += 1
        dc = self.delivery_count
        delivery = b"" if lock_token is None else codec.section(
            0x71, codec.enc_compound(0xD1, _K_LOCK_TOKEN + codec.enc_value(lock_token), 2))
        return b"".join((
            codec.enc_header(self.durable, self.priority, self.ttl_ms, dc == 0, dc),
            delivery,
            codec.encode_annotations(ours, count, self.annotations, _OURS),
            self.bare))


class Session:
    """A message session of a session-enabled entity."""

    __slots__ = ("holder", "id", "locked_until_ms", "ready", "state", "updated_ms")

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.ready: list[int] = []  # heap of sequence numbers
        self.state: bytes | None = None
        self.holder: Any = None
        self.locked_until_ms = 0
        self.updated_ms = 0
