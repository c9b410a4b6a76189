"""The beat and what refuses one: `Beat`, the protocol ids, `RejectReason` and the errors.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from heartbeat.errors import HeartbeatError

__all__ = [
    "MAX_DEPTH",
    "MAX_HEAD_SEEN_AT",
    "MAX_HEAD_TIMESTAMP",
    "MAX_HEIGHT",
    "MAX_NETWORK_NAME_LENGTH",
    "MAX_NICKNAME_LENGTH",
    "MAX_SOURCE_ERROR_LENGTH",
    "MAX_VERSION_LENGTH",
    "NICKNAME_PUNCTUATION",
    "PROTOCOL_ALIASES",
    "PROTOCOL_ID",
    "Beat",
    "BeatDecodeError",
    "BeatError",
    "BeatRejected",
    "RejectReason",
    "SourceState",
    "trusted_beat",
    "validate_nickname",
]

PROTOCOL_ID = "fil/heartbeat/1.0.0"
PROTOCOL_ALIASES = ("/fil/heartbeat/1.0.0",)  # listener only

MAX_DEPTH = 4  # nested containers in one beat, the beat's own map included
MAX_HEIGHT = 2**63 - 1
MAX_HEAD_TIMESTAMP = 2**40 - 1  # unix seconds; year 36812
MAX_NICKNAME_LENGTH = 64
MAX_VERSION_LENGTH = 64
MAX_SOURCE_ERROR_LENGTH = 200  # characters of SourceError
MAX_NETWORK_NAME_LENGTH = 64  # characters of StateNetworkName
MAX_HEAD_SEEN_AT = 2**43 - 1  # unix milliseconds; year 2248
# Nicknames: letters and digits (any script), space and these; no control characters.
NICKNAME_PUNCTUATION = frozenset(" -_.:@+#/()")


class RejectReason(StrEnum):
    """Why a beat or a stream was refused. Values are Prometheus label values (bounded)."""

    # framing: raised as BeatDecodeError, the stream must be reset
    MALFORMED_CBOR = "malformed_cbor"
    MALFORMED_JSON = "malformed_json"
    OVERSIZE = "oversize"
    BUFFER_OVERFLOW = "buffer_overflow"
    INDEFINITE_LENGTH = "indefinite_length"
    TAG = "tag"
    TOO_DEEP = "too_deep"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    TRUNCATED = "truncated"  # the stream ended inside a beat
    # content: returned as BeatRejected, the stream stays in sync
    NOT_A_MAP = "not_a_map"
    DUPLICATE_KEY = "duplicate_key"
    BAD_UTF8 = "bad_utf8"
    MISSING_KEY = "missing_key"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_HEAD = "bad_head"
    BAD_ADDRESS = "bad_address"
    BAD_NICKNAME = "bad_nickname"
    BAD_VERSION = "bad_version"
    BAD_GENESIS = "bad_genesis"


class SourceState(StrEnum):
    """What the agent's head source (its Lotus node) is doing; the wire value of SourceState.

    ``ok``: answering with a head; ``unreachable``: no answer (refused, timeout, 5xx);
    ``unauthorized``: 401/403 (the token or its permission); ``syncing``: answering but still
    catching up; ``no_head``: answering without a usable head yet.
    """

    OK = "ok"
    UNREACHABLE = "unreachable"
    UNAUTHORIZED = "unauthorized"
    SYNCING = "syncing"
    NO_HEAD = "no_head"


class BeatError(HeartbeatError):
    """A beat or a beat stream was refused; ``reason`` is the metric label."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class BeatDecodeError(BeatError):
    """The stream is not a well-framed beat stream: reset it.

    ``decoded`` holds what the failing `BeatDecoder.feed` call had decoded before the fault.
    """

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.decoded: list[Beat | BeatRejected] = []


class BeatRejected(BeatError):
    """A well-framed beat with invalid content; returned as a value, not raised."""


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat. Built by `BeatDecoder` only from validated input."""

    head: str  # tipset key text as sent (Lotus "{a,b}" or legacy "{ a b }")
    height: int  # 0 <= height < 2**63
    nickname: str
    miner_address: str  # normalised; "" means no miner
    genesis_cid: str | None = None
    head_timestamp: int | None = None
    syncing: bool | None = None
    version: str | None = None
    source_state: SourceState | None = None  # SourceState; None from older agents
    source_error: str | None = None  # SourceError: short, printable, <= 200 characters
    head_seen_at: int | None = None  # HeadSeenAt: unix ms when the agent learned this head
    network_name: str | None = None  # StateNetworkName: what the node reports, e.g. "mainnet"

    @property
    def source_down(self) -> bool:
        """The agent says its source gives no usable head (any state but ok and syncing)."""
        return self.source_state is not None and self.source_state not in (
            SourceState.OK,
            SourceState.SYNCING,
        )


class _BeatSlots:
    """`Beat`'s slots, filled by plain attribute stores: the frozen dataclass's ``__init__``
    calls ``object.__setattr__`` once per field (~1.2 µs for 12); this is ~0.5 µs. The object
    then takes the class `Beat` (CPython allows it: same slots, same layout) and is a `Beat`
    in every way (equal, hashed, frozen, pickled, ``dataclasses.replace``). Never exported."""

    __slots__ = Beat.__slots__

    def __init__(  # one parameter per field of Beat, in its order
        self,
        head: str,
        height: int,
        nickname: str,
        miner_address: str,
        genesis_cid: str | None,
        head_timestamp: int | None,
        syncing: bool | None,
        version: str | None,
        source_state: SourceState | None,
        source_error: str | None,
        head_seen_at: int | None,
        network_name: str | None,
    ) -> None:
        self.head = head
        self.height = height
        self.nickname = nickname
        self.miner_address = miner_address
        self.genesis_cid = genesis_cid
        self.head_timestamp = head_timestamp
        self.syncing = syncing
        self.version = version
        self.source_state = source_state
        self.source_error = source_error
        self.head_seen_at = head_seen_at
        self.network_name = network_name
        self.__class__ = Beat  # type: ignore[assignment]


#: ``trusted_beat(head, height, ..., network_name)``: a `Beat` of values the caller has
#: already validated, every field given, in `Beat`'s field order (`codec.to_beat` only).
trusted_beat: Callable[..., Beat] = _BeatSlots  # type: ignore[assignment]


def validate_nickname(text: str) -> bool:
    """True for a nickname this project accepts (also used by the agent's config)."""
    return len(text) <= MAX_NICKNAME_LENGTH and all(
        ch.isalnum() or ch in NICKNAME_PUNCTUATION for ch in text
    )
