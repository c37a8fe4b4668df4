"""pytest plugin: fixtures that run the Service Bus emulator on loopback.

Installed with sbsync (entry point ``pytest11: sbsync_emulator``), so the fixtures are
available in any test suite without a ``conftest.py`` import:

``servicebus_emulator``
    One emulator per test module, started on ``127.0.0.1`` on a free port (plain AMQP, and
    TLS on the same port) and a free TLS-only port (``.tls_port``, for clients that insist
    on AMQPS, like the SDK's uAMQP transport; trust ``.ca_file``) with
    ``auto_create=True``: the first sender or receiver naming an unknown entity creates a
    plain queue of that name with the emulator defaults. Module scope keeps start-up out of
    every test while still isolating modules from each other; tests in a module share it, so
    give each test its own entity names (and call ``faults.clear()`` after injecting
    faults). For session-enabled queues, topics and subscriptions, or non-default lock
    durations, call ``servicebus_emulator.create_entity(EntityConfig(...))`` first::

        def test_orders(servicebus_emulator):
            conn_str = servicebus_emulator.connection_string
            with ServiceBusClient.from_connection_string(conn_str) as client:
                with client.get_queue_sender("orders") as sender:
                    sender.send_messages(ServiceBusMessage("hi"))

``servicebus_emulator_options``
    The keyword arguments the shared ``servicebus_emulator`` is built with (module scope,
    ``{}`` by default). Override it in a ``conftest.py`` to give a whole directory's
    emulators other defaults, for example shorter locks::

        @pytest.fixture(scope="module")
        def servicebus_emulator_options():
            return {"lock_duration": 5}

``servicebus_emulator_factory``
    A callable taking the ``Emulator`` keyword arguments (``queues=``, ``session_queues=``,
    ``lock_duration=``, ``max_delivery_count=``, ``tls_port=``, ``tls_cert=``, ...) that
    returns a started emulator; every emulator it started is stopped when the test ends. Use it for a test that needs
    its own settings or that breaks the emulator on purpose (fault injection)::

        def test_redelivery(servicebus_emulator_factory):
            emulator = servicebus_emulator_factory(queues=["q"], lock_duration=2)

The emulator core (and python-qpid-proton) is imported inside the fixtures, not when pytest
loads this plugin, so test suites that never use them do not need the ``emulator`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from . import Emulator

EmulatorFactory = Callable[..., "Emulator"]


@pytest.fixture(scope="module")
def servicebus_emulator_options() -> dict[str, Any]:
    """``Emulator`` keyword arguments for ``servicebus_emulator``; override it in a conftest."""
    return {}


@pytest.fixture(scope="module")
def servicebus_emulator(servicebus_emulator_options: dict[str, Any]) -> Iterator[Emulator]:
    """A started emulator shared by the test module; unknown entities are created as queues
    (``host``, ``port``, ``auto_create`` and ``tls_port`` may be overridden by
    ``servicebus_emulator_options``)."""
    from . import Emulator

    options = {"host": "127.0.0.1", "port": 0, "auto_create": True, "tls_port": 0,
               **servicebus_emulator_options}
    emulator = Emulator(**options)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def servicebus_emulator_factory() -> Iterator[EmulatorFactory]:
    """Start emulators with custom settings; all of them are stopped at the test's end.

    The factory takes ``Emulator``'s keyword arguments; ``host`` defaults to ``127.0.0.1``
    and ``port`` to 0 (a free port), so parallel test runs never collide.
    """
    from . import Emulator

    started: list[Emulator] = []

    def factory(**kwargs: Any) -> Emulator:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        emulator = Emulator(**kwargs)
        emulator.start()
        started.append(emulator)
        return emulator

    try:
        yield factory
    finally:
        for emulator in reversed(started):
            emulator.stop()
