"""The heartbeat wire format, re-exported from its modules for existing importers.

`heartbeat.protocol.beat` holds the `Beat`, the protocol ids, `RejectReason` and the errors;
`heartbeat.protocol.codec` the encoders and the validation into a `Beat`;
`heartbeat.protocol.decoder` the bounded incremental `BeatDecoder`. Pure: no I/O, no clock.
"""

from __future__ import annotations

from heartbeat.protocol.beat import (
    MAX_DEPTH,
    MAX_HEAD_SEEN_AT,
    MAX_HEAD_TIMESTAMP,
    MAX_HEIGHT,
    MAX_NICKNAME_LENGTH,
    MAX_VERSION_LENGTH,
    NICKNAME_PUNCTUATION,
    PROTOCOL_ALIASES,
    PROTOCOL_ID,
    Beat,
    BeatDecodeError,
    BeatError,
    BeatRejected,
    RejectReason,
    SourceState,
    validate_nickname,
)
from heartbeat.protocol.codec import encode_cbor, encode_json
from heartbeat.protocol.decoder import BeatDecoder

__all__ = [
    "MAX_DEPTH",
    "MAX_HEAD_SEEN_AT",
    "MAX_HEAD_TIMESTAMP",
    "MAX_HEIGHT",
    "MAX_NICKNAME_LENGTH",
    "MAX_VERSION_LENGTH",
    "NICKNAME_PUNCTUATION",
    "PROTOCOL_ALIASES",
    "PROTOCOL_ID",
    "Beat",
    "BeatDecodeError",
    "BeatDecoder",
    "BeatError",
    "BeatRejected",
    "RejectReason",
    "SourceState",
    "encode_cbor",
    "encode_json",
    "validate_nickname",
]
