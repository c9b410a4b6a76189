"""The two encodings of a beat and the validation of a decoded object into a `Beat`.

CBOR (this project's format) and go-filecoin's legacy JSON lines share one validation,
`to_beat`: exact keys, types and ranges, anything else a `BeatRejected` value. Pure.
"""

from __future__ import annotations

import json
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
    BeatRejected,
    RejectReason,
    SourceState,
    validate_nickname,
)
from heartbeat.protocol.tipset import HeadParseError, is_plausible_cid, parse_head

__all__ = ["JSON_DECODER", "JSONDuplicateKey", "encode_cbor", "encode_json", "reject", "to_beat"]


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


def reject(reason: RejectReason, detail: str) -> BeatRejected:
    return BeatRejected(reason, detail)


def to_beat(obj: object, legacy: bool) -> Beat | BeatRejected:
    if type(obj) is not dict:
        return reject(RejectReason.NOT_A_MAP, "beat is not a map")
    get = obj.get
    head = get("Head", _MISSING)
    height = get("Height", _MISSING)
    nickname = get("Nickname", _MISSING)
    miner = get("MinerAddress", _MISSING)
    for key, value in (
        ("Head", head),
        ("Height", height),
        ("Nickname", nickname),
        ("MinerAddress", miner),
    ):
        if value is _MISSING:
            return reject(RejectReason.MISSING_KEY, f"key={key}")
    if type(head) is not str:
        return reject(RejectReason.WRONG_TYPE, "key=Head")
    if type(height) is not int:  # bool is not int here
        return reject(RejectReason.WRONG_TYPE, "key=Height")
    if type(nickname) is not str:
        return reject(RejectReason.WRONG_TYPE, "key=Nickname")
    if type(miner) is not str:
        return reject(RejectReason.WRONG_TYPE, "key=MinerAddress")
    if not 0 <= height <= MAX_HEIGHT:
        return reject(RejectReason.OUT_OF_RANGE, "key=Height")
    try:
        parse_head(head)
    except HeadParseError as exc:
        return reject(RejectReason.BAD_HEAD, str(exc))
    if not validate_nickname(nickname):
        return reject(RejectReason.BAD_NICKNAME, "key=Nickname")
    try:
        miner = normalize_miner_address(miner)
    except AddressError as exc:
        return reject(RejectReason.BAD_ADDRESS, str(exc))

    genesis = get("GenesisCID")
    if legacy and type(genesis) is dict:
        if len(genesis) != 1 or "/" not in genesis:
            return reject(RejectReason.WRONG_TYPE, "key=GenesisCID")
        genesis = genesis["/"]
    if genesis is not None:
        if type(genesis) is not str:
            return reject(RejectReason.WRONG_TYPE, "key=GenesisCID")
        if not is_plausible_cid(genesis):
            return reject(RejectReason.BAD_GENESIS, "key=GenesisCID")
    timestamp = get("HeadTimestamp")
    if timestamp is not None:
        if type(timestamp) is not int:
            return reject(RejectReason.WRONG_TYPE, "key=HeadTimestamp")
        if not 0 <= timestamp <= MAX_HEAD_TIMESTAMP:
            return reject(RejectReason.OUT_OF_RANGE, "key=HeadTimestamp")
    syncing = get("Syncing")
    if syncing is not None and type(syncing) is not bool:
        return reject(RejectReason.WRONG_TYPE, "key=Syncing")
    version = get("Version")
    if version is not None:
        if type(version) is not str:
            return reject(RejectReason.WRONG_TYPE, "key=Version")
        if len(version) > MAX_VERSION_LENGTH or not version.isprintable():
            return reject(RejectReason.BAD_VERSION, "key=Version")
    health = _source_keys(get)
    if isinstance(health, BeatRejected):
        return health
    return Beat(head, height, nickname, miner, genesis, timestamp, syncing, version, *health)


_SOURCE_STATES = {state.value: state for state in SourceState}
_Health = tuple[SourceState | None, str | None, int | None, str | None]


def _bounded_text(value: object, key: str, limit: int) -> str | BeatRejected:
    if type(value) is not str:
        return reject(RejectReason.WRONG_TYPE, f"key={key}")
    if len(value) > limit or not value.isprintable():
        return reject(RejectReason.OUT_OF_RANGE, f"key={key}")
    return value


def _source_keys(get: Any) -> _Health | BeatRejected:
    """The agent-health keys (all optional): SourceState, SourceError, HeadSeenAt,
    StateNetworkName. An unknown SourceState is refused: the set is part of the protocol."""
    state: SourceState | None = None
    raw_state = get("SourceState")
    if raw_state is not None:
        if type(raw_state) is not str:
            return reject(RejectReason.WRONG_TYPE, "key=SourceState")
        found = _SOURCE_STATES.get(raw_state)
        if found is None:
            return reject(RejectReason.OUT_OF_RANGE, "key=SourceState")
        state = found
    error: str | None = None
    raw_error = get("SourceError")
    if raw_error is not None:
        checked = _bounded_text(raw_error, "SourceError", MAX_SOURCE_ERROR_LENGTH)
        if isinstance(checked, BeatRejected):
            return checked
        error = checked
    seen = get("HeadSeenAt")
    if seen is not None:
        if type(seen) is not int:
            return reject(RejectReason.WRONG_TYPE, "key=HeadSeenAt")
        if not 0 <= seen <= MAX_HEAD_SEEN_AT:
            return reject(RejectReason.OUT_OF_RANGE, "key=HeadSeenAt")
    network: str | None = None
    raw_network = get("StateNetworkName")
    if raw_network is not None:
        checked = _bounded_text(raw_network, "StateNetworkName", MAX_NETWORK_NAME_LENGTH)
        if isinstance(checked, BeatRejected):
            return checked
        network = checked
    return state, error, seen, network


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
