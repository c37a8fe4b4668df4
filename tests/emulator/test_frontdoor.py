"""One port, every protocol: plain AMQP, AMQPS, HTTPS and HTTP told apart by their first
bytes; a TLS-only port; the SASL mechanisms the service offers; certificates."""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from proton import Data

from sbsync.emulator import Emulator
from sbsync.emulator._frontdoor import FrontDoor
from sbsync.emulator._http import HttpConnection, not_found
from sbsync.emulator._tls import development_pair

from .conftest import Sdk, new_queue, receive, tls_client

pytestmark = pytest.mark.timeout(60)

SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def _closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except OSError:  # reset: closed too
        pass
    return True


def _tls_context(emulator: Emulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=emulator.ca_file)


@pytest.mark.parametrize("which", ["same-port", "tls-port"])
def test_sdk_over_tls(servicebus_emulator: Emulator, sdk: Sdk, which: str) -> None:
    """pyamqp with TLS, verifying the certificate against ``ca_file`` (connection_verify)."""
    port = servicebus_emulator.tls_port if which == "tls-port" else servicebus_emulator.port
    queue = new_queue(servicebus_emulator)
    client = tls_client(sdk, servicebus_emulator, port)
    sender, receiver = sdk.open(client.get_queue_sender(queue), client.get_queue_receiver(queue))
    sender.send_messages([ServiceBusMessage(f"over TLS {i}") for i in range(3)])
    got = receive(receiver, 3)
    assert sorted(str(m) for m in got) == [f"over TLS {i}" for i in range(3)]
    for message in got:
        receiver.complete_message(message)
    assert receiver.peek_messages(5) == []


def test_tls_is_verified(servicebus_emulator: Emulator) -> None:
    """A client that does not trust the development CA is refused by its own check, and
    the certificate names localhost and 127.0.0.1."""
    address = ("127.0.0.1", servicebus_emulator.port)
    with socket.create_connection(address, timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    for name in ("localhost", "127.0.0.1"):
        with socket.create_connection(address, timeout=5) as raw:
            context = _tls_context(servicebus_emulator)
            with context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_only_port_refuses_plain_amqp(servicebus_emulator: Emulator) -> None:
    assert servicebus_emulator.tls_port not in (None, 0, servicebus_emulator.port)
    with socket.create_connection(("127.0.0.1", servicebus_emulator.tls_port), timeout=5) as sock:
        sock.sendall(SASL_HEADER)
        assert _closed_by_server(sock)


def _recv_frame(sock: socket.socket) -> Any:
    head = _recv_exactly(sock, 8)
    size, doff, ftype, _ = struct.unpack(">IBBH", head)
    assert ftype == 1  # SASL
    body = _recv_exactly(sock, size - 8)[(doff - 2) * 4:]
    data = Data()
    data.decode(body)
    data.rewind()
    data.next()
    return data.get_object()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "closed early"
        buf += chunk
    return buf


def _sasl_init(mechanism: str) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(0x41)
    data.put_list()
    data.enter()
    data.put_symbol(mechanism)
    data.exit()
    data.exit()
    body = data.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


@pytest.mark.parametrize(("mechanism", "code"), [("MSSBCBS", 0), ("ANONYMOUS", 0), ("PLAIN", 1)])
def test_sasl_mechanisms(servicebus_emulator: Emulator, mechanism: str, code: int) -> None:
    """The service offers MSSBCBS (uAMQP's choice) and ANONYMOUS (pyamqp's, rhea's)."""
    with socket.create_connection(("127.0.0.1", servicebus_emulator.port), timeout=5) as sock:
        sock.sendall(SASL_HEADER)
        assert _recv_exactly(sock, 8) == SASL_HEADER
        mechanisms = _recv_frame(sock)
        assert mechanisms.descriptor == 0x40
        assert {str(m) for m in mechanisms.value[0]} == {"MSSBCBS", "ANONYMOUS"}
        sock.sendall(_sasl_init(mechanism))
        outcome = _recv_frame(sock)
        assert (outcome.descriptor, outcome.value[0]) == (0x44, code)
        if code:
            assert _closed_by_server(sock)
        else:  # the AMQP header goes on to the AMQP layer, which answers with its own
            sock.sendall(b"AMQP\x00\x01\x00\x00")
            assert _recv_exactly(sock, 8) == b"AMQP\x00\x01\x00\x00"


def _handler(seen: list[tuple[str, str, dict[str, str], bytes]]) -> Any:
    def handle(method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        seen.append((method, target, headers, body))
        return 201, {"Content-Type": "application/atom+xml"}, b"<entry/>" + body[::-1]
    return handle


def test_http_and_https_reach_the_handler(servicebus_emulator_factory: Any) -> None:
    """The administration client's door: HTTPS on the AMQP port (and on the TLS port), and
    plain HTTP too; keep-alive, bodies, chunked bodies; the default handler answers 404."""
    emulator: Emulator = servicebus_emulator_factory(tls_port=0)
    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
        "localhost", emulator.port, context=_tls_context(emulator), timeout=5)
    conn.request("GET", "/nothing")
    answer = conn.getresponse()
    assert (answer.status, answer.read()) == (404, b"No HTTP resource at /nothing\n")

    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    emulator.http_handler = _handler(seen)
    conn.request("PUT", "/q1?api-version=2021-05", body=b"<entry>x</entry>",
                 headers={"Content-Type": "application/atom+xml", "X-Two": "a"})
    answer = conn.getresponse()  # the same (kept-alive) connection
    assert answer.status == 201
    assert answer.getheader("Content-Type") == "application/atom+xml"
    assert answer.read() == b"<entry/>" + b"<entry>x</entry>"[::-1]
    conn.request("POST", "/chunked", body=iter([b"ab", b"cd"]),
                 headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert conn.getresponse().read() == b"<entry/>dcba"
    conn.close()
    method, target, headers, body = seen[0]
    assert (method, target, body) == ("PUT", "/q1?api-version=2021-05", b"<entry>x</entry>")
    assert headers["content-type"] == "application/atom+xml" and headers["x-two"] == "a"
    assert seen[1][:2] == ("POST", "/chunked") and seen[1][3] == b"abcd"

    for conn in (http.client.HTTPSConnection("localhost", emulator.tls_port,
                                             context=_tls_context(emulator), timeout=5),
                 http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)):
        conn.request("DELETE", "/q2", headers={"Connection": "close"})
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Connection")) == (201, "close")
        conn.close()
    assert [s[:2] for s in seen[2:]] == [("DELETE", "/q2")] * 2


def test_given_certificate(servicebus_emulator_factory: Any, tmp_path: Any) -> None:
    ca, cert, key = development_pair()
    emulator: Emulator = servicebus_emulator_factory(tls_cert=cert, tls_key=key, tls_port=0)
    assert emulator.ca_file == cert  # a given chain is what clients trust
    with socket.create_connection(("127.0.0.1", emulator.tls_port), timeout=5) as raw:
        context = ssl.create_default_context(cafile=ca)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):  # start() checks a given certificate
        servicebus_emulator_factory(tls_cert=str(not_pem))
    with pytest.raises(ValueError, match="no such certificate"):
        Emulator(tls_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="needs"):
        Emulator(tls_key=key)


def _byte_by_byte(door: FrontDoor, data: bytes) -> None:
    for i in range(len(data)):
        door.feed(data[i:i + 1])


def test_sasl_split_anywhere_and_pipelined() -> None:
    """A client may pipeline its SASL header, sasl-init and AMQP header in one write, or the
    network may split them anywhere: the AMQP part reaches proton intact either way."""
    amqp = b"AMQP\x00\x01\x00\x00" + b"\x00\x00\x00\x08\x02\x00\x00\x00"  # + a heartbeat
    stream = SASL_HEADER + _sasl_init("MSSBCBS") + amqp
    for feed in (lambda d, b: d.feed(b), _byte_by_byte):
        door = FrontDoor(lambda: pytest.fail("no TLS here"), False, lambda: not_found)
        feed(door, stream)
        assert door.amqp and bytes(door.amqp_in) == amqp
        assert bytes(door.out).startswith(SASL_HEADER)
        door.amqp_in.clear()
        door.out.clear()
        assert door.direct


def test_http_requests_split_anywhere() -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    conn = HttpConnection(lambda: _handler(seen))
    requests = (b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nxy\r\n1;ext=1\r\nz\r\n0\r\nTrailer: t\r\n\r\n"
                b"GET /c HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
    out = b"".join(conn.feed(requests[i:i + 1]) for i in range(len(requests)))
    assert [(m, t, b) for m, t, _, b in seen] == [("PUT", "/a", b"abc"), ("POST", "/b", b"xyz"),
                                                  ("GET", "/c", b"")]
    assert out.count(b"HTTP/1.1 201 Created") == 3
    assert out.count(b"HTTP/1.1 100 Continue") == 1
    assert not conn.closing
    assert b"400 Bad Request" in HttpConnection(lambda: not_found).feed(b"\x00garbage")
