"""Bad input on the wire: the emulator drops the offender and keeps serving SDK clients."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from proton import Delivery, Endpoint, Message
from proton.utils import BlockingConnection, SendException

from sbsync.emulator import Emulator

from .conftest import Sdk, receive, sas_token

pytestmark = pytest.mark.timeout(60)

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"


@pytest.fixture
def wire_emulator(servicebus_emulator_factory: Any) -> Emulator:
    emulator: Emulator = servicebus_emulator_factory(queues=["q"])
    return emulator


@contextmanager
def _proton_client(emulator: Emulator) -> Iterator[BlockingConnection]:
    """A connection from proton's own client: a second, independent AMQP stack."""
    conn = BlockingConnection(
        f"amqp://{emulator.host}:{emulator.port}", timeout=5, allowed_mechs="ANONYMOUS"
    )
    try:
        yield conn
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Read until the server closes the connection; False if it is still open at timeout."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:  # reset by the server: closed too
            return True
    return False


def _sdk_round_trip(sdk: Sdk, emulator: Emulator, body: str) -> None:
    client = sdk.client(emulator.connection_string)
    sender, receiver = sdk.open(
        client.get_queue_sender("q"),
        client.get_queue_receiver("q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE),
    )
    sender.send_messages(ServiceBusMessage(body))
    assert [str(m) for m in receive(receiver, 1)] == [body]


@pytest.mark.parametrize(
    ("payload", "hang_up"),
    [
        (b"\x16\x03\x01\x00\x05hello" + os.urandom(64), False),  # a TLS record of noise
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01", False),  # HTTP, then not HTTP
        (os.urandom(4096), False),
        (AMQP_HEADER + os.urandom(64), False),  # plain AMQP where SASL is required, then noise
        (SASL_HEADER + struct.pack(">I", 0xFFFFFFF0) + b"\x02\x01\x00\x00", False),  # huge frame
        # Half a frame just waits for the rest: we hang up mid-frame ourselves.
        (SASL_HEADER + struct.pack(">IBBH", 1000, 2, 1, 0) + b"\x00\x53\x41", True),
    ],
    ids=["tls-noise", "http-then-noise", "random", "amqp-no-sasl", "huge-frame", "half-frame"],
)
def test_garbage_is_dropped(wire_emulator: Emulator, payload: bytes, hang_up: bool) -> None:
    with socket.create_connection((wire_emulator.host, wire_emulator.port), timeout=5) as sock:
        sock.sendall(payload)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        assert _closed_by_server(sock)
    with _proton_client(wire_emulator) as conn:  # a well-behaved client is still served
        assert conn.conn.state & Endpoint.REMOTE_ACTIVE


@pytest.fixture
def rude_sockets(wire_emulator: Emulator) -> Iterator[list[socket.socket]]:
    """Connections that send half a header, or half a frame, then hang around silently."""
    socks = []
    address = (wire_emulator.host, wire_emulator.port)
    for payload in (b"AM", SASL_HEADER + b"\x00\x00", b""):
        sock = socket.create_connection(address, timeout=5)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_silent_and_half_open_connections_do_not_block_others(
    wire_emulator: Emulator, sdk: Sdk, rude_sockets: list[socket.socket]
) -> None:
    _sdk_round_trip(sdk, wire_emulator, "served despite idle sockets")
    for sock in rude_sockets:  # slamming them shut changes nothing either
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    _sdk_round_trip(sdk, wire_emulator, "served after resets")


def _request(conn: BlockingConnection, address: str, body: Any, properties: dict[str, Any]) -> Any:
    sender = conn.create_sender(address)
    receiver = conn.create_receiver(address)
    try:
        request_id = str(uuid.uuid4())
        sender.send(Message(id=request_id, reply_to=address, body=body, properties=properties))
        reply = receiver.receive(timeout=5)
        assert reply.correlation_id == request_id
        return reply
    finally:
        sender.close()
        receiver.close()


def test_raw_management_requests(wire_emulator: Emulator, sdk: Sdk) -> None:
    """A second AMQP stack (proton's client) authenticates, then asks for nonsense."""
    namespace = f"sb://{wire_emulator.host}:{wire_emulator.port}/"
    with _proton_client(wire_emulator) as conn:
        reply = _request(
            conn,
            "$cbs",
            sas_token(namespace, int(time.time()) + 600),
            {"operation": "put-token", "type": "jwt", "name": namespace + "q"},
        )
        assert 200 <= reply.properties["status-code"] < 300
        bad_token = _request(
            conn,
            "$cbs",
            "SharedAccessSignature sr=x&sig=y&se=1&skn=z",
            {"operation": "put-token", "type": "jwt", "name": namespace + "q"},
        )
        assert bad_token.properties["status-code"] in (401, 403)
        unknown = _request(
            conn,
            "q/$management",
            {},
            {"operation": "com.microsoft:no-such-operation", "type": "entity-mgmt"},
        )
        assert unknown.properties["statusCode"] >= 400
        assert unknown.properties.get("errorCondition")
        missing = _request(conn, "q/$management", {}, {"type": "entity-mgmt"})  # no operation
        assert missing.properties["statusCode"] >= 400
        malformed = _request(  # a known operation with a body of the wrong shape
            conn,
            "q/$management",
            "not a map",
            {"operation": "com.microsoft:peek-message", "type": "entity-mgmt"},
        )
        assert malformed.properties["statusCode"] >= 400
    _sdk_round_trip(sdk, wire_emulator, "served after nonsense")


def test_raw_oversize_transfer_is_rejected(wire_emulator: Emulator) -> None:
    """The SDK refuses oversize messages itself; a client that does not is refused too."""
    namespace = f"sb://{wire_emulator.host}:{wire_emulator.port}/"
    with _proton_client(wire_emulator) as conn:
        reply = _request(
            conn,
            "$cbs",
            sas_token(namespace, int(time.time()) + 600),
            {"operation": "put-token", "type": "jwt", "name": namespace + "q"},
        )
        assert 200 <= reply.properties["status-code"] < 300
        sender = conn.create_sender(f"amqps://{wire_emulator.host}:{wire_emulator.port}/q")
        with pytest.raises(SendException) as info:
            sender.send(Message(body=b"x" * (300 * 1024)))  # the limit is 256 KB
        assert info.value.state == Delivery.REJECTED
        sender.send(Message(body=b"fits"))  # the link is still usable
        sender.close()
    assert wire_emulator.stats("q").active == 1


def test_messages_without_an_id_get_one(wire_emulator: Emulator, sdk: Sdk) -> None:
    """The service gives a message that has no message-id one (the JS SDK sends none, and
    its receivers fail without); an id the sender chose is kept."""
    namespace = f"sb://{wire_emulator.host}:{wire_emulator.port}/"
    with _proton_client(wire_emulator) as conn:
        _request(conn, "$cbs", sas_token(namespace, int(time.time()) + 600),
                 {"operation": "put-token", "type": "jwt", "name": namespace + "q"})
        sender = conn.create_sender(f"amqps://{wire_emulator.host}:{wire_emulator.port}/q")
        sender.send(Message(body="anonymous", properties={"k": "v"}))
        sender.send(Message(body="named", id="mine"))
        sender.close()
    client = sdk.client(wire_emulator.connection_string)
    receiver = sdk.open(
        client.get_queue_receiver("q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE))
    first, second = receive(receiver, 2)
    assert len(first.message_id) == 32 and int(first.message_id, 16) >= 0
    assert first.application_properties == {b"k": b"v"}
    assert "anonymous" in str(first)  # an amqp-value body, kept as sent
    assert second.message_id == "mine"
