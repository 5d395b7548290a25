"""shard.wsread: client frames cut incrementally from bytes, and every refusal with its close code."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shard.codes import Close
from shard.wsread import FrameReader, PeerClose, Ping, Pong, Reject, Text, unmask
from tests.wsframes import client_frame as frame


def messages(reader: FrameReader) -> list:
    out = []
    while (msg := reader.next()) is not None:
        out.append(msg)
    return out


def test_a_frame_fed_byte_by_byte_completes_only_at_its_last_byte():
    """Nothing comes out of a partial frame; the whole message comes out once, at its last byte."""
    data = frame(0x1, b'{"op":"ping"}')
    reader = FrameReader(1024)
    seen = []
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        seen.append(reader.next())
    assert seen[:-1] == [None] * (len(data) - 1)
    assert seen[-1] == Text('{"op":"ping"}')
    assert reader.next() is None and not reader.buf


def test_several_frames_in_one_read_come_out_in_order():
    """A read holding a text, a ping, a pong and the start of another text yields the three whole ones."""
    reader = FrameReader(1024)
    rest = frame(0x1, b"later")
    reader.feed(frame(0x1, b"a") + frame(0x9, b"hi") + frame(0xA, b"") + rest[:3])
    assert messages(reader) == [Text("a"), Ping(b"hi"), Pong()]
    reader.feed(rest[3:])
    assert messages(reader) == [Text("later")]


def test_extended_lengths_16_and_64_bit():
    """Payloads of 126..65535 bytes (16-bit length) and over (64-bit length) are read whole."""
    mid, big = "m" * 300, "b" * 70_000
    reader = FrameReader(100_000)
    reader.feed(frame(0x1, mid.encode()) + frame(0x1, big.encode()))
    assert messages(reader) == [Text(mid), Text(big)]


def test_close_frames_carry_their_code_or_1000():
    """A close frame's first two bytes are its code; without them it counts as 1000 (normal)."""
    with_code = FrameReader(1024)
    with_code.feed(frame(0x8, (4321).to_bytes(2, "big") + b"bye"))
    bare = FrameReader(1024)
    bare.feed(frame(0x8, b""))
    assert (with_code.next(), bare.next()) == (PeerClose(4321), PeerClose(Close.NORMAL))


P, U = Close.PROTOCOL_ERROR, Close.UNSUPPORTED_DATA
REFUSALS = {
    "not UTF-8": (frame(0x1, b'{"x":"\xff"}'), Reject(Close.INVALID_PAYLOAD, "text frame is not UTF-8")),
    "reserved bit": (frame(0x1, b"{}", rsv=0x40), Reject(P, "reserved bits set")),
    "unmasked": (frame(0x1, b"{}", masked=False), Reject(P, "unmasked client frame")),
    "unmasked, odd length": (frame(0x1, b"{ }", masked=False), Reject(P, "unmasked client frame")),
    "unknown data opcode": (frame(0x3, b"{}"), Reject(P, "unknown opcode 3")),
    "unknown control opcode": (frame(0xB, b""), Reject(P, "unknown opcode 11")),
    "fragmented ping": (frame(0x9, b"hi", fin=False), Reject(P, "fragmented control frame")),
    "fragmented close": (frame(0x8, b"\x03\xe8", fin=False), Reject(P, "fragmented control frame")),
    "ping over 125 bytes": (frame(0x9, b"p" * 126), Reject(P, "control frame over 125 bytes")),
    "close over 125 bytes": (frame(0x8, b"c" * 126), Reject(P, "control frame over 125 bytes")),
    "fragmented text": (frame(0x1, b"{}", fin=False), Reject(U, "fragmented messages not supported")),
    "continuation first": (frame(0x0, b"{}"), Reject(U, "fragmented messages not supported")),
    "binary": (frame(0x2, b"\x00\x01"), Reject(U, "binary frames not supported")),
    "over the frame limit": (frame(0x1, b"x" * 1025), Reject(Close.MESSAGE_TOO_BIG, "frame over 1024 bytes")),
}


def test_each_violation_is_refused_with_its_close_code_and_reason_and_ends_the_reader():
    """Every refused frame gives one Reject (its close code and reason); after it the reader yields
    nothing more and holds no bytes."""
    got = {}
    for name, (data, _) in REFUSALS.items():
        reader = FrameReader(1024)
        reader.feed(data + frame(0x1, b"after"))
        got[name] = messages(reader)
        reader.feed(frame(0x1, b"more"))
        assert reader.next() is None and reader.done and reader.buf == bytearray()
    assert got == {name: [reject] for name, (_, reject) in REFUSALS.items()}


def test_limits_are_inclusive_a_frame_at_the_limit_and_a_125_byte_ping_pass():
    """A text frame of exactly max_frame_bytes and control frames of exactly 125 bytes are accepted."""
    reader = FrameReader(1024)
    reader.feed(frame(0x1, b"x" * 1024) + frame(0x9, b"p" * 125) + frame(0x8, b"\x0f\xa1" + b"c" * 123))
    assert messages(reader) == [Text("x" * 1024), Ping(b"p" * 125), PeerClose(4001)]


def test_a_two_byte_frame_is_judged_on_its_two_bytes():
    """An unmasked empty pong (2 bytes, all of its header) is refused without waiting for more."""
    reader = FrameReader(1024)
    reader.feed(frame(0xA, b"", masked=False))
    assert reader.next() == Reject(Close.PROTOCOL_ERROR, "unmasked client frame")


def test_a_close_code_of_exactly_two_bytes_is_read():
    """A close frame whose payload is just the 2-byte code (no reason) carries that code."""
    reader = FrameReader(1024)
    reader.feed(frame(0x8, (1001).to_bytes(2, "big")))
    assert reader.next() == PeerClose(1001)


def test_an_oversized_frame_is_refused_from_its_header_alone():
    """Only the header of a frame over the limit is needed to refuse it: its payload is never buffered."""
    reader = FrameReader(1024)
    reader.feed(frame(0x1, b"x" * 5000)[:4])  # opcode, 126, 16-bit length
    assert reader.next() == Reject(Close.MESSAGE_TOO_BIG, "frame over 1024 bytes")
    assert reader.buf == bytearray()


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_the_per_byte_xor_and_its_own_inverse(payload, key):
    """The one-integer unmask equals RFC 6455's byte-by-byte XOR, and applying it twice restores the input."""
    expected = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    assert unmask(payload, key) == expected
    assert unmask(unmask(payload, key), key) == payload


texts = st.lists(st.text(max_size=200), min_size=1, max_size=8)


@given(texts, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
       st.binary(min_size=4, max_size=4))
def test_any_split_of_the_stream_gives_the_same_messages(docs, cuts, key):
    """However the bytes are cut into reads, the messages that come out are the ones sent, in order."""
    stream = b"".join(frame(0x1, d.encode(), key=key) for d in docs)
    reader = FrameReader(1 << 16)
    out, pos, i = [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        reader.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
        out += messages(reader)
    assert out == [Text(d) for d in docs]
