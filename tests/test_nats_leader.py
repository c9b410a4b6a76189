"""One alerter over two aggregators, end to end: the leader (a real aggregator process) is
SIGKILLed with an alert firing; the other (a real aggregator in this process) takes over
within the lease TTL plus an evaluation, and a local webhook (a real HTTP server counting
POSTs) gets exactly one notification per alert transition: the page from the old leader, the
recovery from the new one, nothing repeated.

A real agent (a subprocess, both aggregators as targets) is the node; a real 3-node NATS
JetStream cluster holds the stream, the lease and the alert state.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import build_config
from tests.fake_receivers import FakeApi, serving
from tests.natscluster import NatsCluster, nats_cluster
from tests.promservers import stop_process

pytestmark = [pytest.mark.integration, pytest.mark.requires_tools("nats-server")]

REPO = Path(__file__).resolve().parent.parent
TTL = 3.0
EVAL = 1.0
ALERT_SETS = {
    "evaluation_interval": "1s",
    "node_down_for": "2s",
    "keep_firing_for": "0s",
}


@dataclass
class FakeWebhook(FakeApi):
    """A generic webhook: `{"sender", "alerts": [{"status", "kind", "labels"}...]}`."""

    def check(self, path: str, body: Any) -> list[str]:
        if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
            return ["webhook: expected {'alerts': [...]}"]
        return []

    def notices(self) -> list[tuple[str, str, str]]:
        """(sender, alertname, kind) of every notification received, in order."""
        return [
            (b["sender"], a["labels"]["alertname"], a["kind"])
            for b in self.accepted
            for a in b["alerts"]
        ]


def _leader_args(tmp: Path, cluster: NatsCluster, hook: str) -> list[str]:
    args = [
        sys.executable, "-m", "aggregator", "run",
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--http-listen", "127.0.0.1:0",
        "--identity-file", str(tmp / "agg-a.key"),
        "--state-db", str(tmp / "agg-a.db"),
        "--name", "agg-a",
        "--probation", "0s",
        "--beat-timeout-min", "2s",
        "--alert-webhook", hook,
        "--nats-lease-ttl", f"{TTL:g}s",
    ]  # fmt: skip
    for url in cluster.urls:
        args += ["--nats-url", url]
    for k, v in ALERT_SETS.items():
        args += ["--alert-set", f"{k}={v}"]
    return args


@contextmanager
def _process(args: list[str], out: Path) -> Iterator[subprocess.Popen[bytes]]:
    with out.open("ab") as stdout, out.with_suffix(".err").open("ab") as err:
        proc = subprocess.Popen(args, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        yield proc
    finally:
        stop_process(proc)


async def _printed(proc: subprocess.Popen[bytes], out: Path) -> tuple[str, str]:
    """The (multiaddr, http url) a started aggregator prints once ready."""
    with trio.fail_after(20):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"aggregator exited {proc.returncode}")
            words = out.read_text().split()
            http = [w for w in words if w.startswith("http://")]
            addrs = [w for w in words if w.startswith("/ip4/127.0.0.1/")]
            if http and addrs:
                return addrs[0], http[0]
            await trio.sleep(0.1)


def _agent_args(tmp: Path, targets: list[str]) -> list[str]:
    args = [sys.executable, "-m", "heartbeat", "run", "--nickname", "alpha"]
    for t in targets:
        args += ["--target", t]
    return [
        *args,
        "--identity-file", str(tmp / "alpha.key"),
        "--head-source", "simulated", "--seed", "5", "--block-delay", "4s",
        "--beat-period", "1s", "--reconnect-period", "1s", "--jitter", "0",
    ]  # fmt: skip


async def _leader_of(http_url: str) -> str | None:
    async with httpx.AsyncClient() as client:
        try:
            reply = await client.get(f"{http_url}/api/v1/alerts/leader", timeout=2.0)
        except httpx.HTTPError:
            return None
        leader: str | None = reply.json()["leader"]
        return leader


async def _until(what: str, check: Any, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.1)


async def test_killing_the_leader_sends_each_transition_once(tmp_path: Path) -> None:
    hook = FakeWebhook()
    with trio.fail_after(58):
        async with nats_cluster(tmp_path, n=3) as cluster, serving(hook) as (hook_url,):
            out_a = tmp_path / "agg-a.out"
            with _process(_leader_args(tmp_path, cluster, hook_url), out_a) as proc_a:
                addr_a, http_a = await _printed(proc_a, out_a)
                await _until("a leads", lambda: _is(http_a, "agg-a"), 10)
                config_b = replace(
                    build_config(
                        {
                            "listen": ["/ip4/127.0.0.1/tcp/0"],
                            "http_listen": "127.0.0.1:0",
                            "identity_file": str(tmp_path / "agg-b.key"),
                            "state_db": str(tmp_path / "agg-b.db"),
                            "gc_freeze": False,
                            "probation": "0s",
                            "beat_timeout_min": "2s",
                            "name": "agg-b",
                            "nats_url": cluster.urls,
                            "nats_lease_ttl": f"{TTL:g}s",
                            "alerts": {"webhook_urls": [hook_url], **ALERT_SETS},
                        }
                    )
                )
                holder: list[Aggregator] = []
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        lambda task_status: run_aggregator(
                            config_b,
                            handle_signals=False,
                            on_ready=holder.append,
                            task_status=task_status,
                        )
                    )
                    b = holder[0]
                    http_b = b.http_url
                    await _until("b follows a", lambda: _is(http_b, "agg-a"), 10)
                    agent_out = tmp_path / "alpha.out"
                    with _process(_agent_args(tmp_path, [addr_a, b.multiaddrs[0]]), agent_out):
                        await _until("alpha up, held by both", lambda: _held_by_both(b), 15)
                    # the agent is gone (stop_process): alpha goes down; a pages once
                    await hook.wait_for(1, timeout=15)
                    await trio.sleep(2 * EVAL)
                    assert ("agg-a", "FilNodeDown", "firing") in hook.notices()
                    # the leader dies without a word: no renewal, no release of its lease
                    proc_a.kill()
                    proc_a.wait()
                    died = trio.current_time()
                    await _until("b leads", lambda: _is(http_b, "agg-b"), TTL + EVAL + 5)
                    takeover = trio.current_time() - died
                    print(f"takeover after SIGKILL: {takeover:.2f} s (ttl {TTL:g} s)")
                    assert takeover <= TTL + 2 * EVAL + 1.0, takeover
                    await trio.sleep(3 * EVAL)  # b evaluates as leader: nothing to repeat
                    assert [n for n in hook.notices() if n[0] == "agg-b"] == []
                    # alpha comes back (to b only): one recovery, from b
                    with _process(_agent_args(tmp_path, [b.multiaddrs[0]]), agent_out):
                        with trio.fail_after(15):
                            while ("agg-b", "FilNodeDown", "resolved") not in hook.notices():
                                await hook.changed.wait()
                        await trio.sleep(3 * EVAL)
                    nursery.cancel_scope.cancel()
    counts = Counter((name, kind) for _, name, kind in hook.notices())
    assert counts[("FilNodeDown", "firing")] == 1
    assert counts[("FilNodeDown", "resolved")] == 1
    # every alert that moved (FilFleetShrunk too, as the only node went): once per transition
    assert all(n == 1 for n in counts.values()), counts
    assert hook.rejected == []


async def _is(http_url: str, name: str) -> bool:
    return await _leader_of(http_url) == name


async def _held_by_both(agg: Aggregator) -> bool:
    """Up on `agg`, held by both, with its beat period known (so its timeout is 3 periods:
    a remote holder counts until then, the stream carries no disconnect)."""
    views = [v for v in agg.snapshot().nodes if v.nickname == "alpha"]
    return (
        len(views) == 1
        and views[0].up
        and len(views[0].held_by) == 2
        and views[0].beat_period is not None
        and views[0].beats_received >= 6
    )
