"""The emulator writes every field of a performative, as Service Bus does (pure byte logic)."""

from __future__ import annotations

from azure.servicebus._pyamqp._decode import decode_frame

from sbsync.emulator._frames import FullFrames, pad_frame


def _frame(code: int, items: bytes, count: int, payload: bytes = b"") -> bytes:
    body = b"\x00\x53" + bytes((code,)) + bytes((0xC0, len(items) + 1, count)) + items + payload
    return (8 + len(body)).to_bytes(4, "big") + b"\x02\x00\x00\x00" + body


# BEGIN as proton writes it: remote-channel 0, next-outgoing-id 1, incoming-window 2048,
# outgoing-window 2048, handle-max 65535 -- and no offered/desired capabilities or properties.
BEGIN = _frame(0x11, b"\x60\x00\x00" + b"\x52\x01" + b"\x70\x00\x00\x08\x00" * 2 + b"\x70\x00\x00\xff\xff", 5)


def test_a_short_begin_gets_its_trailing_nulls():
    padded = pad_frame(BEGIN)
    assert int.from_bytes(padded[:4], "big") == len(padded)
    code, fields = decode_frame(memoryview(padded)[8:])
    assert code == 0x11 and len(fields) == 8
    assert fields[:5] == [0, 1, 2048, 2048, 65535] and fields[5:] == [None, None, None]


def test_full_lists_heartbeats_and_transfer_payloads_are_kept():
    full = pad_frame(BEGIN)
    assert pad_frame(full) == full
    assert pad_frame(b"\x00\x00\x00\x08\x02\x00\x00\x00") == b"\x00\x00\x00\x08\x02\x00\x00\x00"
    transfer = _frame(0x14, b"\x43", 1, payload=b"\x00\x53\x75\xa0\x01x")  # handle 0, then a data section
    padded = pad_frame(transfer)
    assert padded.endswith(b"\x00\x53\x75\xa0\x01x") and len(padded) == len(transfer) + 10


def test_output_split_mid_frame_comes_out_whole():
    class Engine:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def pending(self) -> int:
            return len(self.chunks[0]) if self.chunks else -1

        def peek(self, size: int) -> bytes:
            return self.chunks[0][:size]

        def pop(self, size: int) -> None:
            self.chunks.pop(0)

    header = b"AMQP\x00\x01\x00\x00"
    out = FullFrames(Engine([header + BEGIN[:7], BEGIN[7:] + BEGIN]))
    sent = b""
    while (pending := out.pending()) > 0:
        sent += out.peek(pending)
        out.pop(pending)
    assert pending == -1
    assert sent == header + pad_frame(BEGIN) * 2
