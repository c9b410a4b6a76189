"""The load's configuration and its planning (pure): kinds, hard caps, `LoadgenConfig`, the
mix and the ramp, which agent behaves how.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from heartbeat.agent.targets import parse_target
from heartbeat.errors import ConfigError

__all__ = [
    "BEATING_KINDS",
    "HOSTILE_KINDS",
    "KINDS",
    "MAX_AGENTS",
    "MAX_DURATION",
    "MAX_PROCESSES",
    "LoadgenConfig",
    "assign_kinds",
    "is_loopback_target",
    "parse_mix",
    "parse_rate",
]

KINDS = (
    "healthy",
    "lagging",
    "forked",
    "flapping",
    "garbage",
    "oversize",
    "slowdrip",
    "silent",
    "flood",
    "hog",
)
HOSTILE_KINDS = frozenset({"garbage", "oversize", "slowdrip", "silent", "flood", "hog"})
#: Behaviours whose every beat must be counted by the aggregator.
BEATING_KINDS = frozenset({"healthy", "lagging", "forked", "flapping"})

# Hard caps: a load generator must never become an accident.
MAX_AGENTS = 20_000
MAX_PROCESSES = 16
MAX_AGENTS_PER_PROCESS = 5_000
MAX_DURATION = 3_600.0
MAX_RAMP = 2_000.0
MAX_FLOOD_RATE = 2_000.0
MAX_HOG_CONNECTIONS = 16
MAX_HOG_STREAMS = 64
MAX_BEATS_PER_FRAME = 100
MAX_BEATS_PER_WRITE = 256
MAX_RECOVERIES_KEPT = 64  # per agent

#: The simulated network: its own genesis CID, Filecoin's 30 s epochs.
SIM_GENESIS_CID = "bafy2bzacealoadgenloadgenloadgenloadgenloadgenloadgenloadgen"
SIM_GENESIS_TS = 1_598_306_400
STAMP_PREFIX = "lg t="

STOP_GRACE = 3.0  # beyond close_grace, before a worker cancels everything


@dataclass(frozen=True)
class LoadgenConfig:
    target: str
    agents: int = 10
    processes: int = 1
    beat_period: float = 1.0
    ramp: float = 50.0  # new agents per second, all processes together
    duration: float = 60.0
    mix: tuple[tuple[str, int], ...] = (("healthy", 100),)
    storm_at: float | None = None
    reconnect_period: float = 5.0
    jitter: float = 0.2
    flap_period: float = 20.0
    flap_down: float = 2.0
    lag: int = 10
    flood_rate: float = 200.0
    hog_connections: int = 3
    hog_streams: int = 8
    drip_interval: float = 1.0
    beats_per_frame: int = 1
    beats_per_write: int = 1  # Yamux frames packed in one Noise message and one send
    dialer: str = "light"
    stamp: bool = False
    key_seed: str | None = None
    dial_timeout: float = 10.0
    write_timeout: float = 10.0
    close_grace: float = 2.0
    epoch: float = 30.0
    allow_remote: bool = False
    nickname_prefix: str = "lg"

    def validate(self) -> LoadgenConfig:
        def bad(setting: str, message: str) -> ConfigError:
            return ConfigError(setting, message)

        try:
            parse_target(self.target)
        except ConfigError as exc:
            raise bad("--target", str(exc)) from exc
        if not self.allow_remote and not is_loopback_target(self.target):
            raise bad("--target", "not a loopback address (pass --allow-remote to allow)")
        if not 1 <= self.agents <= MAX_AGENTS:
            raise bad("--agents", f"must be within 1..{MAX_AGENTS}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise bad("--processes", f"must be within 1..{MAX_PROCESSES}")
        if math.ceil(self.agents / self.processes) > MAX_AGENTS_PER_PROCESS:
            raise bad("--processes", f"at most {MAX_AGENTS_PER_PROCESS} agents per process")
        if not 0 < self.duration <= MAX_DURATION:
            raise bad("--duration", f"must be within (0, {MAX_DURATION:g}s]")
        if not 0 < self.ramp <= MAX_RAMP:
            raise bad("--ramp", f"must be within (0, {MAX_RAMP:g}/s]")
        if not 0.001 <= self.beat_period <= 3600:
            raise bad("--beat-period", "must be within [1ms, 1h]")
        if not 0 < self.flood_rate <= MAX_FLOOD_RATE:
            raise bad("--flood-rate", f"must be within (0, {MAX_FLOOD_RATE:g}/s]")
        if not 1 <= self.hog_connections <= MAX_HOG_CONNECTIONS:
            raise bad("--hog-connections", f"must be within 1..{MAX_HOG_CONNECTIONS}")
        if not 1 <= self.hog_streams <= MAX_HOG_STREAMS:
            raise bad("--hog-streams", f"must be within 1..{MAX_HOG_STREAMS}")
        if not 1 <= self.beats_per_frame <= MAX_BEATS_PER_FRAME:
            raise bad("--beats-per-frame", f"must be within 1..{MAX_BEATS_PER_FRAME}")
        if not 1 <= self.beats_per_write <= MAX_BEATS_PER_WRITE:
            raise bad("--beats-per-write", f"must be within 1..{MAX_BEATS_PER_WRITE}")
        if self.dialer not in ("light", "host"):
            raise bad("--dialer", "must be light or host")
        if self.storm_at is not None and not 0 < self.storm_at < self.duration:
            raise bad("--storm-at", "must fall inside the run")
        if not 0 <= self.jitter < 1:
            raise bad("--jitter", "must be within [0, 1)")
        for name in (
            "reconnect_period",
            "flap_period",
            "flap_down",
            "drip_interval",
            "dial_timeout",
            "write_timeout",
            "epoch",
        ):
            if getattr(self, name) <= 0:
                raise bad("--" + name.replace("_", "-"), "must be positive")
        if self.lag < 0:
            raise bad("--lag", "must be >= 0")
        if not self.mix or sum(w for _, w in self.mix) <= 0:
            raise bad("--mix", "needs a positive weight")
        return self


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``"healthy=90,lagging=5"`` → ``(("healthy", 90), ("lagging", 5))``; ConfigError if bad."""
    out: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = name.strip().lower()
        if name not in KINDS:
            raise ConfigError("--mix", f"unknown behaviour {name!r} (one of {', '.join(KINDS)})")
        try:
            value = int(weight) if sep else 1
        except ValueError as exc:
            raise ConfigError("--mix", f"bad weight {weight!r} for {name}") from exc
        if value < 0:
            raise ConfigError("--mix", f"negative weight for {name}")
        out[name] = out.get(name, 0) + value
    if sum(out.values()) <= 0:
        raise ConfigError("--mix", "needs a positive weight")
    return tuple((k, v) for k, v in out.items() if v > 0)


def parse_rate(text: str) -> float:
    """``"50/s"``, ``"50"``, ``"3000/m"`` → per second."""
    number, _, unit = text.strip().partition("/")
    scale = {"": 1.0, "s": 1.0, "m": 1 / 60, "h": 1 / 3600}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError as exc:
        raise ConfigError("--ramp", f"bad rate {text!r}") from exc
    if scale is None or not math.isfinite(value) or value <= 0:
        raise ConfigError("--ramp", f"bad rate {text!r} (e.g. 50/s)")
    return value * scale


def is_loopback_target(addr: str) -> bool:
    """True for `/ip4/127.…`, `/ip6/::1` and `/dns*/localhost` multiaddrs."""
    import ipaddress

    parts = addr.strip("/").split("/")
    if len(parts) < 2:
        return False
    proto, host = parts[0], parts[1]
    if proto in ("ip4", "ip6"):
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return proto in ("dns", "dns4", "dns6") and host == "localhost"


def assign_kinds(n: int, mix: Sequence[tuple[str, int]]) -> list[str]:
    """Behaviour of agents 0..n-1: counts by largest remainder, interleaved evenly.

    Deterministic, and every weighted kind gets at least its exact share (rounded), so a
    ramp, or a split across processes, mixes behaviours from the start.
    """
    total = sum(w for _, w in mix)
    shares = [(kind, n * w / total) for kind, w in mix]
    counts = {kind: int(share) for kind, share in shares}
    left = n - sum(counts.values())
    for kind, _share in sorted(shares, key=lambda ks: (-(ks[1] - int(ks[1])), ks[0]))[:left]:
        counts[kind] += 1
    # Interleave: agent i takes the kind whose quota is furthest behind its ideal pace.
    placed = Counter[str]()
    out: list[str] = []
    for i in range(n):
        kind = max(
            (k for k in counts if placed[k] < counts[k]),
            key=lambda k: (counts[k] * (i + 1) / n - placed[k], -KINDS.index(k)),
        )
        placed[kind] += 1
        out.append(kind)
    return out
