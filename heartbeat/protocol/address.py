"""Filecoin address validation and normalisation, written from the Filecoin spec.

Text form: network (``f`` mainnet, ``t`` test networks), protocol digit, then
- protocol 0 (ID): decimal actor id < 2**63, no checksum; leading zeros normalise away;
- protocols 1 (secp256k1, 20 bytes), 2 (actor, 20 bytes), 3 (BLS, 48 bytes): lowercase unpadded
  RFC 4648 base32 of payload || checksum;
- protocol 4 (delegated): ``f4<namespace>f`` + base32 of subaddress || checksum, where the
  namespace is an actor id and the subaddress at most 54 bytes.
The checksum is blake2b with a 4-byte digest over protocol byte || payload (for protocol 4 the
payload is leb128(namespace) || subaddress). Base32 that does not re-encode to the same text
(upper case, padding, stray trailing bits) is invalid.

``libp2p.filecoin`` is never used: it rejects real addresses. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from heartbeat.errors import HeartbeatError

__all__ = [
    "NO_MINER_VARIANTS",
    "Address",
    "AddressError",
    "checksum",
    "is_no_miner",
    "normalize_miner_address",
    "parse_address",
]

NO_MINER_VARIANTS = frozenset({"", "<empty>", "empty", "[UNDEFINED_ADDRESS]"})

_MAX_ID = 2**63 - 1
_MAX_TEXT = 128  # the longest real form (f3) is 86 chars; f4 at most ~120
_MAX_SUBADDRESS = 54
_PAYLOAD_SIZES = {1: 20, 2: 20, 3: 48}
_CHECKSUM_SIZE = 4
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


class AddressError(HeartbeatError):
    """The text is not a valid Filecoin address."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address. ``payload`` is the spec's payload (ID: leb128 of the id)."""

    network: str  # "f" or "t"
    protocol: int  # 0..4
    payload: bytes
    id: int | None = None  # protocol 0: the actor id
    namespace: int | None = None  # protocol 4: the namespace actor id

    @property
    def subaddress(self) -> bytes:
        """Protocol 4: the payload after the namespace; otherwise the payload."""
        if self.protocol == 4:
            return self.payload[len(_leb128(self.namespace or 0)) :]
        return self.payload

    def to_bytes(self) -> bytes:
        """The binary form: protocol byte || payload."""
        return bytes([self.protocol]) + self.payload

    def __str__(self) -> str:
        prefix = f"{self.network}{self.protocol}"
        if self.protocol == 0:
            return f"{prefix}{self.id}"
        text = _b32encode(self.subaddress + checksum(self.protocol, self.payload))
        if self.protocol == 4:
            return f"{prefix}{self.namespace}f{text}"
        return prefix + text


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def checksum(protocol: int, payload: bytes) -> bytes:
    """The 4-byte address checksum: blake2b-32 over protocol byte || payload."""
    return hashlib.blake2b(bytes([protocol]) + payload, digest_size=_CHECKSUM_SIZE).digest()


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    """Strict lowercase unpadded base32; raises AddressError when not canonical."""
    if not text or not _B32_ALPHABET.issuperset(text):
        raise AddressError("bad base32 alphabet")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(padded)
    except binascii.Error as exc:
        raise AddressError("bad base32 length") from exc
    if _b32encode(raw) != text:
        raise AddressError("non-canonical base32")
    return raw


def _parse_decimal(text: str, what: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise AddressError(f"{what} must be decimal digits")
    value = int(text)
    if value > _MAX_ID:
        raise AddressError(f"{what} out of range")
    return value


def _split_checked(protocol: int, prefix_payload: bytes, text: str) -> bytes:
    raw = _b32decode(text)
    if len(raw) <= _CHECKSUM_SIZE:
        raise AddressError("payload missing")
    body, check = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
    if checksum(protocol, prefix_payload + body) != check:
        raise AddressError("bad checksum")
    return body


@lru_cache(maxsize=4096)  # a fleet reports the same few miner addresses over and over
def parse_address(text: str) -> Address:
    """Parse and validate an address; raises `AddressError`."""
    if len(text) > _MAX_TEXT:
        raise AddressError("address too long")
    if len(text) < 3 or text[0] not in "ft" or text[1] not in "01234":
        raise AddressError("address must start with f or t and a protocol digit 0-4")
    network, protocol, rest = text[0], int(text[1]), text[2:]
    if protocol == 0:
        actor_id = _parse_decimal(rest, "actor id")
        return Address(network, 0, _leb128(actor_id), id=actor_id)
    if protocol == 4:
        ns_text, sep, encoded = rest.partition("f")
        if not sep:
            raise AddressError("delegated address needs f between namespace and subaddress")
        namespace = _parse_decimal(ns_text, "namespace")
        ns_bytes = _leb128(namespace)
        sub = _split_checked(4, ns_bytes, encoded)
        if len(sub) > _MAX_SUBADDRESS:
            raise AddressError("subaddress too long")
        return Address(network, 4, ns_bytes + sub, namespace=namespace)
    body = _split_checked(protocol, b"", rest)
    if len(body) != _PAYLOAD_SIZES[protocol]:
        raise AddressError(f"payload must be {_PAYLOAD_SIZES[protocol]} bytes")
    return Address(network, protocol, body)


def is_no_miner(text: str) -> bool:
    """True for the spellings of "no miner" seen on the wire."""
    return text in NO_MINER_VARIANTS


def normalize_miner_address(text: str) -> str:
    """The canonical text of a miner address, or "" for any "no miner" spelling.

    Raises `AddressError` when the text is neither.
    """
    if text in NO_MINER_VARIANTS:
        return ""
    return str(parse_address(text))
