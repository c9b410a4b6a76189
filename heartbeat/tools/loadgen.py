"""Load generator: many simulated agents, each with its own identity, against one aggregator.

For capacity planning and resilience testing (docs/CAPACITY.md). Every simulated agent has its
own Ed25519 key (a distinct peer id) and its own Noise + Yamux connection. By default the
connection is a `p2p.light_connection` (~58 KB per agent); `--dialer host` runs a full py-libp2p
host per agent instead (~150 KB, and it runs identify like a real agent does).

Behaviours (`--mix kind=weight,…`):
- healthy: beats the simulated network's head every beat period;
- lagging: beats a head `--lag` epochs behind; forked: the right height, another head;
- flapping: healthy, but drops its connection every `--flap-period` and redials;
- garbage: writes bytes that are not CBOR; oversize: a beat larger than the aggregator allows;
- slowdrip: a valid beat, one byte per second; silent: opens a stream and sends nothing;
- flood: beats at `--flood-rate`, far above the per-peer limit;
- hog: several connections and streams from the same peer id.
`--storm-at T` makes every agent drop its connection and redial at once at T.

Agents are spread over `--processes` worker processes (each its own trio loop), started at
`--ramp` agents per second (all processes together), and stop by themselves after
`--duration`: a healthy agent half-closes and waits for the aggregator to close, so its last
beats are counted. Hard caps bound every count; non-loopback targets are refused unless
`--allow-remote`. The summary (per behaviour: connected, beats sent, failures by kind) is
printed as a table, or as JSON with `--json`.

`--stamp` puts the sender's CLOCK_MONOTONIC (ns) into each beat's Version (`lg t=<ns>`), so a
receiver on the same machine can measure beat latency (`parse_stamp`).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import math
import multiprocessing
import os
import queue
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import trio

from heartbeat.agent.targets import parse_target
from heartbeat.common.durations import parse_duration
from heartbeat.errors import ConfigError
from heartbeat.net import p2p
from heartbeat.protocol.wire import PROTOCOL_ID, Beat, encode_cbor

__all__ = [
    "HOSTILE_KINDS",
    "KINDS",
    "MAX_AGENTS",
    "MAX_DURATION",
    "MAX_PROCESSES",
    "AgentStats",
    "LoadgenConfig",
    "assign_kinds",
    "build_parser",
    "config_from_args",
    "format_table",
    "head_for",
    "is_loopback_target",
    "main",
    "merge_reports",
    "parse_mix",
    "parse_rate",
    "parse_stamp",
    "run_loadgen",
    "run_worker",
    "stamp_version",
]

log = logging.getLogger(__name__)

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
MAX_RECOVERIES_KEPT = 64  # per agent

#: The simulated network: its own genesis CID, Filecoin's 30 s epochs.
SIM_GENESIS_CID = "bafy2bzacealoadgenloadgenloadgenloadgenloadgenloadgenloadgen"
SIM_GENESIS_TS = 1_598_306_400
STAMP_PREFIX = "lg t="

_STOP_GRACE = 3.0  # beyond close_grace, before a worker cancels everything


# ------------------------------------------------------------------------------------------
# configuration (pure)


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


def _cid(tag: str, height: int) -> str:
    digest = hashlib.sha256(f"{tag}:{height}".encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    bits = int.from_bytes(digest, "big")
    return "bafy2bzace" + "".join(alphabet[(bits >> (5 * i)) & 31] for i in range(50))


def head_for(kind: str, unix_now: float, *, epoch: float = 30.0, lag: int = 10) -> Beat:
    """The beat a `kind` agent sends at `unix_now` on the simulated network (no Version)."""
    height = int((unix_now - SIM_GENESIS_TS) // epoch)
    tag = "main"
    if kind == "lagging":
        height -= lag
    elif kind == "forked":
        tag = "fork"
    return Beat(
        head="{" + _cid(tag, height) + "}",
        height=height,
        nickname="",
        miner_address="",
        genesis_cid=SIM_GENESIS_CID,
        head_timestamp=int(SIM_GENESIS_TS + height * epoch),
    )


def stamp_version(monotonic_ns: int) -> str:
    return f"{STAMP_PREFIX}{monotonic_ns}"


def parse_stamp(version: str | None) -> int | None:
    """The sender's CLOCK_MONOTONIC ns from a `--stamp`ed beat's Version, else None."""
    if not version or not version.startswith(STAMP_PREFIX):
        return None
    digits = version[len(STAMP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


# ------------------------------------------------------------------------------------------
# statistics (pure)


@dataclass
class AgentStats:
    """What one simulated agent did; merged per behaviour by `merge_reports`."""

    kind: str
    started: bool = False
    connected: bool = False  # at the end of the run (a beat written on a live session)
    ever_connected: bool = False
    dials: int = 0
    sessions: int = 0
    beats_sent: int = 0
    session_beats: int = 0  # beats written in the latest session
    streams_opened: int = 0
    cut_off: int = 0  # streams the aggregator closed or reset on us
    failures: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)  # loss → first beat again
    storm_recovery: float | None = None
    cut_after: list[float] = field(default_factory=list)  # stream open → cut off


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": _pct(values, 0.5),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else None,
    }


def summarize(stats: Sequence[AgentStats]) -> dict[str, Any]:
    """A worker's report: per-kind sums and the raw timing lists (JSON-friendly)."""
    kinds: dict[str, dict[str, Any]] = {}
    for s in stats:
        k = kinds.setdefault(
            s.kind,
            {
                "agents": 0,
                "started": 0,
                "connected": 0,
                "ever_connected": 0,
                "dials": 0,
                "sessions": 0,
                "beats_sent": 0,
                "session_beats": 0,
                "streams_opened": 0,
                "cut_off": 0,
                "failures": {},
                "recoveries": [],
                "storm_recoveries": [],
                "storm_missing": 0,
                "cut_after": [],
            },
        )
        k["agents"] += 1
        k["started"] += s.started
        k["connected"] += s.connected
        k["ever_connected"] += s.ever_connected
        for name in (
            "dials",
            "sessions",
            "beats_sent",
            "session_beats",
            "streams_opened",
            "cut_off",
        ):
            k[name] += getattr(s, name)
        for reason, n in s.failures.items():
            k["failures"][reason] = k["failures"].get(reason, 0) + n
        k["recoveries"].extend(s.recoveries)
        k["cut_after"].extend(s.cut_after[:8])
        if s.storm_recovery is not None:
            k["storm_recoveries"].append(s.storm_recovery)
    return {"kinds": kinds}


def merge_reports(reports: Sequence[dict[str, Any]], *, elapsed: float) -> dict[str, Any]:
    """One summary from the workers' reports: totals, and distributions instead of lists."""
    kinds: dict[str, dict[str, Any]] = {}
    workers = []
    for report in reports:
        workers.append({key: report.get(key) for key in ("worker", "agents", "rss_kb", "error")})
        for kind, k in report.get("kinds", {}).items():
            m = kinds.setdefault(kind, {})
            for key, value in k.items():
                if isinstance(value, int):
                    m[key] = m.get(key, 0) + value
                elif isinstance(value, list):
                    m.setdefault(key, []).extend(value)
                elif isinstance(value, dict):
                    d = m.setdefault(key, {})
                    for reason, n in value.items():
                        d[reason] = d.get(reason, 0) + n
    totals: dict[str, Any] = {"failures": {}}
    for kind in sorted(kinds, key=KINDS.index):
        m = kinds[kind]
        for key in ("recoveries", "storm_recoveries", "cut_after"):
            m[key] = _dist(m.get(key, []))
        for key, value in m.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        for reason, n in m.get("failures", {}).items():
            totals["failures"][reason] = totals["failures"].get(reason, 0) + n
    ordered = {kind: kinds[kind] for kind in sorted(kinds, key=KINDS.index)}
    return {"elapsed": round(elapsed, 3), "kinds": ordered, "totals": totals, "workers": workers}


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width table."""
    cols = ("agents", "started", "connected", "ever_connected", "dials", "beats_sent", "cut_off")
    heads = ("kind", "agents", "started", "conn", "ever", "dials", "beats", "cut_off", "failures")
    rows = [heads]
    for kind, k in [*summary["kinds"].items(), ("total", summary["totals"])]:
        failures = ",".join(f"{r}={n}" for r, n in sorted(k.get("failures", {}).items()))
        rows.append((kind, *(str(k.get(c, 0)) for c in cols), failures or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads) - 1)]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r[:-1], widths, strict=True))
        )
        + "  "
        + r[-1]
        for r in rows
    ]
    lines.append(f"elapsed {summary['elapsed']:.1f}s")
    for kind, k in summary["kinds"].items():
        for key in ("recoveries", "storm_recoveries"):
            d = k.get(key) or {}
            if d.get("count"):
                lines.append(
                    f"{kind} {key}: n={d['count']} p50={d['p50']:.2f}s p99={d['p99']:.2f}s "
                    f"max={d['max']:.2f}s"
                )
        if k.get("storm_missing"):
            lines.append(f"{kind} storm_missing: {k['storm_missing']} never beat again")
    for w in summary.get("workers", []):
        if w.get("error"):
            lines.append(f"worker {w['worker']} failed: {w['error']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the simulated agents (trio)


class _Cut(Exception):
    """The aggregator closed or reset our stream."""


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: nurseries wrap what they raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class _Session:
    """One connection of one identity: opens heartbeat streams."""

    def __init__(self, open_stream: Any) -> None:
        self.open_stream = open_stream


@asynccontextmanager
async def _connect(config: LoadgenConfig, key: p2p.KeyPair) -> AsyncIterator[_Session]:
    if config.dialer == "light":
        async with p2p.light_connection(key, config.target, timeout=config.dial_timeout) as conn:
            yield _Session(conn.open_stream)
        return
    async with p2p.running_host(key) as host:
        info = p2p.peer_info_from_multiaddr(config.target)
        with trio.fail_after(config.dial_timeout):
            await host.connect(info)

        async def open_stream(protocol: str, timeout: float = 10.0) -> Any:
            protocols: list[Any] = [protocol]  # libp2p's TProtocol is a str NewType
            with trio.fail_after(timeout):
                return await host.new_stream(info.peer_id, protocols)

        yield _Session(open_stream)


class _Watched:
    """A stream plus a task that notices when the aggregator closes or resets it."""

    def __init__(self, stream: Any, nursery: trio.Nursery, wake: trio.Event) -> None:
        self.stream = stream
        self.closed = trio.Event()
        self.opened_at = trio.current_time()
        self._wake = wake
        nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        try:
            while await self.stream.read(4096):
                pass  # the aggregator sends nothing; ignore whatever comes
        except p2p.StreamClosed:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            log.debug("watch_closed err=%r", exc)
        finally:
            self.closed.set()
            self._wake.set()


class _Worker:
    """All simulated agents of one process."""

    def __init__(
        self,
        config: LoadgenConfig,
        indices: Sequence[int],
        start_at: float,
        parent: int | None = None,
    ) -> None:
        self.config = config
        #: The pid of the process that spawned this one (None: not a spawned worker).
        self.parent = parent
        kinds = assign_kinds(config.agents, config.mix)
        self.agents = [_Sim(self, i, kinds[i]) for i in indices]
        self.start_at = start_at  # trio time of the run's start (agent 0)
        self.stop_at = start_at + config.duration
        self.stopping = False
        self.storm_time: float | None = None
        self.rand = random.Random(config.key_seed or None)
        self._version = "lg"

    def key(self, index: int) -> p2p.KeyPair:
        seed = self.config.key_seed
        if seed is None:
            return p2p.new_identity()
        return p2p.new_identity(hashlib.sha256(f"{seed}:{index}".encode()).digest())

    def payload(self, sim: _Sim) -> bytes:
        config = self.config
        beat = replace(
            head_for(sim.kind, time.time(), epoch=config.epoch, lag=config.lag),
            nickname=sim.nickname,
            miner_address=sim.miner,
            version=stamp_version(time.monotonic_ns()) if config.stamp else self._version,
        )
        return encode_cbor(beat) * config.beats_per_frame

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.parent is not None:
                nursery.start_soon(_exit_when_orphaned, self.parent)
            for sim in self.agents:
                nursery.start_soon(sim.run)
            if self.config.storm_at is not None:
                nursery.start_soon(self._storm, self.start_at + self.config.storm_at)
            await trio.sleep_until(self.stop_at)
            for sim in self.agents:
                sim.connected_at_end = sim.beating
            self.stopping = True
            for sim in self.agents:
                sim.stop()
            with trio.move_on_after(self.config.close_grace + _STOP_GRACE):
                while any(sim.running for sim in self.agents):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _storm(self, at: float) -> None:
        await trio.sleep_until(at)
        self.storm_time = trio.current_time()
        dropped = sum(sim.drop("storm") for sim in self.agents)
        log.info("storm dropped=%d", dropped)


class _Sim:
    """One simulated agent: dial, behave, redial, until the run stops."""

    def __init__(self, worker: _Worker, index: int, kind: str) -> None:
        self.worker = worker
        self.index = index
        self.kind = kind
        self.stats = AgentStats(kind)
        self.nickname = f"{worker.config.nickname_prefix}-{kind}-{index}"
        self.miner = f"f0{10_000 + index}"
        self.running = False
        self.beating = False
        self.connected_at_end = False
        self._scope: trio.CancelScope | None = None
        self._wake = trio.Event()
        self._dropped: str | None = None
        self._lost_at: float | None = None
        self._storm_pending = False
        self.key: p2p.KeyPair | None = None

    # -- control (synchronous: called by the worker) ------------------------------------

    def stop(self) -> None:
        self._wake.set()
        if not self.beating and self._scope is not None:
            self._scope.cancel()

    def drop(self, reason: str) -> bool:
        """Drop the connection now (a storm); the agent redials at once."""
        if self._scope is None:
            return False
        self._dropped = reason
        self._storm_pending = True
        self._scope.cancel()
        return True

    # -- the life of the agent -----------------------------------------------------------

    async def run(self) -> None:
        worker, config = self.worker, self.worker.config
        await trio.sleep_until(worker.start_at + self.index / config.ramp)
        if worker.stopping or trio.current_time() >= worker.stop_at:
            return
        self.running = True
        self.stats.started = True
        key = self.key = worker.key(self.index)
        try:
            while not worker.stopping:
                self._wake = trio.Event()
                self._dropped = None
                outcome = await self._session(key)
                self.beating = False
                if worker.stopping:
                    break
                if self._lost_at is None:
                    self._lost_at = trio.current_time()
                if outcome == "storm":
                    continue  # redial at once, everyone together
                delay = config.flap_down if outcome == "flap" else config.reconnect_period
                delay *= 1 + config.jitter * (2 * worker.rand.random() - 1)
                self._wake = trio.Event()  # the session's own may be set already
                if not worker.stopping:
                    with trio.move_on_after(delay):
                        await self._wake.wait()
        finally:
            self.running = False

    async def _session(self, key: p2p.KeyPair) -> str:
        config, stats = self.worker.config, self.stats
        stats.dials += 1
        phase = "dial"
        # The handler sits outside the cancel scope: a cut racing a stop or a storm arrives
        # as a group the scope has already stripped of its own Cancelled.
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with _connect(config, key) as session:
                    stats.sessions += 1
                    stats.session_beats = 0
                    phase = "stream"
                    return await _BEHAVIOURS[self.kind](self, session)
        except Exception as exc:  # the connect loop's catch-all: one failed attempt
            leaf = _leaf(exc)
            if isinstance(leaf, _Cut) and self.worker.stopping:
                return "stopped"  # our own close at the end of the run, not a cut
            if isinstance(leaf, _Cut):
                stats.cut_off += 1
                stats.failures["cut_off"] += 1
                return "cut"
            if isinstance(leaf, trio.TooSlowError):
                stats.failures[f"{phase}_timeout"] += 1
            else:
                stats.failures[f"{phase}_failed"] += 1
            log.debug("session_failed agent=%d phase=%s err=%r", self.index, phase, leaf)
            return "failed"
        finally:
            self._scope = None
        return self._dropped or "stopped"

    # -- helpers for the behaviours ------------------------------------------------------

    async def open(
        self, session: _Session, nursery: trio.Nursery, wake: trio.Event | None = None
    ) -> _Watched:
        stream = await session.open_stream(PROTOCOL_ID, self.worker.config.dial_timeout)
        self.stats.streams_opened += 1
        return _Watched(stream, nursery, self._wake if wake is None else wake)

    async def write(self, watched: _Watched, data: bytes) -> None:
        if watched.closed.is_set():
            self._cut(watched)
        try:
            with trio.fail_after(self.worker.config.write_timeout):
                await watched.stream.write(data)
        except p2p.StreamClosed as exc:
            self._cut(watched, exc)

    def _cut(self, watched: _Watched, exc: BaseException | None = None) -> None:
        if not self.worker.stopping:
            self.stats.cut_after.append(round(trio.current_time() - watched.opened_at, 3))
        raise _Cut() from exc

    def wrote_beat(self, frames: int) -> None:
        stats = self.stats
        stats.beats_sent += frames
        stats.session_beats += frames
        if self.beating:
            return
        self.beating = True
        stats.ever_connected = True
        now = trio.current_time()
        if self._storm_pending and self.worker.storm_time is not None:
            stats.storm_recovery = round(now - self.worker.storm_time, 3)
            self._storm_pending = False
        elif self._lost_at is not None and len(stats.recoveries) < MAX_RECOVERIES_KEPT:
            stats.recoveries.append(round(now - self._lost_at, 3))
        self._lost_at = None

    async def pause(self, until: float, watched: _Watched | None = None) -> str | None:
        """Wait until `until`; the reason to end the session early, if any."""
        with trio.move_on_at(until):
            await self._wake.wait()
        if watched is not None and watched.closed.is_set():
            self._cut(watched)
        if self.worker.stopping:
            return "stopped"
        return None

    async def finish(self, watched: _Watched) -> str:
        """Stop gracefully: half-close, and wait for the aggregator to close its side."""
        with trio.move_on_after(self.worker.config.close_grace):
            try:
                await watched.stream.close()
            except p2p.StreamClosed as exc:
                log.debug("close_failed agent=%d err=%r", self.index, exc)
            await watched.closed.wait()
        return "stopped"


async def _beating(sim: _Sim, session: _Session, *, period: float | None = None) -> str:
    """healthy, lagging, forked, flapping and flood: a beat every period."""
    config = sim.worker.config
    if period is None:
        period = config.beat_period
    flap_at = math.inf
    if sim.kind == "flapping":
        flap_at = trio.current_time() + config.flap_period * (
            1 + config.jitter * (2 * sim.worker.rand.random() - 1)
        )
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        deadline = trio.current_time()
        while True:
            await sim.write(watched, sim.worker.payload(sim))
            sim.wrote_beat(config.beats_per_frame)
            now = trio.current_time()
            deadline += period
            if deadline < now:  # stalled: skip missed beats rather than burst
                deadline = now + period
            if await sim.pause(min(deadline, flap_at), watched) == "stopped":
                result = await sim.finish(watched)
                nursery.cancel_scope.cancel()
                return result
            if trio.current_time() >= flap_at:
                nursery.cancel_scope.cancel()
                return "flap"


async def _flood(sim: _Sim, session: _Session) -> str:
    return await _beating(sim, session, period=1.0 / sim.worker.config.flood_rate)


async def _one_shot(sim: _Sim, session: _Session, data: bytes) -> str:
    """garbage, oversize and silent: send `data` (maybe nothing), wait to be cut off."""
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        if data:
            await sim.write(watched, data)
        await sim.pause(sim.worker.stop_at, watched)
        nursery.cancel_scope.cancel()
        return "stopped"


async def _garbage(sim: _Sim, session: _Session) -> str:
    # 0x1c: reserved CBOR additional information, a framing error at the first byte.
    return await _one_shot(sim, session, b"\x1c" + os.urandom(255))


async def _oversize(sim: _Sim, session: _Session) -> str:
    beat = replace(head_for("healthy", time.time()), nickname="x" * 8000)
    return await _one_shot(sim, session, encode_cbor(beat))


async def _silent(sim: _Sim, session: _Session) -> str:
    return await _one_shot(sim, session, b"")


async def _slowdrip(sim: _Sim, session: _Session) -> str:
    interval = sim.worker.config.drip_interval
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        deadline = trio.current_time()
        while True:
            for byte in sim.worker.payload(sim):
                await sim.write(watched, bytes([byte]))
                deadline += interval
                if await sim.pause(deadline, watched) == "stopped":
                    nursery.cancel_scope.cancel()
                    return "stopped"


async def _hog(sim: _Sim, session: _Session) -> str:
    """Several connections from one peer id, several streams on each, all beating."""
    config = sim.worker.config

    async def streams_on(sess: _Session, nursery: trio.Nursery) -> None:
        for _ in range(config.hog_streams):
            nursery.start_soon(_hog_stream, sim, sess)

    async def extra_connection(key: p2p.KeyPair) -> None:
        try:
            async with _connect(config, key) as sess, trio.open_nursery() as nursery:
                await streams_on(sess, nursery)
        except Exception as exc:  # one refused hog connection must not end the others
            sim.stats.failures["hog_connection_refused"] += 1
            log.debug("hog_connection_failed agent=%d err=%r", sim.index, exc)

    async with trio.open_nursery() as nursery:
        await streams_on(session, nursery)
        for _ in range(config.hog_connections - 1):
            if sim.key is not None:
                nursery.start_soon(extra_connection, sim.key)
        await sim.pause(sim.worker.stop_at)
        nursery.cancel_scope.cancel()
    return "stopped"


async def _hog_stream(sim: _Sim, session: _Session) -> None:
    config = sim.worker.config
    try:
        async with trio.open_nursery() as nursery:
            watched = await sim.open(session, nursery, trio.Event())
            deadline = trio.current_time()
            while not sim.worker.stopping:
                await sim.write(watched, sim.worker.payload(sim))
                sim.wrote_beat(1)
                deadline += config.beat_period
                with trio.move_on_at(deadline):
                    await watched.closed.wait()
                if watched.closed.is_set():
                    sim._cut(watched)
            nursery.cancel_scope.cancel()
    except Exception as exc:  # a refused stream is the expected outcome for a hog
        if isinstance(_leaf(exc), _Cut):
            if sim.worker.stopping:
                return
            sim.stats.cut_off += 1
            sim.stats.failures["hog_stream_cut"] += 1
        else:
            sim.stats.failures["hog_stream_refused"] += 1
            log.debug("hog_stream_failed agent=%d err=%r", sim.index, exc)


_BEHAVIOURS = {
    "healthy": _beating,
    "lagging": _beating,
    "forked": _beating,
    "flapping": _beating,
    "flood": _flood,
    "garbage": _garbage,
    "oversize": _oversize,
    "slowdrip": _slowdrip,
    "silent": _silent,
    "hog": _hog,
}


# ------------------------------------------------------------------------------------------
# workers and the parent


def _rss_kb() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def run_worker(
    config: LoadgenConfig,
    indices: Sequence[int],
    *,
    start_delay: float = 0.0,
    parent: int | None = None,
) -> tuple[dict[str, Any], list[AgentStats]]:
    """Run agents `indices` in the current trio loop; their report and raw stats.

    `parent`: the pid of the process that spawned this one; the run ends the process at
    once if that parent is gone.
    """
    worker = _Worker(config, indices, trio.current_time() + start_delay, parent)
    peak = 0

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss_kb() or 0)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        await worker.run()
        nursery.cancel_scope.cancel()
    stats = [sim.stats for sim in worker.agents]
    for sim, s in zip(worker.agents, stats, strict=True):
        s.connected = sim.connected_at_end
        if worker.storm_time is not None and sim._storm_pending:
            s.failures["storm_not_recovered"] += 1
    report = summarize(stats)
    for kind, k in report["kinds"].items():
        k["storm_missing"] = sum(
            1 for s in stats if s.kind == kind and "storm_not_recovered" in s.failures
        )
    report.update(agents=len(indices), rss_kb=peak)
    return report, stats


async def _exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """Exit this process at once when its parent is gone (killed: its clean-up never ran),
    so that no simulated agent outlives the run that started it."""
    while True:
        if os.getppid() != parent:
            log.warning("parent_gone parent=%d: exiting", parent)
            os._exit(3)
        await trio.sleep(interval)


def _worker_main(
    config: LoadgenConfig,
    worker: int,
    indices: list[int],
    start_wall: float,
    out: Any,
    log_level: str,
) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if log_level == "DEBUG":
        p2p.restore_libp2p_logging()
    else:  # py-libp2p logs every refused stream at ERROR: noise for a load generator
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    gc.set_threshold(50_000, 50, 100)  # full collections would distort every timing
    report: dict[str, Any]
    try:
        spawner = multiprocessing.parent_process()
        report, _ = trio.run(
            lambda: run_worker(
                config,
                indices,
                start_delay=max(0.0, start_wall - time.time()),
                parent=spawner.pid if spawner is not None else None,
            )
        )
    except Exception as exc:  # reported to the parent, which prints it
        report = {"kinds": {}, "agents": len(indices), "rss_kb": _rss_kb(), "error": repr(exc)}
    report["worker"] = worker
    out.put(report)


def run_loadgen(config: LoadgenConfig, *, log_level: str = "WARNING") -> dict[str, Any]:
    """Run the whole load (spawning `config.processes` workers) and return the summary."""
    config.validate()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_wall = time.time() + 1.0 + 0.3 * config.processes  # spawn + import time
    procs = []
    for w in range(config.processes):
        indices = list(range(w, config.agents, config.processes))
        proc = ctx.Process(
            target=_worker_main,
            args=(config, w, indices, start_wall, out, log_level),
            name=f"loadgen-{w}",
            daemon=True,
        )
        proc.start()
        procs.append(proc)
    reports: list[dict[str, Any]] = []
    hard_stop = start_wall + config.duration + config.close_grace + _STOP_GRACE + 30.0
    while len(reports) < len(procs) and time.time() < hard_stop:
        try:
            reports.append(out.get(timeout=max(0.1, min(1.0, hard_stop - time.time()))))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and out.empty():
                break
    for proc in procs:
        proc.join(timeout=2.0)
        if proc.is_alive():
            log.warning("worker_killed pid=%s", proc.pid)
            proc.kill()
            proc.join(timeout=2.0)
    seen = {r.get("worker") for r in reports}
    for w, proc in enumerate(procs):
        if w not in seen:
            reports.append({"worker": w, "kinds": {}, "error": f"exit code {proc.exitcode}"})
    return merge_reports(reports, elapsed=time.time() - start_wall)


# ------------------------------------------------------------------------------------------
# command line


def build_parser(prog: str = "fil-heartbeat loadgen") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--target", required=True, metavar="MULTIADDR", help="aggregator /…/p2p/<id>")
    add("--agents", type=int, default=10, help=f"simulated agents (max {MAX_AGENTS})")
    add("--processes", type=int, default=1, help=f"worker processes (max {MAX_PROCESSES})")
    add("--beat-period", default="1s", metavar="DURATION")
    add("--ramp", default="50/s", metavar="RATE", help="new agents per second, e.g. 50/s")
    add("--duration", default="60s", metavar="DURATION", help="whole run, ramp included")
    add("--mix", default="healthy=100", help="kind=weight,… of: " + ", ".join(KINDS))
    add("--storm-at", metavar="DURATION", help="all agents drop and redial at this time")
    add("--reconnect-period", default="5s", metavar="DURATION")
    add("--jitter", type=float, default=0.2)
    add("--flap-period", default="20s", metavar="DURATION")
    add("--flap-down", default="2s", metavar="DURATION")
    add("--lag", type=int, default=10, help="epochs behind, for lagging agents")
    add("--flood-rate", default="200/s", metavar="RATE")
    add("--hog-connections", type=int, default=3)
    add("--hog-streams", type=int, default=8)
    add("--beats-per-frame", type=int, default=1, help="beats per write (1 = like the agent)")
    add("--dialer", choices=("light", "host"), default="light")
    add("--stamp", action="store_true", help="send CLOCK_MONOTONIC ns in Version")
    add("--key-seed", help="derive agent keys from this seed (same peer ids every run)")
    add("--allow-remote", action="store_true", help="allow a non-loopback target")
    add("--json", action="store_true", help="print the summary as JSON")
    add("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(args: argparse.Namespace) -> LoadgenConfig:
    def duration(flag: str, text: str) -> float:
        try:
            return float(parse_duration(text))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(flag, f"bad duration {text!r}") from exc

    flood = parse_rate(args.flood_rate)
    return LoadgenConfig(
        target=args.target,
        agents=args.agents,
        processes=args.processes,
        beat_period=duration("--beat-period", args.beat_period),
        ramp=parse_rate(args.ramp),
        duration=duration("--duration", args.duration),
        mix=parse_mix(args.mix),
        storm_at=duration("--storm-at", args.storm_at) if args.storm_at else None,
        reconnect_period=duration("--reconnect-period", args.reconnect_period),
        jitter=args.jitter,
        flap_period=duration("--flap-period", args.flap_period),
        flap_down=duration("--flap-down", args.flap_down),
        lag=args.lag,
        flood_rate=flood,
        hog_connections=args.hog_connections,
        hog_streams=args.hog_streams,
        beats_per_frame=args.beats_per_frame,
        dialer=args.dialer,
        stamp=args.stamp,
        key_seed=args.key_seed,
        allow_remote=args.allow_remote,
    ).validate()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fil-heartbeat loadgen: error: {exc}", file=sys.stderr)
        return 2
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    summary = run_loadgen(config, log_level=level)
    summary["config"] = {k: v for k, v in asdict(config).items() if k != "mix"}
    summary["config"]["mix"] = dict(config.mix)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=False))
    else:
        print(format_table(summary))
    failed = any(w.get("error") for w in summary["workers"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
