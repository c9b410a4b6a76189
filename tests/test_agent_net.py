"""The agent over real libp2p on loopback, against tests/receiver.py."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from heartbeat.agent.cli import run_agent
from heartbeat.agent.config import AgentConfig, build_config
from heartbeat.agent.connector import Libp2pConnector
from heartbeat.agent.head import Head
from heartbeat.agent.loop import Agent, BeatLoop
from heartbeat.agent.targets import parse_target
from heartbeat.net.p2p import StreamClosed, load_or_create_identity, running_host
from heartbeat.protocol.wire import Beat
from heartbeat.version import AGENT_VERSION, STATIC_MARKER
from tests.helpers import eventually
from tests.receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

CID_A = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
CID_B = "bafy2bzacebbpdegvr3i4cosewthysg5xkxpqfn2wfcz6mv2hmoktwbdjkhmhm"
ROOT = Path(__file__).resolve().parent.parent


def config_for(tmp_path: Path, targets: list[str], **extra: str) -> AgentConfig:
    flags: dict[str, Any] = {
        "targets": targets,
        "head_source": "static",
        "static_head": f"{CID_A},{CID_B}",
        "static_height": "4242",
        "nickname": "alpha",
        "miner_address": "f01234",
        "beat_period": "200ms",
        "reconnect_period": "1s",
        "dial_timeout": "2s",
        "write_timeout": "2s",
    }
    env = {k: v for k, v in extra.items() if k.isupper()}
    flags.update({k: v for k, v in extra.items() if not k.isupper()})
    return build_config(flags, env, default_identity_file=tmp_path / "agent.key")


async def test_beats_arrive_in_order(tmp_path: Path) -> None:
    counter = iter(range(1, 10_000))

    def latest() -> Head:  # a new height at every beat, so order is visible
        return Head(cids=(CID_A,), height=next(counter))

    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)
        key = load_or_create_identity(tmp_path / "agent.key")
        async with running_host(key) as host:
            target = parse_target(receiver.addr)
            target = type(target)(**{**_fields(target), "beat_period": 0.05})
            loop = BeatLoop(target, Libp2pConnector(host), latest, nickname="alpha")
            agent = Agent([loop])
            nursery.start_soon(agent.run)
            beats = await receiver.wait_for(20)
            assert await agent.stop()
        await receiver.stop()
    heights = [b.height for b in beats]
    assert heights == sorted(heights)
    assert heights[:20] == list(range(1, 21))
    assert receiver.decode_errors == [] and receiver.rejected == []


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


async def test_beats_decode_to_the_static_head(tmp_path: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)
        config = config_for(tmp_path, [receiver.addr])
        started = trio.current_time()
        await nursery.start(
            lambda task_status: run_agent(config, shutdown=stop.wait, task_status=task_status)
        )
        beats = await receiver.wait_for(3)
        stop.set()
        await receiver.wait_streams_ended(1)
        await receiver.stop()
    for beat in beats:
        assert beat.head == "{" + CID_A + "," + CID_B + "}"
        assert beat.height == 4242
        assert beat.nickname == "alpha"
        assert beat.miner_address == "f01234"
        assert beat.version == AGENT_VERSION + STATIC_MARKER  # a static head says so
    # Paced by the 200 ms period, never in a burst: the drift-free timer writes beat
    # k no earlier than k periods after the first, so the last arrival bounds the
    # count from below whatever the machine's load (which only delays beats). The
    # exact schedule is checked on the fake clock (test_agent_loop).
    times = [t for t, _ in receiver.beats]
    assert times[-1] - started >= (len(times) - 1) * 0.2


class _SilentListener:
    """Accepts TCP connections and never answers: a dial to it hangs until its deadline.

    `windows` holds, per accepted connection, its (accepted, closed) trio times;
    closed is None while the dialer still holds it open.
    """

    def __init__(self) -> None:
        self.windows: list[list[float | None]] = []

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(self._handle, 0, host="127.0.0.1", task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        window: list[float | None] = [trio.current_time(), None]
        self.windows.append(window)
        try:
            while await stream.receive_some():  # the dialer's handshake, never answered
                pass
        except trio.BrokenResourceError:
            pass  # a reset by the dialer ends the dial just like a close
        window[1] = trio.current_time()


async def test_a_dead_target_does_not_delay_the_live_one(tmp_path: Path) -> None:
    """The live target keeps beating while a dial to the dead one hangs.

    Checked by what happens, not by timing: beats that reach the live receiver while
    the dead target holds the agent's pending dial open. Were the dial blocking the
    loops, hardly one beat could land inside such a window.
    """
    from libp2p.crypto.ed25519 import create_new_key_pair

    from heartbeat.net.p2p import peer_id_of

    stop = trio.Event()
    silent = _SilentListener()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(silent.serve)
        dead_port = listeners[0].socket.getsockname()[1]
        dead = f"/ip4/127.0.0.1/tcp/{dead_port}/p2p/{peer_id_of(create_new_key_pair())}"
        receiver = Receiver()
        await receiver.start(nursery)
        config = config_for(tmp_path, [dead, receiver.addr], dial_timeout="5s")
        agent = await nursery.start(
            lambda task_status: run_agent(config, shutdown=stop.wait, task_status=task_status)
        )
        await receiver.wait_for(15, timeout=10)
        now = trio.current_time()
        dead_loop = agent.loops[0]
        assert not dead_loop.stats.connected
        assert dead_loop.stats.beats_sent == 0
        stop.set()
        await receiver.wait_streams_ended(1)
        await receiver.stop()
        nursery.cancel_scope.cancel()
    assert silent.windows, "the agent never dialed the dead target"
    during = [
        sum(1 for t, _ in receiver.beats if opened <= t <= (closed if closed is not None else now))
        for opened, closed in silent.windows
        if opened is not None
    ]
    assert max(during) >= 5, (during, silent.windows)


async def test_alerts_target_from_the_environment(tmp_path: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        primary, alerts = Receiver(), Receiver()
        await primary.start(nursery)
        await alerts.start(nursery)
        config = config_for(tmp_path, [primary.addr], FIL_HEARTBEAT_ALERTS=alerts.addr)
        agent = await nursery.start(
            lambda task_status: run_agent(config, shutdown=stop.wait, task_status=task_status)
        )
        [beat] = await alerts.wait_for(1)
        await primary.wait_for(5)
        assert [(lp.target.role, lp.target.beat_period) for lp in agent.loops] == [
            ("primary", 0.2),
            ("alerts", 10.0),
        ]
        assert len(alerts.beats) == 1  # the next alerts beat is 10 s away
        stop.set()
        await alerts.wait_streams_ended(1)
        await primary.stop()
        await alerts.stop()
    assert beat.height == 4242


@pytest.mark.parametrize("down_for", [0.5, 2.5])
async def test_receiver_restart_on_the_same_port(tmp_path: Path, down_for: float) -> None:
    """Beats resume after the first dial that starts once the receiver is back.

    That is "within one reconnect period" without reading a clock: counted on the
    loop's TargetStats, at most one dial begins between the restart and the first
    new beat (a dial already in flight at the restart may succeed or fail).

    0.5 s down: the redial is usually in flight when the receiver comes back.
    2.5 s down: whole dials have failed meanwhile, which py-libp2p's negative
    peer cache would otherwise turn into a 60 s ban of the target.
    """
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)
        # A generous dial deadline: a busy machine must not turn the one dial that
        # counts into a timeout.
        config = config_for(tmp_path, [receiver.addr], dial_timeout="5s")
        agent = await nursery.start(
            lambda task_status: run_agent(config, shutdown=stop.wait, task_status=task_status)
        )
        stats = agent.loops[0].stats
        await receiver.wait_for(3)
        port, peer = receiver.port, receiver.peer_id
        for round_ in range(2):
            failures_before = stats.dial_failures
            await receiver.stop()
            await trio.sleep(down_for)  # the agent notices and redials meanwhile
            before = len(receiver.beats)
            await receiver.start(nursery)
            dials_before = stats.dial_attempts  # a dial begun during start() is in flight
            assert (receiver.port, receiver.peer_id) == (port, peer)
            await receiver.wait_for(before + 3, timeout=15)
            assert stats.connected
            # No further dial can start while the loop stays connected: the count
            # still is the one at the first new beat.
            assert stats.dial_attempts - dials_before <= 1, (round_, stats)
            if down_for > 2:
                assert stats.dial_failures > failures_before, (round_, stats)
        stop.set()
        await receiver.wait_streams_ended(3)
        await receiver.stop()


async def test_sigterm_exits_zero_and_delivers_the_last_beat(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)
        env = {**os.environ, "FIL_HEARTBEAT_TARGETS": receiver.addr}
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "heartbeat",
                "run",
                "--head-source",
                "static",
                "--beat-period",
                "100ms",
                "--identity-file",
                str(tmp_path / "agent.key"),
                "--nickname",
                "sig",
            ],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        try:
            await receiver.wait_for(5, timeout=15)
            proc.send_signal(signal.SIGTERM)
            # Exiting within a couple of seconds is the agent's own STOP_GRACE (checked
            # below through `clean=True`); this bound only turns a hang into a failure.
            with trio.fail_after(15):
                rc = await proc.wait()
            assert proc.stderr is not None
            err = b""
            while chunk := await proc.stderr.receive_some():
                err += chunk
        finally:
            if proc.returncode is None:
                proc.kill()
        await receiver.stop()
    assert rc == 0, err.decode()
    assert "agent_stopped clean=True" in err.decode(), err.decode()
    match = re.search(r"stream_closed target=\S+ beats=(\d+) remote_closed=True", err.decode())
    assert match, err.decode()
    assert len(receiver.beats) == int(match.group(1))
    assert all(b.nickname == "sig" for _, b in receiver.beats)


async def test_a_dns4_target_is_resolved_and_dialed(tmp_path: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)
        target = f"/dns4/localhost/tcp/{receiver.port}/p2p/{receiver.peer_id}"
        config = config_for(tmp_path, [target])
        await nursery.start(
            lambda task_status: run_agent(config, shutdown=stop.wait, task_status=task_status)
        )
        beats = await receiver.wait_for(2)
        stop.set()
        await receiver.wait_streams_ended(1)
        await receiver.stop()
    assert [b.height for b in beats[:2]] == [4242, 4242]


class HoldingReceiver(Receiver):
    """Never closes its side after the sender's EOF: the agent's stop waits its full grace."""

    async def _handle(self, stream: Any) -> None:
        self.streams_opened += 1
        try:
            while data := await stream.read(4096):
                self.beats.append((trio.current_time(), Beat(HEAD, len(data), "held", "")))
                self._notify()
        except StreamClosed:  # EOF or reset: hold our side open regardless
            pass
        await trio.sleep_forever()


HEAD = "{bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2}"


async def test_second_sigterm_during_graceful_stop_still_exits_zero(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        receiver = HoldingReceiver()
        await receiver.start(nursery)
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "heartbeat",
                "run",
                "--target",
                receiver.addr,
                "--head-source",
                "static",
                "--beat-period",
                "100ms",
                "--identity-file",
                str(tmp_path / "agent.key"),
            ],
            env=dict(os.environ),
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        err = b""
        try:
            await receiver.wait_for(2, timeout=15)
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            with trio.fail_after(10):  # the first signal seen: the graceful stop has begun
                while b"shutdown signal=SIGTERM" not in err:
                    chunk = await proc.stderr.receive_some()
                    assert chunk, err.decode()
                    err += chunk
            proc.send_signal(signal.SIGTERM)  # lands within the stop's grace
            with trio.fail_after(15):
                rc = await proc.wait()
            while chunk := await proc.stderr.receive_some():
                err += chunk
        finally:
            if proc.returncode is None:
                proc.kill()
        await receiver.stop()
        nursery.cancel_scope.cancel()
    text = err.decode()
    assert rc == 0, text
    assert "shutdown_signal_ignored signal=SIGTERM" in text, text
    assert "remote_closed=False" in text, text  # the stop waited out its grace


class ResettingReceiver(Receiver):
    """Accepts every stream, reads its first beat, then resets it (a refusing aggregator)."""

    async def _handle(self, stream: Any) -> None:
        self.streams_opened += 1
        try:
            await stream.read(4096)
        except StreamClosed:
            pass
        try:
            await stream.reset()
        except StreamClosed:
            pass
        self.streams_ended += 1
        self._notify()


async def test_streams_reset_at_once_are_paced_by_the_reconnect_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="heartbeat.agent.loop")
    async with trio.open_nursery() as nursery:
        receiver = ResettingReceiver()
        await receiver.start(nursery)
        key = load_or_create_identity(tmp_path / "agent.key")
        async with running_host(key) as host:
            target = parse_target(receiver.addr)
            target = type(target)(
                **{**_fields(target), "beat_period": 0.1, "reconnect_period": 0.5}
            )
            loop = BeatLoop(target, Libp2pConnector(host), lambda: HEAD_OF_A, jitter=0.0)
            agent = Agent([loop])
            nursery.start_soon(agent.run)
            await eventually(lambda: loop.stats.streams_died_early >= 3, timeout=20)
            assert await agent.stop(grace=3)
        await receiver.stop()
    # At most one dial per reconnect period plus the beats before the reset, never one per
    # beat period: 3 early deaths need at least 2 reconnect periods between them.
    assert loop.stats.dial_attempts <= loop.stats.streams_died_early + 1
    records = [(lvl, m) for n, lvl, m in caplog.record_tuples if n == "heartbeat.agent.loop"]
    died = [(lvl, m) for lvl, m in records if m.startswith("stream_died_early")]
    assert len(died) >= 3
    assert [lvl for lvl, _ in died[:3]] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert sum(1 for lvl, m in records if m.startswith("connected")) == 1
    assert not any(m.startswith("disconnected") for _, m in records)


HEAD_OF_A = Head(cids=(CID_A,), height=7)
