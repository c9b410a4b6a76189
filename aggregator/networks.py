"""Filecoin networks by genesis CID: display name, genesis timestamp and block delay.

Pure. The network KEY of a node is its beat's GenesisCID, or "unknown" when the beat has none.
The network NAME (the `network` metric label, `display_name`): the StateNetworkName its nodes
report when they do (the fleet snapshot takes the plurality), else "mainnet"/"calibnet" for the
known genesis CIDs, else a short form of the genesis CID (`short_cid`: first 8 characters, "…",
last 4), never the 62-character CID itself.

Timing of networks not listed here is learned from beats: in Filecoin every block's timestamp is
exactly `genesis_ts + height * block_delay` (null rounds included), so one beat with
HeadTimestamp and Height gives the genesis timestamp once the block delay is known, and two beats
at different heights give the block delay itself. Learned values never override the built-in
ones nor values registered by the application (e.g. read from a node's StateGetNetworkParams);
the latest consistent observation wins. The "unknown" network mixes genesis-less beats of any
network, so nothing is learned for it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CALIBNET_GENESIS_CID",
    "MAINNET_GENESIS_CID",
    "UNKNOWN_NETWORK",
    "NetworkInfo",
    "NetworkRegistry",
    "display_name",
    "network_key",
    "network_name",
    "short_cid",
]

MAINNET_GENESIS_CID = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
CALIBNET_GENESIS_CID = "bafy2bzacecyaggy24wol5ruvs6qm73gjibs2l2iyhcqmvi7r7a4ph7zx3yqd4"
UNKNOWN_NETWORK = "unknown"

_NAMES = {MAINNET_GENESIS_CID: "mainnet", CALIBNET_GENESIS_CID: "calibnet"}


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """What is known about one network's timing."""

    key: str  # genesis CID or "unknown"
    name: str  # the `network` label
    genesis_timestamp: int | None  # unix seconds; None when not known
    block_delay: float  # seconds per epoch
    source: str  # "builtin", "registered", "learned" or "default"

    def expected_height(self, now: float) -> int | None:
        """floor((now - genesis) / block_delay), as Lotus computes it; None when unknown."""
        if self.genesis_timestamp is None or self.block_delay <= 0:
            return None
        return max(0, int((now - self.genesis_timestamp) // self.block_delay))


_BUILTIN = {
    MAINNET_GENESIS_CID: NetworkInfo(MAINNET_GENESIS_CID, "mainnet", 1598306400, 30.0, "builtin"),
    CALIBNET_GENESIS_CID: NetworkInfo(
        CALIBNET_GENESIS_CID, "calibnet", 1667326380, 30.0, "builtin"
    ),
}


def network_key(genesis_cid: str | None) -> str:
    """The key a node's network is tracked under."""
    return genesis_cid if genesis_cid else UNKNOWN_NETWORK


def short_cid(cid: str) -> str:
    """A CID shortened for a label: first 8 characters, "…", last 4 (short ones as they are)."""
    return cid if len(cid) <= 16 else f"{cid[:8]}…{cid[-4:]}"


def network_name(key: str | None) -> str:
    """The name of a network key (or a raw genesis CID) from the key alone: the built-in name,
    else the short CID."""
    if not key:
        return UNKNOWN_NETWORK
    return _NAMES.get(key) or short_cid(key)


def display_name(key: str, reported: str | None) -> str:
    """The `network` label: the name its nodes report (StateNetworkName) when there is one,
    else `network_name(key)`."""
    return reported if reported else network_name(key)


class NetworkRegistry:
    """Timing per network: built-in, registered by the app, or learned from beats."""

    __slots__ = ("_block_delay_default", "_infos", "_samples")

    def __init__(self, block_delay_default: float = 30.0) -> None:
        self._block_delay_default = block_delay_default
        self._infos: dict[str, NetworkInfo] = dict(_BUILTIN)
        # key -> (height, head_timestamp) of the last observation, to learn the block delay
        self._samples: dict[str, tuple[int, int]] = {}

    def get(self, key: str) -> NetworkInfo:
        info = self._infos.get(key)
        if info is None:
            info = NetworkInfo(key, network_name(key), None, self._block_delay_default, "default")
            if key != UNKNOWN_NETWORK:
                self._infos[key] = info
        return info

    def register(self, key: str, genesis_timestamp: int | None, block_delay: float) -> NetworkInfo:
        """Set a network's timing from an authoritative source (overrides built-in and learned)."""
        if block_delay <= 0:
            raise ValueError(f"block_delay must be positive, got {block_delay}")
        info = NetworkInfo(key, network_name(key), genesis_timestamp, block_delay, "registered")
        self._infos[key] = info
        return info

    def observe(self, key: str, height: int, head_timestamp: int | None) -> None:
        """Learn a network's timing from a beat's Height and HeadTimestamp (see module doc)."""
        if head_timestamp is None or key == UNKNOWN_NETWORK:
            return
        current = self.get(key)
        if current.source in ("builtin", "registered"):
            return
        delay = current.block_delay
        previous = self._samples.get(key)
        self._samples[key] = (height, head_timestamp)
        if previous is not None and previous[0] != height:
            d_ts = head_timestamp - previous[1]
            d_h = height - previous[0]
            if d_ts % d_h == 0 and d_ts // d_h > 0:
                delay = float(d_ts // d_h)
        genesis = int(head_timestamp - height * delay)
        if genesis != current.genesis_timestamp or delay != current.block_delay:
            self._infos[key] = NetworkInfo(key, current.name, genesis, delay, "learned")
