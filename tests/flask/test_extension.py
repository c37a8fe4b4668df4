"""sbsync.flask with Flask's test client, against the emulator over loopback AMQP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask, request

import sbsync
from sbsync import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from sbsync.emulator import Emulator, EntityConfig
from sbsync.exceptions import ClientClosedError, OperationTimeoutError, SessionCannotBeLockedError
from sbsync.flask import EXTENSION_KEY, ServiceBus, ServiceBusState

pytestmark = pytest.mark.timeout(60)


def loop_thread_names() -> set[str]:
    return {t.name for t in threading.enumerate() if re.fullmatch(r"sbsync-loop-\d+", t.name)}


def body_of(message: Any) -> bytes:
    return b"".join(message.body)


def receive_session(client: sbsync.ServiceBusClient, queue: str, session_id: str, count: int) -> list[Any]:
    """``count`` messages of one session, completed, in the order the broker hands them out."""
    got: list[Any] = []
    with client.get_queue_receiver(queue, session_id=session_id, max_wait_time=2) as receiver:
        deadline = time.monotonic() + 15
        while len(got) < count and time.monotonic() < deadline:
            batch = receiver.receive_messages(max_message_count=count - len(got), max_wait_time=2)
            for message in batch:
                receiver.complete_message(message)
            got += batch
    return got


@pytest.fixture
def servicebus() -> ServiceBus:
    return ServiceBus()


@pytest.fixture
def app(conn_str: str, servicebus: ServiceBus) -> Iterator[Flask]:
    """A small app with views calling the helpers; its client is closed at the end."""
    app = Flask(__name__)
    app.config["SERVICEBUS_CONNECTION_STR"] = conn_str
    servicebus.init_app(app)

    @app.post("/send/<queue>")
    def send(queue: str) -> Any:
        servicebus.send(request.get_json(), queue_name=queue, session_id=request.args.get("session"))
        return "", 204

    @app.get("/state/<queue>/<session_id>")
    def get_state(queue: str, session_id: str) -> Any:
        state = servicebus.get_session_state(session_id, queue_name=queue)
        return {"state": None if state is None else state.decode()}

    @app.put("/state/<queue>/<session_id>")
    def put_state(queue: str, session_id: str) -> Any:
        servicebus.set_session_state(session_id, request.get_data(), queue_name=queue)
        return "", 204

    try:
        yield app
    finally:
        servicebus.close(app)


# -- the import guard and configuration ------------------------------------------------------


def test_import_without_flask_says_what_to_install() -> None:
    script = "import sys; sys.modules['flask'] = None\nimport sbsync.flask"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "ImportError: sbsync.flask needs Flask" in proc.stderr
    assert "pip install 'sbsync[flask]'" in proc.stderr


def test_init_app_registers_one_client_per_app(conn_str: str, servicebus: ServiceBus) -> None:
    first, second = Flask("first"), Flask("second")
    for app in (first, second):
        app.config["SERVICEBUS_CONNECTION_STR"] = conn_str
        servicebus.init_app(app)
    try:
        state = first.extensions[EXTENSION_KEY]
        assert isinstance(state, ServiceBusState)
        assert isinstance(state.client, sbsync.ServiceBusClient)
        assert servicebus.client(first) is state.client
        assert servicebus.client(second) is not state.client
        assert first.config["SERVICEBUS_TIMEOUT"] == 10.0
        with first.app_context():
            assert servicebus.client() is state.client
        with pytest.raises(RuntimeError, match="already initialised"):
            servicebus.init_app(first)
    finally:
        servicebus.close(first)
        servicebus.close(second)
    servicebus.close(first)  # idempotent
    with pytest.raises(ClientClosedError):
        servicebus.send("late", queue_name="q", app=first)


def test_constructor_form(conn_str: str) -> None:
    app = Flask(__name__)
    app.config["SERVICEBUS_CONNECTION_STR"] = conn_str
    servicebus = ServiceBus(app)
    try:
        assert servicebus.client(app) is app.extensions[EXTENSION_KEY].client
    finally:
        servicebus.close(app)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({}, "needs SERVICEBUS_CONNECTION_STR"),
        ({"SERVICEBUS_FULLY_QUALIFIED_NAMESPACE": "x.servicebus.windows.net"}, "needs SERVICEBUS_CONNECTION_STR"),
        (
            {"SERVICEBUS_CONNECTION_STR": "Endpoint=sb://h;SharedAccessKeyName=k;SharedAccessKey=v",
             "SERVICEBUS_FULLY_QUALIFIED_NAMESPACE": "x.servicebus.windows.net"},
            "not both",
        ),
        ({"SERVICEBUS_CONNECTION_STR": "not a connection string"}, "blank or malformed"),
    ],
)
def test_bad_configuration_fails_in_init_app(config: dict[str, Any], error: str) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(ValueError, match=error):
        ServiceBus().init_app(app)
    assert EXTENSION_KEY not in app.extensions


def test_credential_configuration(emulator: Emulator) -> None:
    from azure.core.credentials import AzureNamedKeyCredential

    from sbsync.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME

    app = Flask(__name__)
    app.config["SERVICEBUS_FULLY_QUALIFIED_NAMESPACE"] = "sbsync.servicebus.windows.net"
    app.config["SERVICEBUS_CREDENTIAL"] = AzureNamedKeyCredential(DEFAULT_KEY_NAME, DEFAULT_KEY)
    app.config["SERVICEBUS_CLIENT_OPTIONS"] = {"retry_total": 1}
    servicebus = ServiceBus(app)
    try:
        assert servicebus.client(app).fully_qualified_namespace == "sbsync.servicebus.windows.net"
    finally:
        servicebus.close(app)


def test_helpers_outside_an_app_context_or_uninitialised() -> None:
    servicebus = ServiceBus()
    with pytest.raises(RuntimeError, match="application context"):
        servicebus.client()
    with pytest.raises(RuntimeError, match="not initialised"):
        servicebus.client(Flask(__name__))


# -- sending ---------------------------------------------------------------------------------


def test_view_sends_json_to_a_session(app: Flask, reader: sbsync.ServiceBusClient, session_queue: str) -> None:
    http = app.test_client()
    for n in range(3):
        response = http.post(f"/send/{session_queue}?session=customer-1", json={"n": n})
        assert response.status_code == 204
    got = receive_session(reader, session_queue, "customer-1", 3)
    assert [json.loads(body_of(m)) for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {m.content_type for m in got} == {"application/json"}
    assert {m.session_id for m in got} == {"customer-1"}


def test_send_message_kinds(app: Flask, servicebus: ServiceBus, reader: sbsync.ServiceBusClient) -> None:
    queue = "plain-kinds"
    with app.app_context():
        servicebus.send("text", queue_name=queue, subject="s", application_properties={"k": "v"})
        servicebus.send(b"\x00bytes", queue_name=queue, message_id="m-2")
        servicebus.send(ServiceBusMessage("own", correlation_id="c-3"), queue_name=queue)
        with pytest.raises(TypeError, match="on the ServiceBusMessage itself"):
            servicebus.send(ServiceBusMessage("x"), queue_name=queue, subject="s")
        with pytest.raises(TypeError, match="exactly one"):
            servicebus.send("x")
        with pytest.raises(TypeError, match="exactly one"):
            servicebus.send("x", queue_name=queue, topic_name="t")
    with reader.get_queue_receiver(queue, max_wait_time=2) as receiver:
        got = receiver.receive_messages(max_message_count=3, max_wait_time=5)
        for message in got:
            receiver.complete_message(message)
    assert [body_of(m) for m in got] == [b"text", b"\x00bytes", b"own"]
    assert got[0].subject == "s"
    assert got[0].application_properties == {b"k": b"v"}
    assert got[1].message_id == "m-2"
    assert got[2].correlation_id == "c-3"


def test_topic_send_reaches_a_session_subscription(
    app: Flask, servicebus: ServiceBus, reader: sbsync.ServiceBusClient, emulator: Emulator
) -> None:
    emulator.create_entity(EntityConfig(name="events", kind="topic"))
    emulator.create_entity(EntityConfig(name="audit", kind="subscription", topic="events", requires_session=True))
    with app.app_context():
        servicebus.send({"event": "signup"}, topic_name="events", session_id="tenant-9")
        servicebus.set_session_state("tenant-9", b"seen", topic_name="events", subscription_name="audit")
        assert servicebus.get_session_state("tenant-9", topic_name="events", subscription_name="audit") == b"seen"
        with pytest.raises(TypeError, match="needs subscription_name"):
            servicebus.get_session_state("tenant-9", topic_name="events")
    with reader.get_subscription_receiver("events", "audit", session_id="tenant-9", max_wait_time=5) as receiver:
        (message,) = receiver.receive_messages(max_wait_time=5)
        receiver.complete_message(message)
    assert json.loads(body_of(message)) == {"event": "signup"}


def test_concurrent_requests_share_one_client_and_one_sender_per_entity(
    app: Flask, servicebus: ServiceBus, reader: sbsync.ServiceBusClient, session_queue: str
) -> None:
    loops_before = loop_thread_names()
    errors: list[BaseException] = []

    def customer(index: int) -> None:
        http = app.test_client()
        try:
            for n in range(10):
                response = http.post(f"/send/{session_queue}?session=c{index}", json={"n": n})
                assert response.status_code == 204
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=customer, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert errors == []
    state = app.extensions[EXTENSION_KEY]
    assert list(state._senders) == [("queue", session_queue)]
    assert servicebus.get_sender(queue_name=session_queue, app=app) is state._senders[("queue", session_queue)]
    # No client per request: at most the app's one loop thread appeared (if it started lazily).
    assert len(loop_thread_names() - loops_before) <= 1
    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda i: receive_session(reader, session_queue, f"c{i}", 10), range(8)))
    for got in sessions:
        assert [json.loads(body_of(m))["n"] for m in got] == list(range(10))


# -- session state ---------------------------------------------------------------------------


def test_session_state_round_trip(app: Flask, session_queue: str) -> None:
    http = app.test_client()
    assert http.get(f"/state/{session_queue}/s-1").get_json() == {"state": None}
    assert http.put(f"/state/{session_queue}/s-1", data=b"step-2").status_code == 204
    assert http.get(f"/state/{session_queue}/s-1").get_json() == {"state": "step-2"}
    assert http.get(f"/state/{session_queue}/s-other").get_json() == {"state": None}


def test_session_state_of_a_held_session_raises(
    app: Flask, servicebus: ServiceBus, reader: sbsync.ServiceBusClient, session_queue: str
) -> None:
    with app.app_context():
        servicebus.send("x", queue_name=session_queue, session_id="busy")
    with reader.get_queue_receiver(session_queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as holder:
        holder.receive_messages(max_wait_time=5)
        assert holder.session.session_id == "busy"
        # The SDK deems this retryable: the call retries until the session is free or the
        # timeout (default SERVICEBUS_TIMEOUT) runs out.
        with app.app_context(), pytest.raises((SessionCannotBeLockedError, OperationTimeoutError)):
            servicebus.get_session_state("busy", queue_name=session_queue, timeout=2)


# -- the example app and its worker ------------------------------------------------------------


def test_example_app_and_worker(
    conn_str: str, reader: sbsync.ServiceBusClient, session_queue: str, example_app_module: Any
) -> None:
    app_module, worker_module = example_app_module
    app = app_module.create_app({"SERVICEBUS_CONNECTION_STR": conn_str, "ORDERS_QUEUE": session_queue})
    try:
        http = app.test_client()
        assert http.get("/healthz").status_code == 200
        assert http.get("/debug/threads").status_code == 404  # off unless asked for
        assert http.post("/customers/ann/orders", data="nope").status_code == 400
        for amount in (5, 7):
            response = http.post("/customers/ann/orders", json={"amount": amount})
            assert response.status_code == 202
        last_order = response.get_json()["order_id"]
        assert http.post("/customers/bob/orders", json={"amount": 1}).status_code == 202
        assert http.get("/customers/ann").get_json() == {"customer_id": "ann", "orders": 0}

        processor = worker_module.build_processor(reader, session_queue, concurrency=2)
        processor.start()
        try:
            deadline = time.monotonic() + 20
            while processor.stats.messages_completed < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert processor.stats.messages_completed == 3
            # While the worker still holds ann's session, her state is not readable.
            assert http.get("/customers/ann").status_code in (200, 409)
        finally:
            assert processor.stop(timeout=10)
        response = http.get("/customers/ann")
        assert response.status_code == 200
        assert response.get_json() == {"customer_id": "ann", "orders": 2, "total": 12, "last_order_id": last_order}
        assert http.get("/customers/bob").get_json()["orders"] == 1
    finally:
        app_module.servicebus.close(app)
