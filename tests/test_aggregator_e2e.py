"""The aggregator end to end: real libp2p on loopback, real HTTP, scripted and real agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aggregator.app import Aggregator, run_aggregator
from aggregator.config import AggregatorConfig, build_config
from aggregator.fleet import NodeState
from heartbeat.protocol.wire import Beat, encode_cbor
from tests.helpers import eventually, metric_value
from tests.legacy_sender import legacy_line, scripted_sender

pytestmark = pytest.mark.integration

GENESIS = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
OTHER_GENESIS = "bafy2bzaceaxm23epjsmh75yvzcecsrbavlmkcxnva66bkdebdcnyw3bjrc74u"
HEAD_A = "{bafy2bzaceheadaaaaaaaaaaaaaaa}"
HEAD_B = "{bafy2bzaceheadbbbbbbbbbbbbbbb}"


def beat(height: int, nickname: str, head: str = HEAD_A, genesis: str | None = GENESIS) -> bytes:
    b = Beat(
        head=head, height=height, nickname=nickname, miner_address="f01234", genesis_cid=genesis
    )
    return encode_cbor(b)


def make_config(tmp_path: Path, **overrides: Any) -> AggregatorConfig:
    base = build_config(
        {
            "listen": ["/ip4/127.0.0.1/tcp/0"],
            "http_listen": "127.0.0.1:0",
            "identity_file": str(tmp_path / "aggregator.key"),
            "state_db": str(tmp_path / "aggregator.db"),
            "gc_freeze": False,
            # These tests drive states, alerts and persistence from a node's first beat;
            # probation has its own (tests/test_probation_e2e.py).
            "probation": "0s",
        }
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running(config: AggregatorConfig) -> AsyncIterator[Aggregator]:
    holder: list[Aggregator] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_aggregator(
                config, handle_signals=False, on_ready=holder.append, task_status=task_status
            )
        )
        yield holder[0]
        nursery.cancel_scope.cancel()


#: Still imported under this name by test_aggregator_ip_cap.
wait_for = eventually


def state_of(agg: Aggregator, peer: str) -> NodeState | None:
    node = agg.snapshot().node(peer)
    return node.state if node is not None else None


async def test_scripted_beats_drive_consensus_lag_and_fork(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as agg:
        addr = agg.multiaddrs[0]
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith("/p2p/" + agg.peer_id)
        async with (
            scripted_sender(addr) as a,
            scripted_sender(addr) as b,
            scripted_sender(addr) as c,
            scripted_sender(addr) as lagger,
            scripted_sender(addr) as forker,
            scripted_sender(addr, protocol="/fil/heartbeat/1.0.0") as other_net,
        ):
            for sender, nick in ((a, "alpha"), (b, "bravo"), (c, "charlie")):
                await sender.write(beat(100, nick))
            await lagger.write(beat(92, "lagger"))
            await forker.write(beat(100, "forker", head=HEAD_B))
            await other_net.write(beat(5, "calib", genesis=OTHER_GENESIS))
            peers = [a, b, c, lagger, forker, other_net]
            await eventually(
                lambda: all(agg.fleet.snapshot(agg.wall_clock()).node(s.peer_id) for s in peers)
            )
            assert [state_of(agg, s.peer_id) for s in peers] == [
                NodeState.IN_CONSENSUS,
                NodeState.IN_CONSENSUS,
                NodeState.IN_CONSENSUS,
                NodeState.LAGGING,
                NodeState.FORKED,
                NodeState.IN_CONSENSUS,
            ]
            snap = agg.snapshot()
            main = next(n for n in snap.networks.values() if n.key == GENESIS)
            assert (main.height, main.in_consensus, main.in_dispute) == (100, 3, 2)
            other = next(n for n in snap.networks.values() if n.key == OTHER_GENESIS)
            assert (other.height, other.in_consensus) == (5, 1)
            # The lagger catches up.
            await lagger.write(beat(100, "lagger"))
            await eventually(lambda: state_of(agg, lagger.peer_id) is NodeState.IN_CONSENSUS)
            for s in peers:
                await s.finish()
        assert agg.ingest.counters.beats_accepted == 7
        await eventually(lambda: state_of(agg, a.peer_id) is NodeState.DOWN)


async def test_legacy_json_sender_is_accepted(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as agg:
        async with scripted_sender(agg.multiaddrs[0]) as legacy:
            lines = legacy_line(10, nickname="gofil") + legacy_line(11, nickname="gofil")
            await legacy.write(lines)
            await eventually(lambda: agg.ingest.counters.beats_accepted == 2)
            node = agg.snapshot().node(legacy.peer_id)
            assert node is not None
            assert (node.nickname, node.height, node.miner_address) == ("gofil", 11, "t01234")
            assert node.network_key == "unknown"
            await legacy.finish()


async def test_misbehaving_peers_are_cut_while_others_flow(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, beat_timeout=2.0, beat_timeout_min=1.0, max_beat_size=512, max_buffer=4096
    )
    async with running(config) as agg:
        addr = agg.multiaddrs[0]
        counters = agg.ingest.counters
        async with scripted_sender(addr) as good:
            height = 1

            async def keep_flowing(task_status: trio.TaskStatus[None]) -> None:
                nonlocal height
                task_status.started()
                while True:
                    await good.write(beat(height, "good"))
                    height += 1
                    await trio.sleep(0.5)

            async with trio.open_nursery() as flow:
                await flow.start(keep_flowing)
                # Garbage: reset, counted as a decode error.
                async with scripted_sender(addr) as garbage:
                    await garbage.write(b"\xff\x00garbage")
                    assert await garbage.read_until_closed() == "closed"
                # Oversize beat.
                async with scripted_sender(addr) as big:
                    await big.write(beat(1, "x" * 600))
                    assert await big.read_until_closed() == "closed"
                # Wrong type: rejected, stream stays open, then a good beat passes.
                async with scripted_sender(addr) as wrong:
                    await wrong.write(
                        b'{"Head":"{ bafy2bzaceaaa }","Height":"1",'
                        b'"Nickname":"w","MinerAddress":""}\n'
                    )
                    await eventually(lambda: counters.beats_rejected["wrong_type"] == 1)
                    await wrong.finish()
                # Silent and slow-drip peers: cut at the beat timeout (2 s).
                async with scripted_sender(addr) as silent, scripted_sender(addr) as drip:
                    payload = beat(1, "drip")

                    async def dripping() -> None:
                        for byte in payload:
                            await trio.sleep(0.3)
                            try:
                                await drip.write(bytes([byte]))
                            except Exception:  # the aggregator cut us: expected
                                return

                    async with trio.open_nursery() as n:
                        n.start_soon(dripping)
                        assert await silent.read_until_closed(8) == "closed"
                        assert await drip.read_until_closed(8) == "closed"
                    await eventually(lambda: not silent.connected() and not drip.connected())
                assert counters.peers_disconnected["read_timeout"] == 2
                flow.cancel_scope.cancel()
            assert sum(counters.decode_errors.values()) == 2
            assert counters.decode_errors["oversize"] == 1
            assert counters.handler_errors == 0
            node = agg.snapshot().node(good.peer_id)
            assert node is not None and node.height == height - 1 and node.up
        # The host survived: a new peer still gets through.
        async with scripted_sender(addr) as late:
            await late.write(beat(1, "late"))
            await eventually(lambda: agg.snapshot().node(late.peer_id) is not None)
            await late.finish()


async def test_allowlist_refuses_and_reloads(tmp_path: Path) -> None:
    from heartbeat.net import p2p

    allow = tmp_path / "allow.txt"
    allow.write_text("# nobody yet\n")
    key = p2p.new_identity(b"s" * 32)
    async with running(make_config(tmp_path, allowlist_file=allow)) as agg:
        addr = agg.multiaddrs[0]
        async with scripted_sender(addr, key_pair=key) as stranger:
            assert await stranger.read_until_closed() == "closed"
            await eventually(lambda: not stranger.connected())
        assert agg.ingest.counters.peers_refused["not_allowed"] == 1
        allow.write_text(f"{stranger.peer_id}  # now welcome\n")
        assert agg.reload_allowlist()
        async with scripted_sender(addr, key_pair=key) as again:
            await again.write(beat(1, "welcome"))
            await eventually(lambda: agg.snapshot().node(again.peer_id) is not None)
            await again.finish()
        assert agg.ingest.counters.peers_refused["not_allowed"] == 1
        allow.write_text("not a peer id\n")
        assert not agg.reload_allowlist()  # a bad file keeps the previous list
        assert agg.ingest.allowlist == frozenset({stranger.peer_id})


async def test_allowlist_refusals_are_counted_and_capped_per_ip(tmp_path: Path) -> None:
    """A peer not on the allowlist is refused by reason (`not_allowlisted`), and past the
    per-IP refusal cap its address is closed at accept, before any Noise handshake."""
    from heartbeat.net import p2p
    from heartbeat.net.refusals import REFUSALS

    allow = tmp_path / "allow.txt"
    allow.write_text(f"{p2p.peer_id_of(p2p.new_identity(b'f' * 32))}\n")
    config = make_config(tmp_path, allowlist_file=allow, refusal_cap=2, refusal_window=60.0)
    before = (REFUSALS["not_allowlisted"], REFUSALS["per_ip_refusal_cap"])
    async with running(config) as agg:
        gate = p2p.handshake_gate(agg.host)
        assert gate is not None
        addr = agg.multiaddrs[0]
        for _ in range(4):  # refused three times, over the cap of 2: the fourth at accept
            try:
                async with scripted_sender(addr) as stranger:
                    await stranger.read_until_closed()
            except Exception:  # closed at accept: the dial itself fails
                pass
        await eventually(lambda: gate.refused.get("per_ip_refusal_cap", 0) >= 1)
        assert gate.refused["not_allowlisted"] == 3
        assert REFUSALS["not_allowlisted"] == before[0] + 3
        assert REFUSALS["per_ip_refusal_cap"] >= before[1] + 1
        # (Other addresses are unaffected: tests/test_p2p_gate.py dials from 127.0.0.2.)


# -- real agents (heartbeat.agent.loop) and the HTTP API -----------------------------------------


@asynccontextmanager
async def real_agent(
    addr: str, nickname: str, height: int, *, key: Any = None, period: float = 0.5
) -> AsyncIterator[Any]:
    from heartbeat.agent.connector import Libp2pConnector
    from heartbeat.agent.head import Head
    from heartbeat.agent.loop import Agent, BeatLoop
    from heartbeat.agent.targets import parse_target
    from heartbeat.net import p2p

    head = Head(cids=("bafy2bzaceheadaaaaaaaaaaaaaaa",), height=height, genesis_cid=GENESIS)
    target = replace(parse_target(addr), beat_period=period, reconnect_period=0.5)
    async with p2p.running_host(key or p2p.new_identity(), []) as host:
        loop = BeatLoop(target, Libp2pConnector(host), lambda: head, nickname=nickname, jitter=0.0)
        agent = Agent([loop])
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            yield agent
            await agent.stop()
            nursery.cancel_scope.cancel()


async def nodes_by_nick(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    reply = await client.get(url + "/api/v1/nodes")
    assert reply.status_code == 200
    return {n["nickname"]: n for n in reply.json()}


async def test_real_agents_appear_in_metrics_and_api_then_stall_and_go_down(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, stall_after=2.0)
    async with running(config) as agg, httpx.AsyncClient(timeout=5) as client:
        url = agg.http_url
        assert (await client.get(url + "/readyz")).status_code == 200
        addr = agg.multiaddrs[0]
        async with real_agent(addr, "alpha", 300), real_agent(addr, "bravo", 300):

            async def both_in_consensus() -> bool:
                nodes = await nodes_by_nick(client, url)
                return all(
                    nodes.get(n, {}).get("state") == "in_consensus" for n in ("alpha", "bravo")
                )

            await eventually(both_in_consensus, interval=0.05)
            metrics = (await client.get(url + "/metrics")).text
            assert metric_value(metrics, "fil_heartbeat_node_height", nickname="alpha") == 300
            assert metric_value(metrics, "fil_heartbeat_node_up", nickname="bravo") == 1
            assert (
                metric_value(
                    metrics, "fil_heartbeat_node_state", nickname="alpha", state="in_consensus"
                )
                == 1
            )
            assert (metric_value(metrics, "fil_heartbeat_beats_accepted_total") or 0) >= 2
            assert metric_value(metrics, "fil_heartbeat_streams_open") == 2

            # The static head never moves: both stall after 2 s.
            async def both_stalled() -> bool:
                nodes = await nodes_by_nick(client, url)
                return all(nodes[n]["state"] == "stalled" for n in ("alpha", "bravo"))

            await eventually(both_stalled, interval=0.05)

        # Both agents stopped: down at once (their streams closed), still listed.
        async def both_down() -> bool:
            nodes = await nodes_by_nick(client, url)
            return all(
                nodes[n]["state"] == "down" and not nodes[n]["up"] for n in ("alpha", "bravo")
            )

        await eventually(both_down, interval=0.05)
        metrics = (await client.get(url + "/metrics")).text
        assert metric_value(metrics, "fil_heartbeat_node_up", nickname="alpha") == 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_restart_remembers_down_nodes_and_agents_reconnect(tmp_path: Path) -> None:
    from heartbeat.net import p2p

    port = free_port()
    config = make_config(tmp_path, listen=(f"/ip4/127.0.0.1/tcp/{port}",), store_flush_interval=0.2)
    key_back = p2p.new_identity(b"b" * 32)
    async with trio.open_nursery() as outer:
        back_running = trio.Event()
        stop_back = trio.Event()
        async with running(config) as agg:
            addr = agg.multiaddrs[0]
            peer_id = agg.peer_id

            async def back_agent() -> None:
                async with real_agent(addr, "back", 77, key=key_back):
                    back_running.set()
                    await stop_back.wait()

            outer.start_soon(back_agent)
            await back_running.wait()
            async with real_agent(addr, "gone", 77):
                await eventually(lambda: len(agg.snapshot().nodes) == 2)
        # The aggregator is stopped (store flushed); "gone" never comes back.
        async with running(config) as agg2:
            assert agg2.peer_id == peer_id and agg2.multiaddrs[0] == addr

            def states() -> dict[str, str]:
                return {n.nickname: n.state.value for n in agg2.snapshot().nodes}

            assert states().get("gone") == "down"
            await eventually(
                lambda: states() == {"gone": "down", "back": "in_consensus"}, timeout=15
            )
            stop_back.set()


# -- many agents ------------------------------------------------------------------------------

CROWD = 1000
CROWD_PROCESSES = 4


async def test_thousand_concurrent_agent_connections(tmp_path: Path) -> None:
    """1,000 connections (one identity each) from a few client processes, within 90 s.

    Measured here: ~12 s for 1,000 (Noise handshakes dominate; four client processes).
    """
    import subprocess
    import sys

    config = make_config(tmp_path, max_connections_per_ip=CROWD + 100)
    root = Path(__file__).resolve().parent.parent
    async with running(config) as agg, httpx.AsyncClient(timeout=30) as client:
        addr = agg.multiaddrs[0]
        command = [
            sys.executable,
            "-m",
            "tests.legacy_sender",
            "crowd",
            addr,
            str(CROWD // CROWD_PROCESSES),
        ]
        procs = [
            subprocess.Popen(
                command,
                cwd=root,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(CROWD_PROCESSES)
        ]
        try:
            started = trio.current_time()
            await eventually(lambda: agg.ingest.counters.streams_open >= CROWD, timeout=90)
            elapsed = trio.current_time() - started
            await eventually(lambda: len(agg.fleet) >= CROWD, timeout=10)
            metrics = (await client.get(agg.http_url + "/metrics")).text
            assert metric_value(metrics, "fil_heartbeat_connections") == CROWD
            assert metric_value(metrics, "fil_heartbeat_streams_open") == CROWD
            nodes = (await client.get(agg.http_url + "/api/v1/nodes")).json()
            assert len(nodes) == CROWD
            assert agg.ingest.counters.handler_errors == 0
            print(f"crowd connections={CROWD} seconds={elapsed:.1f}")
        finally:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_run_prints_addresses_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    base = [sys.executable, "-m", "aggregator", "--identity-file", str(tmp_path / "agg.key")]
    ident = subprocess.run(
        [*base[:3], "id", *base[3:]], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert ident.returncode == 0, ident.stderr
    peer_id = ident.stdout.strip()
    assert peer_id.startswith("12D3KooW")
    proc = subprocess.Popen(
        [
            *base,
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http-listen",
            "127.0.0.1:0",
            "--state-db",
            str(tmp_path / "agg.db"),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        second = proc.stdout.readline().strip()
        assert first.startswith("/ip4/127.0.0.1/tcp/") and first.endswith(f"/p2p/{peer_id}")
        assert second.startswith("http://127.0.0.1:")
        assert httpx.get(second + "/healthz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "agg.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
