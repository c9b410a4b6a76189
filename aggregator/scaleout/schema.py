"""The stream's subjects, message ids and versioned CBOR payloads (pure: no I/O, no clock).

docs/STREAM.md is the reader's copy of this module: subjects, keys, an example, guarantees.

- Beats: subject `fil.heartbeat.<network>.beat.<peer_id>`, payload
  `{"v": 1, "origin", "peer_id", "at", "beat": {wire keys as in docs/PROTOCOL.md}}`,
  Nats-Msg-Id `<origin>:<peer_id>:<at_ms>`.
- Events: subject `fil.heartbeat.<network>.event.<kind>` (kind: transition, alert_firing,
  alert_resolved), payload `{"v": 1, "origin", "kind", "at", ...fields}`, Nats-Msg-Id
  `<kind>:<fingerprint>:<at_ms>` for alerts, `transition:<peer_id>:<state>:<last beat ms>` for
  node transitions (the same on every aggregator).

A beat's embedded map is the agent's own CBOR encoding (`encode_cbor`), spliced in as is:
readers decode it with the protocol's validation, and the export costs one encode per beat.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from aggregator.errors import AggregatorError
from heartbeat.protocol.beat import Beat, BeatRejected
from heartbeat.protocol.codec import encode_cbor, to_beat

__all__ = [
    "EVENT_KINDS",
    "MAX_PAYLOAD",
    "SCHEMA_VERSION",
    "SUBJECT_PREFIX",
    "BeatEncoder",
    "StreamBeat",
    "StreamDecodeError",
    "StreamEvent",
    "at_ms",
    "beat_msg_id",
    "beat_subject",
    "decode",
    "encode_beat",
    "encode_event",
    "event_msg_id",
    "event_subject",
    "subject_token",
    "to_json",
    "transition_msg_id",
]

SCHEMA_VERSION = 1
SUBJECT_PREFIX = "fil.heartbeat"
EVENT_KINDS = ("transition", "alert_firing", "alert_resolved")
#: Bigger payloads are refused by `decode` (a beat is well under 2 KiB).
MAX_PAYLOAD = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_RESERVED = ("v", "origin", "kind", "at")


class StreamDecodeError(AggregatorError):
    """A stream payload that is not a valid message of a known schema version."""


@dataclass(frozen=True, slots=True)
class StreamBeat:
    origin: str
    peer_id: str
    at: float
    beat: Beat
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class StreamEvent:
    origin: str
    kind: str
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION


def subject_token(text: str | None) -> str:
    """`text` as one subject token: characters other than letters, digits, `_`, `-` become `_`."""
    if not text:
        return "unknown"
    return _UNSAFE.sub("_", text)


def beat_subject(network: str | None, peer_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{subject_token(network)}.beat.{subject_token(peer_id)}"


def event_subject(network: str | None, kind: str) -> str:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return f"{SUBJECT_PREFIX}.{subject_token(network)}.event.{kind}"


def _ms(at: float) -> int:
    return math.floor(at * 1000 + 0.5)


def beat_msg_id(origin: str, peer_id: str, at: float, repeat: int = 0) -> str:
    """`<origin>:<peer_id>:<at_ms>`; the n-th further beat of a peer within the same
    millisecond gets `.<n>` appended (the exporter counts them)."""
    base = f"{origin}:{peer_id}:{_ms(at)}"
    return f"{base}.{repeat}" if repeat else base


def at_ms(at: float) -> int:
    return _ms(at)


def event_msg_id(kind: str, key: str, at: float) -> str:
    return f"{kind}:{key}:{_ms(at)}"


def transition_msg_id(peer_id: str, state: str, basis: float) -> str:
    """`transition:<peer_id>:<state>:<basis_ms>`, `basis` being the node's last beat's `at`
    when the state changed: every aggregator of the merged fleet computes the same id for
    the same change (the beat's `at` travels in the stream), so the server stores it once."""
    return f"transition:{peer_id}:{state}:{_ms(basis)}"


def _head(n: int) -> bytes:
    """A CBOR definite-length map header for `n` pairs (n < 24)."""
    return bytes([0xA0 | n])


# The beat payload's fixed keys, pre-encoded: the payload is spliced from them.
_K_V, _K_ORIGIN, _K_PEER, _K_AT, _K_BEAT = (
    cbor2.dumps(k) for k in ("v", "origin", "peer_id", "at", "beat")
)


def encode_beat(origin: str, peer_id: str, at: float, beat: Beat) -> bytes:
    """A beat payload: the fixed keys, then the agent's own CBOR map under "beat"."""
    return b"".join(
        (
            _head(5),
            _K_V,
            cbor2.dumps(SCHEMA_VERSION),
            _K_ORIGIN,
            cbor2.dumps(origin),
            _K_PEER,
            cbor2.dumps(peer_id),
            _K_AT,
            cbor2.dumps(float(at)),
            _K_BEAT,
            encode_cbor(beat),
        )
    )


_F64 = struct.Struct(">Bd")
#: Peers whose encoded id and subject a `BeatEncoder` keeps (cleared beyond).
ENCODER_PEERS = 100_000


class BeatEncoder:
    """`encode_beat` and `beat_subject` for one origin, the constant parts encoded once and
    each peer's id and subject kept: the export's per-beat cost (same bytes)."""

    __slots__ = ("_peers", "_prefix")

    def __init__(self, origin: str) -> None:
        self._prefix = b"".join(
            (_head(5), _K_V, cbor2.dumps(SCHEMA_VERSION), _K_ORIGIN, cbor2.dumps(origin), _K_PEER)
        )
        #: peer id -> (its genesis CID, its beat subject, its encoded id and the "at" key)
        self._peers: dict[str, tuple[str | None, str, bytes]] = {}

    def subject_and_payload(
        self, network: Callable[[str | None], str], peer_id: str, at: float, beat: Beat
    ) -> tuple[str, bytes]:
        """The beat's subject (`network` maps its genesis CID to the network key) and its
        payload."""
        entry = self._peers.get(peer_id)
        genesis = beat.genesis_cid
        if entry is None or entry[0] != genesis:
            if len(self._peers) >= ENCODER_PEERS:
                self._peers.clear()
            entry = self._peers[peer_id] = (
                genesis,
                beat_subject(network(genesis), peer_id),
                cbor2.dumps(peer_id) + _K_AT,
            )
        return entry[1], b"".join(
            (self._prefix, entry[2], _F64.pack(0xFB, at), _K_BEAT, encode_cbor(beat))
        )


def encode_event(origin: str, kind: str, at: float, fields: Mapping[str, Any]) -> bytes:
    """An event payload: `{"v", "origin", "kind", "at"}` and the event's own fields."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    clash = [k for k in fields if k in _RESERVED]
    if clash:
        raise ValueError(f"event fields may not use the reserved keys {clash}")
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "origin": origin, "kind": kind, "at": float(at)}
    body.update(fields)
    return cbor2.dumps(body)


def _loads(data: bytes) -> Any:
    if len(data) > MAX_PAYLOAD:
        raise StreamDecodeError(f"payload of {len(data)} bytes (limit {MAX_PAYLOAD})")
    buf = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(buf).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise StreamDecodeError(f"not CBOR: {exc}") from exc
    if buf.tell() != len(data):
        raise StreamDecodeError(f"{len(data) - buf.tell()} bytes after the payload")
    return obj


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if type(value) is not str or not value:
        raise StreamDecodeError(f"{key!r} missing or not a string")
    return value


def _at(obj: Mapping[str, Any]) -> float:
    value = obj.get("at")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StreamDecodeError("'at' missing or not a unix time")
    at = float(value)
    if not math.isfinite(at) or at < 0:
        raise StreamDecodeError("'at' missing or not a unix time")
    return at


def decode(data: bytes) -> StreamBeat | StreamEvent:
    """A payload as a `StreamBeat` (it has "beat") or `StreamEvent` (it has "kind")."""
    obj = _loads(data)
    if type(obj) is not dict:
        raise StreamDecodeError("payload is not a map")
    if obj.get("v") != SCHEMA_VERSION or type(obj.get("v")) is not int:
        raise StreamDecodeError(f"unknown schema version {obj.get('v')!r}")
    origin = _text(obj, "origin")
    at = _at(obj)
    if "beat" in obj:
        beat = to_beat(obj["beat"], legacy=False)
        if isinstance(beat, BeatRejected):
            raise StreamDecodeError(f"embedded beat rejected: {beat}")
        return StreamBeat(origin, _text(obj, "peer_id"), at, beat)
    kind = _text(obj, "kind")
    if kind not in EVENT_KINDS:
        raise StreamDecodeError(f"unknown event kind {kind!r}")
    rest = {k: v for k, v in obj.items() if k not in _RESERVED}
    return StreamEvent(origin, kind, at, rest)


def to_json(decoded: StreamBeat | StreamEvent) -> dict[str, Any]:
    """A decoded message as plain JSON-able data (what `tail` prints)."""
    if isinstance(decoded, StreamBeat):
        beat = cbor2.loads(encode_cbor(decoded.beat))
        return {
            "v": decoded.v,
            "type": "beat",
            "origin": decoded.origin,
            "peer_id": decoded.peer_id,
            "at": decoded.at,
            "beat": beat,
        }
    return {
        "v": decoded.v,
        "type": "event",
        "origin": decoded.origin,
        "kind": decoded.kind,
        "at": decoded.at,
        **{k: _jsonable(v) for k, v in decoded.fields.items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
