"""Small helpers shared by the proton-facing modules."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cproton import ffi as _ffi
from cproton import lib as _lib
from proton import Condition, symbol


def now_ms() -> int:
    """Wall-clock milliseconds: lock expiries travel to clients as absolute times."""
    return int(time.time() * 1000)


def error_condition(name: str, description: str) -> Condition:
    """An AMQP error the SDK can read: it indexes [condition, description, info], so info
    must be present on the wire."""
    return Condition(name, description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})


def raw_tag(dlv: Any) -> bytes:
    """The delivery tag as bytes (``Delivery.tag`` decodes it as UTF-8; lock tokens are
    binary)."""
    tag = _lib.pn_delivery_tag(dlv._impl)
    return bytes(_ffi.unpack(tag.start, tag.size))


def attr(obj: Any, name: str) -> Any:
    """An attribute we may have stored on a proton endpoint, or None."""
    try:
        return getattr(obj, name)
    except AttributeError:
        return None


def opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def filter_map(terminus: Any) -> dict[str, Any]:
    """A terminus filter set as {name: value} (described values unwrapped)."""
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
