"""Benchmark: how long `Fleet.snapshot` takes for a large fleet (prints figures, asserts nothing).

Usage: python -m bench.bench_fleet [NODES]
"""

from __future__ import annotations

import argparse
import time

from aggregator.fleet import Fleet, FleetPolicy
from aggregator.networks import MAINNET_GENESIS_CID
from heartbeat.protocol.wire import Beat


def cid(tag: int) -> str:
    """A plausible CIDv1 text (base32 alphabet) distinct for each tag."""
    digits = "abcdefghijklmnopqrstuvwxyz234567"
    text = ""
    while True:
        tag, rem = divmod(tag, 32)
        text += digits[rem]
        if tag == 0:
            break
    return "bafy2bzacea" + text


def sample_fleet(count: int, now: float) -> Fleet:
    """A mainnet fleet of `count` nodes with realistic peer ids, a few lagging."""
    fleet = Fleet(FleetPolicy(max_nodes=count + 1))
    for i in range(count):
        pid = f"12D3KooW{i:044d}"  # 52 characters, like an Ed25519 peer id
        height = 1000 - (i % 9)
        beat = Beat(
            head="{" + cid(2 * height) + "," + cid(2 * height + 1) + "}",
            height=height,
            nickname=f"node-{i}",
            miner_address=f"f0{10000 + i}",
            genesis_cid=MAINNET_GENESIS_CID,
            head_timestamp=1598306400 + height * 30,
            syncing=False,
            version="fil-heartbeat/0.1.0",
        )
        fleet.on_connect(pid, f"/ip4/10.0.{i // 256 % 256}.{i % 256}/tcp/4001", now)
        fleet.on_beat(pid, beat, now + (i % 1000) / 1000)
    return fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("nodes", nargs="?", type=int, default=10_000)
    count = parser.parse_args().nodes
    now = 1_700_000_000.0
    fleet = sample_fleet(count, now)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        snap = fleet.snapshot(now + 1.0)
        runs.append((time.perf_counter() - t0) * 1000.0)
    net = snap.networks[MAINNET_GENESIS_CID]
    print(f"nodes={count} snapshot_ms min={min(runs):.1f} max={max(runs):.1f}")
    print(f"network height={net.height} counts={dict(net.counts)}")


if __name__ == "__main__":
    main()
