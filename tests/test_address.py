"""Filecoin addresses: real vectors, generated ones, and the ways text can be wrong."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat.errors import HeartbeatError
from heartbeat.protocol.address import (
    Address,
    AddressError,
    checksum,
    is_no_miner,
    normalize_miner_address,
    parse_address,
)

# Published vectors (go-address test suite, Filecoin docs); the checksum makes them unforgeable.
REAL = [
    ("t15ihq5ibzwki2b4ep2f46avlkrqzhpqgtga7pdrq", 1),
    ("t12fiakbhe2gwd5cnmrenekasyn6v5tnaxaqizq6a", 1),
    ("t1wbxhu3ypkuo6eyp6hjx6davuelxaxrvwb2kuwva", 1),
    ("t17uoq6tp427uzv7fztkbsnn64iwotfrristwpryy", 1),
    ("f1abjxfbp274xpdqcpuaykwkfb43omjotacm2p3za", 1),
    ("t24vg6ut43yw2h2jqydgbg2xq7x6f4kub3bg6as6i", 2),
    ("t25nml2cfbljvn4goqtclhifepvfnicv6g7mfmmvq", 2),
    ("t2nuqrg7vuysaue2pistjjnt3fadsdzvyuatqtfei", 2),
    (
        "t3vvmn62lofvhjd2ugzca6sof2j2ubwok6cj4xxbfzz4yuxfkgobpihhd2thlanmsh3w2ptld2gqkn2jvlss4a",
        3,
    ),
    ("f410fkkld55ioe7qg24wvt7fu6pbknb56ht7pt4zamxa", 4),
    ("f01234", 0),
    ("t01000", 0),
    ("f00", 0),
    ("t09223372036854775807", 0),
]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _make(network: str, protocol: int, payload: bytes) -> str:
    check = hashlib.blake2b(bytes([protocol]) + payload, digest_size=4).digest()
    return f"{network}{protocol}{_b32(payload + check)}"


@pytest.mark.parametrize(("text", "protocol"), REAL)
def test_real_addresses(text: str, protocol: int) -> None:
    address = parse_address(text)
    assert address.protocol == protocol
    assert address.network == text[0]
    assert str(address) == text
    assert normalize_miner_address(text) == text


def test_id_address_fields() -> None:
    address = parse_address("f01234")
    assert address == Address("f", 0, bytes([0xD2, 0x09]), id=1234)
    assert address.to_bytes() == b"\x00\xd2\x09"


def test_delegated_address_fields() -> None:
    address = parse_address("f410fkkld55ioe7qg24wvt7fu6pbknb56ht7pt4zamxa")
    assert address.namespace == 10
    assert len(address.subaddress) == 20
    assert address.payload == b"\x0a" + address.subaddress


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("f00123", "f0123"), ("t00000", "t00"), ("f0000001234", "f01234")],
)
def test_id_leading_zeros_normalise(text: str, canonical: str) -> None:
    assert normalize_miner_address(text) == canonical


@pytest.mark.parametrize("text", ["", "<empty>", "empty", "[UNDEFINED_ADDRESS]"])
def test_no_miner_variants(text: str) -> None:
    assert is_no_miner(text)
    assert normalize_miner_address(text) == ""


@given(
    st.sampled_from("ft"),
    st.sampled_from([(1, 20), (2, 20), (3, 48)]),
    st.data(),
)
def test_generated_addresses_round_trip(
    network: str, kind: tuple[int, int], data: st.DataObject
) -> None:
    protocol, size = kind
    payload = data.draw(st.binary(min_size=size, max_size=size))
    text = _make(network, protocol, payload)
    address = parse_address(text)
    assert (address.protocol, address.payload, str(address)) == (protocol, payload, text)
    assert address.to_bytes() == bytes([protocol]) + payload


@given(st.integers(min_value=0, max_value=2**63 - 1), st.binary(min_size=1, max_size=54))
def test_generated_delegated_round_trip(namespace: int, sub: bytes) -> None:
    ns = bytearray()
    value = namespace
    while True:
        ns.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            break
    check = checksum(4, bytes(ns) + sub)
    text = f"t4{namespace}f{_b32(sub + check)}"
    address = parse_address(text)
    assert (address.namespace, address.subaddress, str(address)) == (namespace, sub, text)


GOOD_F1 = "f1abjxfbp274xpdqcpuaykwkfb43omjotacm2p3za"


def _flip_last(text: str) -> str:
    return text[:-1] + ("a" if text[-1] != "a" else "b")


@pytest.mark.parametrize(
    "text",
    [
        "x01234",
        "F01234",
        "f51234",
        "f0",
        "f0-1",
        "f0+1",
        "f01a",
        "f0１２",  # full-width digits are digits to str.isdigit
        "f09223372036854775808",  # 2**63
        "f",
        "f1",
        GOOD_F1.upper(),
        GOOD_F1[0] + GOOD_F1[1] + GOOD_F1[2:].upper(),
        _flip_last(GOOD_F1),  # checksum (or trailing bits) broken
        GOOD_F1[:-1],  # truncated
        GOOD_F1 + "a",  # too long
        GOOD_F1 + "=",
        "t2" + GOOD_F1[2:],  # right checksum for protocol 1 only
        _make("f", 1, bytes(19)),
        _make("f", 3, bytes(20)),
        _make("f", 2, bytes(21)),
        "f410",
        "f4f" + GOOD_F1[2:],
        "f4xf" + GOOD_F1[2:],
        "f410f" + _b32(bytes(55) + checksum(4, b"\x0a" + bytes(55))),
        "f1" + "a" * 200,
    ],
)
def test_invalid_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        normalize_miner_address(text)


def test_non_canonical_trailing_bits_refused() -> None:
    # 24 bytes -> 39 base32 chars, the last of which carries 3 unused bits
    canonical = _make("f", 1, bytes(range(20)))
    last = canonical[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    sibling = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 2 == 0 else None
    assert sibling is not None and sibling != last  # the canonical char has a zero low bit
    with pytest.raises(AddressError, match="non-canonical"):
        parse_address(canonical[:-1] + sibling)


def test_address_error_is_a_heartbeat_error() -> None:
    assert issubclass(AddressError, HeartbeatError)
