"""A local Azure Service Bus emulator speaking AMQP 1.0 (python-qpid-proton).

The official ``azure-servicebus`` SDK (sync and aio) runs against it unmodified through
``Emulator.connection_string`` (``UseDevelopmentEmulator=true``: plain AMQP on loopback).
"""

from ._config import EntityConfig
from ._faults import Faults
from ._records import EntityStats
from ._server import DEFAULT_KEY, DEFAULT_KEY_NAME, Emulator

__all__ = ["DEFAULT_KEY", "DEFAULT_KEY_NAME", "Emulator", "EntityConfig", "EntityStats", "Faults"]
