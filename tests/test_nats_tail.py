"""`fil-heartbeat-aggregator tail`: a real process on a real 3-node cluster, SIGKILLed
mid-stream and restarted on the same durable consumer, leaves no gap (duplicates allowed,
counted); and its lines as the pure formatter writes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from aggregator.scaleout import schema
from aggregator.scaleout.bridge import NatsSettings, StreamMsg, open_bridge
from aggregator.scaleout.tail import BATCH, TailCounts, tail_line
from heartbeat.protocol.beat import Beat
from tests.natscluster import nats_cluster

TOTAL = 3000
BEAT = Beat(head="{bafy2bzaceheadaaaa}", height=1, nickname="n", miner_address="")


def _tail(urls: list[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "aggregator", "tail", "--durable", "pipeline"]
    cmd += ["--nats-url", ",".join(urls), "--subjects", "fil.heartbeat.*.beat.*"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("ab") as stdout, err.open("ab") as stderr:
        return subprocess.Popen(
            cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )


def _seqs(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    # a SIGKILL may cut the last line short: that message was not acknowledged
    return [json.loads(line)["seq"] for line in lines if line.endswith("}")]


async def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        await trio.sleep(0.05)


@pytest.mark.integration
@pytest.mark.requires_tools("nats-server")
async def test_tail_killed_mid_stream_and_restarted_has_no_gap(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path / "nats") as cluster:
        settings = NatsSettings(urls=tuple(cluster.urls))
        async with open_bridge(settings) as bridge:
            await bridge.ensure_stream()
            for start in range(0, TOTAL, 500):
                items = [
                    (
                        schema.beat_subject("net", f"P{i % 7}"),
                        schema.encode_beat("o", f"P{i % 7}", 1000.0 + i, BEAT),
                        schema.beat_msg_id("o", f"P{i % 7}", 1000.0 + i),
                    )
                    for i in range(start, start + 500)
                ]
                assert all(await bridge.publish_many(items))
        out1, out2, err = tmp_path / "out1.jsonl", tmp_path / "out2.jsonl", tmp_path / "err"
        first = _tail(cluster.urls, out1, err)
        try:
            await _until(lambda: len(_seqs(out1)) >= 300, 30)
        finally:
            first.kill()  # mid-stream, no goodbye
            first.wait(10)
        seen_first = _seqs(out1)
        assert len(seen_first) < TOTAL, "killed too late to test a resume"
        second = _tail(cluster.urls, out2, err)
        try:
            await _until(lambda: TOTAL in set(_seqs(out2)), 40)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        seen_second = _seqs(out2)
        assert set(seen_first) | set(seen_second) == set(range(1, TOTAL + 1))  # no gap
        # it resumed where the first run's acknowledgements ended, not at the start
        assert max(seen_first) - BATCH < min(seen_second) <= max(seen_first) + 1
        assert second.returncode == 0
        summary = err.read_text().strip().splitlines()[-1]
        assert summary.startswith(f"tail: lines={len(seen_second)} redelivered=")
        redelivered = int(summary.split("redelivered=")[1].split()[0])
        # what both runs wrote was redelivered (and counted); a killed run leaves one batch
        assert len(set(seen_first) & set(seen_second)) <= redelivered <= BATCH
        assert "duplicates=0 " in summary


def test_tail_line_and_counts() -> None:
    data = schema.encode_beat("o", "P", 12.5, BEAT)
    msg = StreamMsg("fil.heartbeat.net.beat.P", data, "o:P:12500", 7, 99.0, delivered=1)
    counts = TailCounts()
    assert not counts.observe(msg)
    line = json.loads(tail_line(msg, counts))
    assert line["seq"] == 7 and line["type"] == "beat" and line["beat"]["Height"] == 1
    assert counts.observe(msg)  # the same id again
    redelivered = StreamMsg("s", b"\xff", "x", 8, 99.0, delivered=2)
    assert counts.observe(redelivered)
    assert json.loads(tail_line(redelivered, counts))["type"] == "undecodable"
    assert counts.summary() == "tail: lines=3 redelivered=1 duplicates=1 undecodable=1"
