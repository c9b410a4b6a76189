"""Head sources that need no Lotus node: a fixed head, and a simulated chain.

`SimulatedChain` advances one epoch per block delay on the trio clock. Its CIDs are
deterministic fake CIDs (real CIDv1 dag-cbor blake2b-256 shape, `bafy2bzace…`) derived from
the genesis CID and the height, so every simulated node of the same network agrees on the
consensus head; `fork=True` derives different ones. Null rounds (the epoch had no block,
the head jumps by 2) are drawn deterministically from the seed and the height.

The height comes from one genesis time (`DEFAULT_SIMULATED_GENESIS_TIMESTAMP` unless given):
`floor((wall_now - genesis_timestamp) / block_delay)`, epochs switching on that wall-clock
grid, and the null rounds are the network's (seeded by its genesis CID unless `seed`), so
simulated agents started at different times, or restarted, agree on the head.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from heartbeat.agent.head import ChangeListeners, Head, SourceStatus

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_SIMULATED_GENESIS",
    "DEFAULT_SIMULATED_GENESIS_TIMESTAMP",
    "SimulatedChain",
    "StaticHeadSource",
    "fake_cid",
]

_CID_PREFIX = bytes([0x01, 0x71, 0xA0, 0xE4, 0x02, 0x20])  # v1, dag-cbor, blake2b-256, 32


def fake_cid(*parts: object) -> str:
    """A well-formed `bafy2bzace…` CID text derived deterministically from `parts`."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()
    return "b" + base64.b32encode(_CID_PREFIX + digest).decode().lower().rstrip("=")


DEFAULT_SIMULATED_GENESIS = fake_cid("fil-heartbeat", "simulated-genesis")
#: The simulated network's genesis time (2026-01-01T00:00:00Z), the same for every agent.
DEFAULT_SIMULATED_GENESIS_TIMESTAMP = 1_767_225_600


def _network_seed(genesis_cid: str) -> int:
    """The null-round seed of a simulated network: every node of it draws the same."""
    digest = hashlib.blake2b(f"{genesis_cid}:seed".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class StaticHeadSource:
    """Always reports the same head (tests, demos); its HeadSeenAt is the start time."""

    def __init__(self, head: Head, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._head = head
        self._wall_clock = wall_clock
        self._started_at: float | None = None
        self._listeners = ChangeListeners()

    @property
    def latest(self) -> Head | None:
        return self._head

    @property
    def status(self) -> SourceStatus:
        return SourceStatus(reachable=True, mode="static", last_update=self._started_at)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)  # a static head never changes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started_at = trio.current_time()
        if self._head.seen_at is None:
            self._head = replace(self._head, seen_at=int(self._wall_clock() * 1000))
        task_status.started()
        await trio.sleep_forever()


class SimulatedChain:
    """A chain that grows on the trio clock.

    At trio time `t0 + k*block_delay + x` (0 <= x < block_delay) the current epoch is
    `start_height + k`; the head is the highest epoch <= current epoch - lag_epochs that
    is not a null round. Head timestamps are `genesis_timestamp + height*block_delay`.

    Without `start_height` (the default) the chain is the network's: at start,
    `start_height = floor((wall_now - genesis_timestamp) / block_delay)` with the genesis
    timestamp given or `DEFAULT_SIMULATED_GENESIS_TIMESTAMP`, and `t0` the wall-clock start
    of that epoch, so every simulated node agrees whenever it started. With a
    `start_height` the chain starts there now, and a genesis timestamp not given is chosen
    from the wall clock so that the expected height is the simulated epoch (tests).
    Without `seed` the null rounds are drawn from the genesis CID: the network's.
    """

    def __init__(
        self,
        block_delay: float = 30.0,
        start_height: int | None = None,
        null_round_probability: float = 0.05,
        lag_epochs: int = 0,
        seed: int | None = None,
        genesis_cid: str = DEFAULT_SIMULATED_GENESIS,
        miner_address: str = "",
        *,
        fork: bool = False,
        genesis_timestamp: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if block_delay <= 0:
            raise ValueError("block_delay must be positive")
        if not 0.0 <= null_round_probability < 1.0:
            raise ValueError("null_round_probability must be in [0, 1)")
        if (start_height is not None and start_height < 0) or lag_epochs < 0:
            raise ValueError("start_height and lag_epochs must not be negative")
        self.block_delay = block_delay
        self._from_genesis = start_height is None
        self.start_height = 0 if start_height is None else start_height
        self.null_round_probability = null_round_probability
        self.lag_epochs = lag_epochs
        self.seed = seed if seed is not None else _network_seed(genesis_cid)
        self.genesis_cid = genesis_cid
        self.miner_address = miner_address
        self.fork = fork
        self._wall_clock = wall_clock
        self.genesis_timestamp: int | None = genesis_timestamp
        self._t0: float | None = None
        self._latest: Head | None = None
        self._last_update: float | None = None
        self._listeners = ChangeListeners()

    # -- pure helpers -------------------------------------------------------
    def is_null_round(self, height: int) -> bool:
        """Deterministic null round draw; genesis never is, nor a given start height."""
        floor = 0 if self._from_genesis else self.start_height
        if height <= floor or self.null_round_probability == 0.0:
            return False
        digest = hashlib.blake2b(f"{self.seed}:null:{height}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.null_round_probability

    def cids_at(self, height: int) -> tuple[str, ...]:
        """The tipset key at `height`: 1 to 3 blocks, shared by all nodes of the network."""
        salt = "fork" if self.fork else "main"
        count = 1 + hashlib.blake2b(f"{self.genesis_cid}:{height}".encode()).digest()[0] % 3
        return tuple(fake_cid(self.genesis_cid, salt, height, i) for i in range(count))

    def epoch_at(self, now: float) -> int:
        """The current epoch at trio time `now` (after `run` started)."""
        assert self._t0 is not None
        return self.start_height + max(0, math.floor((now - self._t0) / self.block_delay))

    def head_at(self, now: float) -> Head:
        """The head a node of this chain reports at trio time `now`."""
        height = max(0, self.epoch_at(now) - self.lag_epochs)
        while height > 0 and self.is_null_round(height):
            height -= 1
        assert self.genesis_timestamp is not None
        return Head(
            cids=self.cids_at(height),
            height=height,
            timestamp=int(self.genesis_timestamp + height * self.block_delay),
            syncing=False,
            genesis_cid=self.genesis_cid,
            miner_address=self.miner_address,
        )

    # -- HeadSource ---------------------------------------------------------
    @property
    def latest(self) -> Head | None:
        return self._latest

    @property
    def status(self) -> SourceStatus:
        return SourceStatus(reachable=True, mode="simulated", last_update=self._last_update)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._t0 = trio.current_time()
        wall = self._wall_clock()
        if self._from_genesis:
            if self.genesis_timestamp is None:
                self.genesis_timestamp = DEFAULT_SIMULATED_GENESIS_TIMESTAMP
            elapsed = max(0.0, wall - self.genesis_timestamp)
            self.start_height = math.floor(elapsed / self.block_delay)
            self._t0 -= elapsed - self.start_height * self.block_delay  # the epoch's start
        elif self.genesis_timestamp is None:
            self.genesis_timestamp = int(wall - self.start_height * self.block_delay)
        self._update(trio.current_time())
        task_status.started()
        deadline = self._t0
        while True:
            deadline += self.block_delay
            await trio.sleep_until(deadline)
            self._update(trio.current_time())

    def _update(self, now: float) -> None:
        head = self.head_at(now)
        if self._latest is None or head.cids != self._latest.cids:
            self._latest = replace(head, seen_at=int(self._wall_clock() * 1000))
            self._last_update = now
            self._listeners.fire()
