"""What the NATS bridge works with, without NATS: its settings (from the aggregator's
configuration, secrets read from their files), `StreamMsg`, `NatsUnavailable`, the stream's
constants, subject matching and the publish ack's reading. `aggregator/scaleout/bridge.py`
(the only importer of nats) re-exports the public names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aggregator.config import AggregatorConfig, setting_label
from aggregator.errors import AggregatorError
from heartbeat.errors import ConfigError

__all__ = [
    "ACK_WAIT",
    "CONNECT_TIMEOUT",
    "DUPLICATE_WINDOW",
    "EPHEMERAL_IDLE",
    "REQUEST_TIMEOUT",
    "STREAM_SUBJECTS",
    "NatsCompatError",
    "NatsSettings",
    "NatsUnavailable",
    "StreamMsg",
    "pub_ack",
    "settings_from_config",
    "subject_matcher",
]

#: Every subject the stream holds (beats and events of every network).
STREAM_SUBJECTS = "fil.heartbeat.>"
#: The server drops a re-published Nats-Msg-Id seen within this window (seconds).
DUPLICATE_WINDOW = 120.0
#: A delivered message not acknowledged within this time is delivered again (seconds).
ACK_WAIT = 5.0
#: An ephemeral consumer left idle this long is removed by the server (seconds).
EPHEMERAL_IDLE = 30.0
CONNECT_TIMEOUT = 2
REQUEST_TIMEOUT = 2.0


class NatsUnavailable(AggregatorError):
    """NATS refused or could not serve a request (down, no quorum, timeout, bad credentials)."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"nats {operation}: {reason}")
        self.operation = operation
        self.reason = reason


class NatsCompatError(AggregatorError):
    """The installed nats-py is not the one the bridge's raw delivery was written for:
    `what` names the distribution or the file (aggregator/scaleout/bridge.py)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message} (refusing to open the NATS bridge)")
        self.what = what


@dataclass(frozen=True)
class NatsSettings:
    """Where NATS is and how the stream and the lease bucket look (built from the config)."""

    urls: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: Path | None = None
    nkey_file: Path | None = None
    tls_ca: Path | None = None
    stream: str = "FIL_HEARTBEAT"
    replicas: int = 3
    max_age: float = 7 * 86400
    max_bytes: int = 1 << 30
    kv_bucket: str = "fil_heartbeat_leader"
    lease_ttl: float = 10.0


@dataclass(frozen=True)
class StreamMsg:
    """One message read from the stream: `timestamp` is the server's store time (unix s)."""

    subject: str
    data: bytes
    msg_id: str | None
    seq: int
    timestamp: float
    #: how many times the server has delivered it to this consumer (> 1: a redelivery)
    delivered: int = 1


def _secret(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(setting_label(key), f"{path}: {exc}") from exc
    if not text:
        raise ConfigError(setting_label(key), f"{path} is empty")
    return text


def settings_from_config(config: AggregatorConfig) -> NatsSettings:
    """The bridge's settings from the aggregator's (reads the password and token files)."""
    if not config.nats_url:
        raise ConfigError(setting_label("nats_url"), "no NATS URL given")
    for key in ("nats_creds", "nats_nkey", "nats_tls_ca"):
        path = getattr(config, key)
        if path is not None and not path.is_file():
            raise ConfigError(setting_label(key), f"{path}: no such file")
    return NatsSettings(
        urls=tuple(config.nats_url),
        user=config.nats_user,
        password=_secret(config.nats_password_file, "nats_password_file"),
        token=_secret(config.nats_token_file, "nats_token_file"),
        creds_file=config.nats_creds,
        nkey_file=config.nats_nkey,
        tls_ca=config.nats_tls_ca,
        stream=config.nats_stream,
        replicas=config.nats_replicas,
        max_age=config.nats_max_age,
        max_bytes=config.nats_max_bytes,
        lease_ttl=config.nats_lease_ttl,
    )


def subject_matcher(subjects: list[str]) -> Callable[[str], bool]:
    """NATS subject matching (`*` one token, `>` the rest) for the client-side filter."""
    patterns = [p.split(".") for p in subjects] or [[">"]]

    def match(subject: str) -> bool:
        tokens = subject.split(".")
        for pattern in patterns:
            for i, part in enumerate(pattern):
                if part == ">":
                    if len(tokens) > i:
                        return True
                    break
                if i >= len(tokens) or (part != "*" and part != tokens[i]):
                    break
            else:
                if len(tokens) == len(pattern):
                    return True
        return False

    return match


#: A publish ack as nats-server 2.9–2.10 writes it, stored or a duplicate.
_PUB_ACK = re.compile(rb'\{"stream": ?"[^"\\]*", ?"seq": ?\d+(, ?"duplicate": ?true)?\}')


def pub_ack(body: bytes | None) -> bool | None:
    """A JetStream publish ack's body: True stored, False duplicate, None not stored."""
    if not body:
        return None
    compact = _PUB_ACK.fullmatch(body)
    if compact is not None:
        # what nats-server writes (`{"stream":"S", "seq":N}`, `…,"duplicate": true}`): no
        # JSON parse per ack (anything else is parsed below)
        return compact.group(1) is None
    try:
        ack = json.loads(body)
    except ValueError:
        return None
    if not isinstance(ack, dict) or "error" in ack or "seq" not in ack:
        return None
    return not ack.get("duplicate", False)
