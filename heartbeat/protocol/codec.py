"""The two encodings of a beat and the validation of a decoded object into a `Beat`.

CBOR (this project's format) and go-filecoin's legacy JSON lines share one validation,
`to_beat`: exact keys, types and ranges, anything else a `BeatRejected` value. Pure.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any

import cbor2

from heartbeat.protocol.address import AddressError, normalize_miner_address
from heartbeat.protocol.beat import (
    MAX_HEAD_SEEN_AT,
    MAX_HEAD_TIMESTAMP,
    MAX_HEIGHT,
    MAX_NETWORK_NAME_LENGTH,
    MAX_SOURCE_ERROR_LENGTH,
    MAX_VERSION_LENGTH,
    Beat,
    BeatDecodeError,
    BeatRejected,
    RejectReason,
    SourceState,
    trusted_beat,
    validate_nickname,
)
from heartbeat.protocol.tipset import HeadParseError, is_plausible_cid, parse_head

__all__ = [
    "JSON_DECODER",
    "JSONDuplicateKey",
    "cbor_item_beat",
    "encode_cbor",
    "encode_json",
    "forget_known",
    "json_line_beat",
    "reject",
    "to_beat",
]


def _wire_map(beat: Beat) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Head": beat.head,
        "Height": beat.height,
        "Nickname": beat.nickname,
        "MinerAddress": beat.miner_address,
    }
    if beat.genesis_cid is not None:
        out["GenesisCID"] = beat.genesis_cid
    if beat.head_timestamp is not None:
        out["HeadTimestamp"] = beat.head_timestamp
    if beat.syncing is not None:
        out["Syncing"] = beat.syncing
    if beat.version is not None:
        out["Version"] = beat.version
    if beat.source_state is not None:
        out["SourceState"] = beat.source_state.value
    if beat.source_error is not None:
        out["SourceError"] = beat.source_error
    if beat.head_seen_at is not None:
        out["HeadSeenAt"] = beat.head_seen_at
    if beat.network_name is not None:
        out["StateNetworkName"] = beat.network_name
    return out


def encode_cbor(beat: Beat) -> bytes:
    """One beat as a definite-length CBOR map; optional keys are omitted when None."""
    return cbor2.dumps(_wire_map(beat))


def encode_json(beat: Beat) -> bytes:
    """One beat as go-filecoin's legacy JSON line (GenesisCID as ``{"/": cid}``), with newline."""
    wire = _wire_map(beat)
    if beat.genesis_cid is not None:
        wire["GenesisCID"] = {"/": beat.genesis_cid}
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


_MISSING = object()

# A fleet sends the same nicknames, miner addresses and genesis CIDs beat after beat: their
# checks are pure, so their answers are kept (bounded LRU; an AddressError is not kept, so a
# bad address costs the full parse every time, as before).
_CACHED = 16384
_nickname_ok = lru_cache(maxsize=_CACHED)(validate_nickname)
_normalized_miner = lru_cache(maxsize=_CACHED)(normalize_miner_address)
_plausible_genesis = lru_cache(maxsize=256)(is_plausible_cid)


def reject(reason: RejectReason, detail: str) -> BeatRejected:
    return BeatRejected(reason, detail)


def to_beat(obj: object, legacy: bool) -> Beat | BeatRejected:
    """A decoded object as a `Beat`, or the `BeatRejected` naming the first thing wrong.

    The common beat (its head, nickname, miner address and genesis already seen in an
    accepted beat) is validated in one pass (`_known_beat`); anything else, and so every
    refusal, takes the full check (`_checked_beat`), which remembers what it accepted.
    """
    if type(obj) is not dict:
        return reject(RejectReason.NOT_A_MAP, "beat is not a map")
    known = _known_beat(obj)
    if known is not None:
        return known
    beat = _checked_beat(obj, legacy)
    if type(beat) is Beat:
        _remember(beat, obj.get("MinerAddress"))
    return beat


# What an accepted beat carried, bounded (emptied when full): a fleet sends the same heads
# (every node of a network), nicknames, miner addresses and genesis CIDs beat after beat.
# Their checks are pure, so a value once accepted needs no second check. Only the full
# check adds to them, and only the values of a beat it accepted whole.
_KNOWN_LIMIT = 4096
_known_heads: dict[str, None] = {}
_known_nicknames: dict[str, None] = {}
_known_miners: dict[str, str] = {}  # as sent -> normalised
_known_genesis: dict[str, None] = {}


def _remember(beat: Beat, miner: object) -> None:
    for known, key in (
        (_known_heads, beat.head),
        (_known_nicknames, beat.nickname),
        (_known_genesis, beat.genesis_cid),
    ):
        if key is not None and key not in known:
            if len(known) >= _KNOWN_LIMIT:
                known.clear()
            known[key] = None
    if type(miner) is str and miner not in _known_miners:
        if len(_known_miners) >= _KNOWN_LIMIT:
            _known_miners.clear()
        _known_miners[miner] = beat.miner_address


def forget_known() -> None:
    """Empty the memory of accepted values (tests, benchmarks: the cold case)."""
    for known in (_known_heads, _known_nicknames, _known_miners, _known_genesis):
        known.clear()


def _known_beat(obj: dict[Any, Any]) -> Beat | None:
    """The beat when every key is valid and its texts are known; None: take the full check.

    The same tests as `_checked_beat` (exact types, ranges, lengths, printable text), with
    the known values standing for the head, nickname, miner and genesis checks.
    """
    get = obj.get
    head = get("Head")
    height = get("Height")
    nickname = get("Nickname")
    miner = get("MinerAddress")
    if (
        type(head) is not str
        or head not in _known_heads
        or type(height) is not int
        or not 0 <= height <= MAX_HEIGHT
        or type(nickname) is not str
        or nickname not in _known_nicknames
        or type(miner) is not str
    ):
        return None
    miner = _known_miners.get(miner)
    if miner is None:
        return None
    genesis = get("GenesisCID")
    if genesis is not None and (type(genesis) is not str or genesis not in _known_genesis):
        return None
    timestamp = get("HeadTimestamp")
    if timestamp is not None and (
        type(timestamp) is not int or not 0 <= timestamp <= MAX_HEAD_TIMESTAMP
    ):
        return None
    syncing = get("Syncing")
    if syncing is not None and type(syncing) is not bool:
        return None
    version = get("Version")
    if version is not None and (
        type(version) is not str or len(version) > MAX_VERSION_LENGTH or not version.isprintable()
    ):
        return None
    state = get("SourceState")
    if state is not None:
        if type(state) is not str:
            return None
        state = _SOURCE_STATES.get(state)
        if state is None:
            return None
    error = get("SourceError")
    if error is not None and (
        type(error) is not str or len(error) > MAX_SOURCE_ERROR_LENGTH or not error.isprintable()
    ):
        return None
    seen = get("HeadSeenAt")
    if seen is not None and (type(seen) is not int or not 0 <= seen <= MAX_HEAD_SEEN_AT):
        return None
    network = get("StateNetworkName")
    if network is not None and (
        type(network) is not str
        or len(network) > MAX_NETWORK_NAME_LENGTH
        or not network.isprintable()
    ):
        return None
    return trusted_beat(
        head,
        height,
        nickname,
        miner,
        genesis,
        timestamp,
        syncing,
        version,
        state,
        error,
        seen,
        network,
    )


def _checked_beat(obj: dict[Any, Any], legacy: bool) -> Beat | BeatRejected:
    """The full check of a map: each key in turn, the first thing wrong refused."""
    get = obj.get
    required = _required_keys(get)
    if isinstance(required, BeatRejected):
        return required
    optional = _optional_keys(get, legacy)
    if isinstance(optional, BeatRejected):
        return optional
    health = _source_keys(get)
    if isinstance(health, BeatRejected):
        return health
    return Beat(*required, *optional, *health)


#: The required keys and their exact types (``type(x) is int``: a bool is not an int here).
_REQUIRED = (("Head", str), ("Height", int), ("Nickname", str), ("MinerAddress", str))
_Required = tuple[str, int, str, str]
_Optional = tuple[str | None, int | None, bool | None, str | None]


def _required_keys(get: Any) -> _Required | BeatRejected:
    values = [get(key, _MISSING) for key, _ in _REQUIRED]
    for (key, kind), value in zip(_REQUIRED, values, strict=True):
        if value is _MISSING:
            return reject(RejectReason.MISSING_KEY, f"key={key}")
        if type(value) is not kind:
            return reject(RejectReason.WRONG_TYPE, f"key={key}")
    head, height, nickname, miner = values
    if not 0 <= height <= MAX_HEIGHT:
        return reject(RejectReason.OUT_OF_RANGE, "key=Height")
    try:
        parse_head(head)
    except HeadParseError as exc:
        return reject(RejectReason.BAD_HEAD, str(exc))
    if not _nickname_ok(nickname):
        return reject(RejectReason.BAD_NICKNAME, "key=Nickname")
    try:
        miner = _normalized_miner(miner)
    except AddressError as exc:
        return reject(RejectReason.BAD_ADDRESS, str(exc))
    return head, height, nickname, miner


def _typed(get: Any, key: str, kind: type) -> Any:
    """The optional `key`: None when absent (or null), its value when of type `kind`,
    a WRONG_TYPE rejection otherwise."""
    value = get(key)
    if value is None or type(value) is kind:
        return value
    return reject(RejectReason.WRONG_TYPE, f"key={key}")


def _genesis(get: Any, legacy: bool) -> str | BeatRejected | None:
    genesis = get("GenesisCID")
    if legacy and type(genesis) is dict:  # go-filecoin's {"/": cid}
        if len(genesis) != 1 or "/" not in genesis:
            return reject(RejectReason.WRONG_TYPE, "key=GenesisCID")
        genesis = genesis["/"]
    if genesis is None:
        return None
    if type(genesis) is not str:
        return reject(RejectReason.WRONG_TYPE, "key=GenesisCID")
    if not _plausible_genesis(genesis):
        return reject(RejectReason.BAD_GENESIS, "key=GenesisCID")
    return genesis


def _optional_keys(get: Any, legacy: bool) -> _Optional | BeatRejected:
    genesis = _genesis(get, legacy)
    timestamp = _typed(get, "HeadTimestamp", int)
    syncing = _typed(get, "Syncing", bool)
    version = _typed(get, "Version", str)
    for value in (genesis, timestamp, syncing, version):
        if isinstance(value, BeatRejected):
            return value
    if timestamp is not None and not 0 <= timestamp <= MAX_HEAD_TIMESTAMP:
        return reject(RejectReason.OUT_OF_RANGE, "key=HeadTimestamp")
    if version is not None and (len(version) > MAX_VERSION_LENGTH or not version.isprintable()):
        return reject(RejectReason.BAD_VERSION, "key=Version")
    return genesis, timestamp, syncing, version  # type: ignore[return-value]


_SOURCE_STATES = {state.value: state for state in SourceState}
_Health = tuple[SourceState | None, str | None, int | None, str | None]


def _bounded_text(get: Any, key: str, limit: int) -> str | BeatRejected | None:
    value = _typed(get, key, str)
    if isinstance(value, str) and (len(value) > limit or not value.isprintable()):
        return reject(RejectReason.OUT_OF_RANGE, f"key={key}")
    return value  # type: ignore[no-any-return]


def _source_keys(get: Any) -> _Health | BeatRejected:
    """The agent-health keys (all optional): SourceState, SourceError, HeadSeenAt,
    StateNetworkName. An unknown SourceState is refused: the set is part of the protocol."""
    raw_state = _typed(get, "SourceState", str)
    error = _bounded_text(get, "SourceError", MAX_SOURCE_ERROR_LENGTH)
    seen = _typed(get, "HeadSeenAt", int)
    network = _bounded_text(get, "StateNetworkName", MAX_NETWORK_NAME_LENGTH)
    for value in (raw_state, error, seen, network):
        if isinstance(value, BeatRejected):
            return value
    state = None if raw_state is None else _SOURCE_STATES.get(raw_state)
    if raw_state is not None and state is None:
        return reject(RejectReason.OUT_OF_RANGE, "key=SourceState")
    if seen is not None and not 0 <= seen <= MAX_HEAD_SEEN_AT:
        return reject(RejectReason.OUT_OF_RANGE, "key=HeadSeenAt")
    return state, error, seen, network  # type: ignore[return-value]


class _JSONConstant(ValueError):
    pass


class JSONDuplicateKey(ValueError):
    pass


def _json_constant(name: str) -> None:
    raise _JSONConstant(name)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise JSONDuplicateKey
    return out


JSON_DECODER = json.JSONDecoder(object_pairs_hook=_json_pairs, parse_constant=_json_constant)


def json_line_beat(line: bytes) -> Beat | BeatRejected:
    """One legacy JSON line (no newline) as a `Beat` or a `BeatRejected`; a line that is
    not JSON, or nested too deep, raises `BeatDecodeError` (`BeatDecoder` resets the stream)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return reject(RejectReason.BAD_UTF8, "json line")
    try:
        obj = JSON_DECODER.decode(text)
    except JSONDuplicateKey:
        return reject(RejectReason.DUPLICATE_KEY, "json object")
    except RecursionError as exc:
        raise BeatDecodeError(RejectReason.TOO_DEEP, "json nesting") from exc
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge integers
        raise BeatDecodeError(RejectReason.MALFORMED_JSON, type(exc).__name__) from exc
    return to_beat(obj, legacy=True)


def cbor_item_beat(frame: bytes) -> Beat | BeatRejected:
    """Exactly one CBOR item, framed by the scanner, as a `Beat` or a `BeatRejected`; what
    cbor2 refuses, or an item that is not all of ``frame``, raises `BeatDecodeError`."""
    stream = io.BytesIO(frame)
    try:
        obj = cbor2.CBORDecoder(stream, allow_indefinite=False).decode()
    except cbor2.CBORDecodeError as exc:  # the scanner let through what cbor2 refuses
        raise BeatDecodeError(RejectReason.MALFORMED_CBOR, "cbor2 refused item") from exc
    if stream.tell() != len(frame):
        raise BeatDecodeError(RejectReason.MALFORMED_CBOR, "item length mismatch")
    return to_beat(obj, legacy=False)
