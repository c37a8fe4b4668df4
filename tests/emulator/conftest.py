"""Shared pieces of the emulator conformance suite.

Every behaviour test drives the unmodified azure-servicebus SDK twice: through its sync API
and through ``azure.servicebus.aio``. The ``sdk`` fixture gives either the real sync client or
``Blocking``, a thin harness that runs each aio coroutine to completion on its own event
loop, so one test body covers both without pytest-asyncio. Nothing between the SDK and
the emulator is faked.

Entities are created per test with unique names on the module's shared emulator (the
``servicebus_emulator`` fixture of sbsync's pytest plugin), because opening and closing SDK
links is the expensive part (~0.5 s each), not the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote_plus

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusReceivedMessage, TransportType
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient

from sbsync.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME, Emulator, EntityConfig

# Short enough to keep the suite fast, long enough that a loaded 2-core machine does not let
# a lock lapse between two SDK calls that were meant to see it held.
SHORT_LOCK = 2.0


class Blocking:
    """Runs an ``azure.servicebus.aio`` object's coroutines to completion on ``loop``.

    Attribute access and calls are forwarded; awaitable results are awaited; aio objects
    (receivers, senders, sessions) come back wrapped; async iterables (paged session lists)
    come back as lists; ``with`` maps to ``async with``. Exceptions are the SDK's own.
    Only what the suite uses is mapped (no ``async for`` over a receiver, for one).
    """

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def _result(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            value = self._loop.run_until_complete(_await(value))
        if type(value).__module__.startswith("azure.servicebus.aio"):
            return Blocking(value, self._loop)
        if hasattr(value, "__aiter__"):
            return self._loop.run_until_complete(_collect(value))
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, type):

            def call(*args: Any, **kwargs: Any) -> Any:
                args = tuple(_unwrap(a) for a in args)
                kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
                return self._result(value(*args, **kwargs))

            return call
        return self._result(value)

    def __enter__(self) -> Blocking:
        self._loop.run_until_complete(_await(self._target.__aenter__()))
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._loop.run_until_complete(_await(self._target.__aexit__(*exc_info)))


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _gather(*awaitables: Any, return_exceptions: bool = False) -> list[Any]:
    return await asyncio.gather(*awaitables, return_exceptions=return_exceptions)


async def _collect(iterable: Any) -> list[Any]:
    return [item async for item in iterable]


def _close_quietly(handler: Any) -> None:
    try:
        handler.close()
    except Exception:
        logging.getLogger(__name__).debug("closing %r failed", handler, exc_info=True)


def _unwrap(value: Any) -> Any:
    return object.__getattribute__(value, "_target") if isinstance(value, Blocking) else value


class Sdk:
    """One flavour of the SDK; it closes every link and client it made."""

    def __init__(self, flavor: str) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        if flavor == "aio":
            self.loop = asyncio.new_event_loop()
        self._clients: list[Any] = []
        self._handlers: list[Any] = []

    def client(self, conn_str: str, **kwargs: Any) -> Any:
        """A ``ServiceBusClient`` (sync, or aio behind ``Blocking``) for a connection string."""
        if self.loop is None:
            client: Any = ServiceBusClient.from_connection_string(conn_str, **kwargs)
        else:
            client = Blocking(
                AsyncServiceBusClient.from_connection_string(conn_str, **kwargs), self.loop
            )
        self._clients.append(client)
        return client

    def credential_client(self, emulator: Emulator, credential: Any, **kwargs: Any) -> Any:
        """A client authenticating with an azure-core credential instead of a key."""
        namespace = f"{emulator.host}:{emulator.port}"
        if self.loop is None:
            client: Any = ServiceBusClient(namespace, credential, use_tls=False, **kwargs)
        else:
            client = Blocking(
                AsyncServiceBusClient(namespace, credential, use_tls=False, **kwargs), self.loop
            )
        self._clients.append(client)
        return client

    def open(self, *handlers: Any) -> Any:
        """Open senders/receivers concurrently; they are closed (concurrently) at teardown.

        Link set-up and tear-down are the SDK's slow part (~0.5 s each, mostly waiting), so
        doing them side by side keeps the suite fast. Returns the handler, or a tuple of them.
        """
        if self.loop is None:
            with ThreadPoolExecutor(len(handlers)) as pool:
                for future in [pool.submit(h.__enter__) for h in handlers]:
                    future.result()
        else:
            targets = [_unwrap(h) for h in handlers]
            self.loop.run_until_complete(_gather(*(t.__aenter__() for t in targets)))
        self._handlers.extend(handlers)
        return handlers[0] if len(handlers) == 1 else handlers

    def open_failures(self, *handlers: Any) -> list[BaseException | None]:
        """Try to open handlers concurrently; return each one's exception (None if it opened).

        For error cases: a refused open costs the SDK ~1 s, so refusals are awaited together.
        """
        if self.loop is None:

            def attempt(handler: Any) -> BaseException | None:
                try:
                    handler.__enter__()
                except Exception as exc:
                    return exc
                self._handlers.append(handler)
                return None

            with ThreadPoolExecutor(len(handlers)) as pool:
                return list(pool.map(attempt, handlers))
        targets = [_unwrap(h) for h in handlers]
        results = self.loop.run_until_complete(
            _gather(*(t.__aenter__() for t in targets), return_exceptions=True)
        )
        outcomes: list[BaseException | None] = []
        for handler, result in zip(handlers, results):
            if isinstance(result, BaseException):
                outcomes.append(result)
            else:
                self._handlers.append(handler)
                outcomes.append(None)
        return outcomes

    def close(self) -> None:
        if self._handlers:
            if self.loop is None:
                with ThreadPoolExecutor(len(self._handlers)) as pool:
                    # Closing is best effort: a link may belong to an emulator already gone.
                    list(pool.map(_close_quietly, self._handlers))
            else:
                targets = [_unwrap(h) for h in self._handlers]
                self.loop.run_until_complete(
                    _gather(*(t.close() for t in targets), return_exceptions=True)
                )
        for client in reversed(self._clients):
            client.close()
        if self.loop is not None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


@pytest.fixture(scope="session", params=["sync", "aio"])
def sdk(request: pytest.FixtureRequest) -> Iterator[Sdk]:
    """The SDK flavour under test: the sync API, then ``azure.servicebus.aio``.

    Session-scoped, so pytest runs every sync test, then every aio test, and the links tests
    open with ``sdk.open`` are closed together at the end (closing is the SDK's slowest step;
    a link whose emulator is already gone closes quickly).
    """
    flavor = Sdk(request.param)
    try:
        yield flavor
    finally:
        flavor.close()


@pytest.fixture
def emulator(servicebus_emulator: Emulator) -> Iterator[Emulator]:
    """The module's shared emulator (auto-create on), with no fault left over from a test."""
    servicebus_emulator.faults.clear()
    yield servicebus_emulator
    servicebus_emulator.faults.clear()


@pytest.fixture(scope="module")
def client(sdk: Sdk, servicebus_emulator: Emulator) -> Any:
    """A client of the shared emulator in the flavour under test."""
    return sdk.client(servicebus_emulator.connection_string)


@pytest.fixture(scope="module")
def no_retry(sdk: Sdk, servicebus_emulator: Emulator) -> Any:
    """A client that does not retry: the SDK retries some refusals (session cannot be locked,
    no session available, message not found) with back-off for ~11 s before raising them."""
    return sdk.client(servicebus_emulator.connection_string, retry_total=0)


def sas_token(
    resource: str,
    expiry: int,
    key_name: str = DEFAULT_KEY_NAME,
    key: str = DEFAULT_KEY,
) -> str:
    """A Shared Access Signature the way Service Bus defines it (independent of the SDK)."""
    to_sign = f"{quote_plus(resource)}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()
    return (
        f"SharedAccessSignature sr={quote_plus(resource)}&sig={quote_plus(sig)}"
        f"&se={expiry}&skn={quote_plus(key_name)}"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tls_conn_str(emulator: Emulator) -> str:
    """The emulator's connection string as a production namespace's looks: no
    ``UseDevelopmentEmulator``, so clients speak TLS; the host is ``localhost`` (on the
    certificate) and the port is left to the client (pass ``custom_endpoint_address``)."""
    parts = [p for p in emulator.connection_string.split(";")
             if p and not p.startswith(("Endpoint=", "UseDevelopmentEmulator="))]
    return ";".join(["Endpoint=sb://localhost/", *parts])


def tls_client(sdk: Sdk, emulator: Emulator, port: int | None = None, **kwargs: Any) -> Any:
    """An SDK client that reaches the emulator over TLS (``port``: default the main one),
    trusting its CA as an application would (``connection_verify``)."""
    return sdk.client(
        tls_conn_str(emulator),
        transport_type=TransportType.Amqp,  # a custom endpoint alone means websockets
        custom_endpoint_address=f"sb://localhost:{port or emulator.port}",
        connection_verify=emulator.ca_file,
        **kwargs,
    )


def new_queue(emulator: Emulator, prefix: str = "q", **settings: Any) -> str:
    """Create a queue with a fresh name (``EntityConfig`` settings as keywords)."""
    name = unique(prefix)
    emulator.create_entity(EntityConfig(name=name, kind="queue", **settings))
    return name


def new_topic(
    emulator: Emulator, subscriptions: tuple[str, ...] = ("s1", "s2"), **settings: Any
) -> str:
    """Create a topic with a fresh name and the given subscriptions (sharing ``settings``)."""
    name = unique("t")
    emulator.create_entity(EntityConfig(name=name, kind="topic"))
    for sub in subscriptions:
        emulator.create_entity(EntityConfig(name=sub, kind="subscription", topic=name, **settings))
    return name


def receive(receiver: Any, count: int, timeout: float = 5.0) -> list[ServiceBusReceivedMessage]:
    """Receive until ``count`` messages arrived or ``timeout`` passed (the SDK returns early)."""
    got: list[ServiceBusReceivedMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got.extend(
            receiver.receive_messages(
                max_message_count=count - len(got), max_wait_time=max(left, 0.1)
            )
        )
    return got


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
