"""The stored entry format: round trips byte for byte; anything else is refused, never misread."""

import struct
import zlib

import pytest

from proxy.entry import FLAG_GZIP, Entry, accepts_gzip, decode_entry, encode_entry
from proxy.errors import EntryDecodeError
from proxy.usage import Usage


def sample(body: bytes = b'{"ok": true}', content_type: str = "application/json") -> Entry:
    return Entry(
        status=200,
        headers=(("Content-Type", content_type), ("openai-model", "m")),
        body=body,
        stored_at=1_700_000_000.25,
        fresh_for=7200,
        stale_for=60,
    )


def test_round_trip() -> None:
    entry = sample()
    assert decode_entry(encode_entry(entry)) == entry


def test_usage_travels_with_the_entry() -> None:
    entry = Entry(200, (), b"{}", 0.0, 60, usage=Usage("gpt-4o-mini", 12, 30))
    assert decode_entry(encode_entry(entry)).usage == Usage("gpt-4o-mini", 12, 30)


def test_binary_bodies_survive() -> None:
    png = bytes(range(256)) * 300
    entry = sample(png, "image/png")
    encoded = encode_entry(entry)
    assert decode_entry(encoded).body == png
    assert encoded[4] & FLAG_GZIP == 0  # images are not compressed again


def test_compressible_bodies_are_gzipped_when_it_pays() -> None:
    body = b'{"text": "' + b"the story of the painting " * 200 + b'"}'
    encoded = encode_entry(sample(body))
    assert encoded[4] & FLAG_GZIP
    assert len(encoded) < len(body) / 3
    assert decode_entry(encoded).body == body


def test_small_bodies_stay_plain() -> None:
    assert encode_entry(sample(b"{}"))[4] & FLAG_GZIP == 0


def test_freshness_and_age() -> None:
    entry = sample()
    assert entry.is_fresh(entry.stored_at + 7199)
    assert not entry.is_fresh(entry.stored_at + 7200)
    assert entry.age(entry.stored_at + 42.9) == 42
    assert entry.ttl_left(entry.stored_at + 200) == 7000
    assert entry.store_ttl(entry.stored_at) == 7260
    assert entry.store_ttl(entry.stored_at + 7000) == 260
    assert entry.stale_within(60, entry.stored_at + 7230)
    assert not entry.stale_within(60, entry.stored_at + 7100)  # still fresh
    assert not entry.stale_within(20, entry.stored_at + 7230)  # past the asked window


@pytest.mark.parametrize(
    "mutate",
    [
        lambda data: data[:10],  # truncated header
        lambda data: b"XYZ" + data[3:],  # foreign magic
        lambda data: data[:3] + b"\x09" + data[4:],  # another format version
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # flipped body bit
        lambda data: data[:40] + b"\x00" + data[41:],  # damaged headers
        lambda data: b"",
        lambda data: b"plain string someone else stored",
    ],
)
def test_damaged_entries_raise_decode_errors(mutate: object) -> None:
    data = encode_entry(sample())
    with pytest.raises(EntryDecodeError):
        decode_entry(mutate(data))  # type: ignore[operator]


def test_checksum_covers_a_corrupt_gzip_payload() -> None:
    header = struct.Struct(">3sBBHdIIII")
    headers = b'{"h": []}'
    payload = b"not gzip"
    crc = zlib.crc32(payload, zlib.crc32(headers))
    data = header.pack(b"APX", 1, FLAG_GZIP, 200, 0.0, 10, 0, len(headers), crc) + headers + payload
    with pytest.raises(EntryDecodeError, match="decompress"):
        decode_entry(data)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("*", True),
        ("*, gzip;q=0", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_a_gzip_client_gets_the_stored_bytes_and_others_the_identity_body() -> None:
    body = b'{"text": "' + b"the story of the painting " * 200 + b'"}'
    encoded = encode_entry(sample(body))
    stored = decode_entry(encoded, accept_gzip=True)
    assert stored.encoding == "gzip"
    assert zlib.decompress(stored.body, 31) == body
    assert decode_entry(encoded).body == body
