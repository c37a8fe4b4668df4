"""A local Azure Service Bus emulator speaking AMQP 1.0 (python-qpid-proton).

The official ``azure-servicebus`` SDK (sync and aio) runs against it unmodified through
``Emulator.connection_string`` (``UseDevelopmentEmulator=true``: plain AMQP on loopback), and
so do TLS clients (the SDK's uAMQP transport, the JS SDK, HTTPS for the administration
client) on the same port or ``Emulator.tls_port``, trusting ``Emulator.ca_file``.

Only ``EntityConfig`` is imported eagerly: the rest needs python-qpid-proton (the
``emulator`` extra), so it loads on first use and the pytest plugin costs nothing without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import EntityConfig

if TYPE_CHECKING:
    from ._faults import Faults
    from ._records import EntityStats
    from ._server import DEFAULT_KEY, DEFAULT_KEY_NAME, Emulator

__all__ = ["DEFAULT_KEY", "DEFAULT_KEY_NAME", "Emulator", "EntityConfig", "EntityStats", "Faults"]

_LAZY = {"DEFAULT_KEY": "._server", "DEFAULT_KEY_NAME": "._server", "Emulator": "._server",
         "EntityStats": "._records", "Faults": "._faults"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value
