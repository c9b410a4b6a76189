"""A real NATS JetStream cluster on loopback for integration tests and benchmarks.

`nats_cluster(tmp_path, n=3)` starts `n` `nats-server` processes (Debian's package), each
with JetStream (its store under `tmp_path`), a client port, a route port and a monitoring
port, all free loopback ports picked beforehand (routes cannot use port 0: every member must
know the others' ports). It waits until the cluster has a JetStream meta leader, yields a
`NatsCluster`, and stops every process it started (by PID: SIGTERM, then SIGKILL) on exit.
`kill(i)` SIGKILLs one member, `start(i)` restarts it on the same ports and store.

Tests that use it carry `@pytest.mark.integration` and `@pytest.mark.requires_tools("nats-server")`.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.promservers import free_port, stop_process, tool_path

__all__ = ["NatsCluster", "nats_cluster", "nats_cluster_blocking"]


@dataclass
class _Member:
    name: str
    client_port: int
    route_port: int
    http_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[Any] | None = None


@dataclass
class NatsCluster:
    """The members of a running cluster; indexes are 0 .. n-1."""

    members: list[_Member]
    binary: str
    pids: list[int] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{m.client_port}" for m in self.members]

    def url(self, i: int) -> str:
        return self.urls[i]

    def running(self, i: int) -> bool:
        proc = self.members[i].proc
        return proc is not None and proc.poll() is None

    def log(self, i: int) -> str:
        return self.members[i].log.read_text(errors="replace")

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        with m.log.open("ab") as out:
            m.proc = subprocess.Popen(
                [self.binary, "-c", str(m.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pids.append(m.proc.pid)

    def kill(self, i: int) -> None:
        """SIGKILL member `i` (a crash: no lame-duck, no goodbye to the cluster)."""
        proc = self.members[i].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def start_blocking(self, i: int, timeout: float = 20.0) -> None:
        if not self.running(i):
            self._spawn(i)
        self._wait_healthy([i], timeout, "/varz")

    async def start(self, i: int, timeout: float = 20.0) -> None:
        """Restart member `i` on its ports and store; returns once it is up (its JetStream
        may still wait for a quorum: see `wait_meta_leader`)."""
        if not self.running(i):
            self._spawn(i)
        await trio.to_thread.run_sync(self._wait_healthy, [i], timeout, "/varz")

    def stop_all(self) -> None:
        for m in self.members:
            if m.proc is not None:
                stop_process(m.proc)

    def _jsz(self, i: int) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.members[i].http_port}/jsz", timeout=1.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def _wait_healthy(self, indexes: list[int], timeout: float, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        pending = set(indexes)
        while pending:
            for i in sorted(pending):
                proc = self.members[i].proc
                if proc is None or proc.poll() is not None:
                    raise RuntimeError(f"nats-server {i} exited:\n{self.log(i)}")
                try:
                    r = httpx.get(
                        f"http://127.0.0.1:{self.members[i].http_port}{path}", timeout=1.0
                    )
                    if r.status_code == 200:
                        pending.discard(i)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {sorted(pending)} not healthy in {timeout}s")
            if pending:
                time.sleep(0.1)

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        """Block until a running member reports a JetStream meta leader; its server name."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(len(self.members)):
                if not self.running(i):
                    continue
                jsz = self._jsz(i)
                meta = (jsz or {}).get("meta_cluster") or {}
                leader = meta.get("leader")
                if leader:
                    return str(leader)
                if jsz is not None and len(self.members) == 1:
                    return self.members[0].name
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JetStream meta leader within {timeout}s")
            time.sleep(0.2)


def _configure(tmp: Path, n: int) -> list[_Member]:
    ports = [(free_port(), free_port(), free_port()) for _ in range(n)]
    routes = ", ".join(f"nats-route://127.0.0.1:{route}" for _, route, _ in ports)
    members = []
    for i, (client, route, http) in enumerate(ports):
        name = f"n{i + 1}"
        store = tmp / f"js{i + 1}"
        store.mkdir(parents=True, exist_ok=True)
        cluster = (
            f"cluster {{ name: fhb, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n"
            if n > 1
            else ""
        )
        config = tmp / f"{name}.conf"
        config.write_text(
            f"listen: 127.0.0.1:{client}\n"
            f"http: 127.0.0.1:{http}\n"
            f"server_name: {name}\n"
            f'jetstream {{ store_dir: "{store}" }}\n' + cluster
        )
        members.append(_Member(name, client, route, http, config, tmp / f"{name}.log"))
    return members


@contextlib.contextmanager
def nats_cluster_blocking(tmp: Path, n: int = 3) -> Iterator[NatsCluster]:
    """The synchronous form (benchmarks, threads): see the module docstring."""
    binary = tool_path("nats-server")
    if binary is None:
        raise RuntimeError("nats-server is not installed (`scripts/setup --system`)")
    tmp.mkdir(parents=True, exist_ok=True)
    cluster = NatsCluster(_configure(tmp, n), binary)
    try:
        for i in range(n):
            cluster._spawn(i)
        cluster._wait_healthy(list(range(n)), 30.0)
        cluster.wait_meta_leader()
        yield cluster
    finally:
        cluster.stop_all()


@contextlib.asynccontextmanager
async def nats_cluster(tmp: Path, n: int = 3) -> AsyncIterator[NatsCluster]:
    """Start an `n`-member JetStream cluster under `tmp`; stop it on exit (see module doc)."""
    manager = nats_cluster_blocking(tmp, n)
    cluster = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)
