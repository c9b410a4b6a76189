"""Both programs run in their systemd units' sandbox, as far as it applies without systemd
as PID 1: MemoryDenyWriteExecute= (the kernel's PR_SET_MDWE, which systemd uses where the
kernel has it), and, through libseccomp as systemd does it, SystemCallFilter= with
SystemCallErrorNumber=, SystemCallArchitectures=native, RestrictAddressFamilies= and
NoNewPrivileges=. The filters are read from packaging/systemd/*.service and the system call
groups from `systemd-analyze syscall-filter`, so a change to a unit is what is tested.

The aggregator runs with --workers 2 and an agent beats to it: beats, /metrics and the status
page must work inside the sandbox. (ProtectSystem=strict and the other mount options need
systemd; an strace of both programs found writes only in the state directory and /tmp.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import eventually_blocking
from tests.test_packaging import REPO, one, require_tool, run, service

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_CMP_EQ = 0x7FFF0000, 0x00050000, 4
#: Allowed whatever the filter says (systemd.exec(5), SystemCallFilter=).
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


class ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def allowed_syscalls(analyze: str, svc: Mapping[str, list[str]]) -> set[str]:
    """The system calls the unit's SystemCallFilter= lines leave allowed."""
    groups: dict[str, list[str]] = {}
    for line in run([analyze, "syscall-filter"]).stdout.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.lstrip().startswith("#"):
            members.append(line.strip())

    def expand(names: list[str]) -> set[str]:
        return set().union(*(expand(groups[n]) if n[0] == "@" else {n} for n in names))

    filters = svc["SystemCallFilter"]
    assert not filters[0].startswith("~"), "the first SystemCallFilter= is an allow list"
    allowed = expand(filters[0].split())
    for deny in filters[1:]:
        assert deny.startswith("~")
        allowed -= expand(deny[1:].split())
    return allowed | IMPLICIT


class Sandbox:
    """A seccomp filter built here, loaded (with MDWE) in the child before exec."""

    def __init__(self, analyze: str, svc: Mapping[str, list[str]]) -> None:
        found = ctypes.util.find_library("seccomp")
        if found is None:
            require_tool("libseccomp.so.2", "libseccomp2")
        lib = self.lib = ctypes.CDLL(found or "libseccomp.so.2")
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
        ]  # fmt: skip
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        refusal = SCMP_ACT_ERRNO | getattr(errno, one(svc, "SystemCallErrorNumber"))
        self.ctx = lib.seccomp_init(refusal)
        families = [getattr(socket, f) for f in one(svc, "RestrictAddressFamilies").split()]
        for name in sorted(allowed_syscalls(analyze, svc)):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call of this architecture
            if name in ("socket", "socketpair"):  # RestrictAddressFamilies=: the first argument
                for family in families:
                    same = ctypes.byref(ArgCmp(0, SCMP_CMP_EQ, family, 0))
                    assert lib.seccomp_rule_add_array(self.ctx, SCMP_ACT_ALLOW, nr, 1, same) == 0
            else:
                assert lib.seccomp_rule_add_array(self.ctx, SCMP_ACT_ALLOW, nr, 0, None) == 0

    def apply(self) -> None:  # in the child, before exec
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
        if self.lib.seccomp_load(self.ctx):  # sets no_new_privs too
            raise OSError("seccomp_load")


_PROBE = """
import mmap, os, socket
def refused(call, *args):
    try:
        call(*args)
    except OSError:
        return True
    return False
print(refused(mmap.mmap, -1, 4096, 0x01, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),
      refused(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW),
      refused(os.sched_setaffinity, 0, {0}),
      refused(socket.socket, socket.AF_INET6, socket.SOCK_STREAM))
"""


@contextmanager
def started(
    args: list[str], log: Path, env: Mapping[str, str], sandbox: Sandbox
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=dict(env),
            preexec_fn=sandbox.apply,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _found(pattern: str, log: Path, proc: subprocess.Popen[bytes]) -> str | None:
    assert proc.poll() is None, log.read_text(errors="replace")
    match = re.search(pattern, log.read_text(errors="replace"), re.M)
    return match.group(1) if match else None


@pytest.mark.integration
def test_programs_run_in_the_units_sandbox(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    agg_box = Sandbox(analyze, service("fil-heartbeat-aggregator"))
    agent_box = Sandbox(analyze, service("fil-heartbeat"))
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30,
            preexec_fn=agent_box.apply, check=False,
        )  # fmt: skip
    except subprocess.SubprocessError as exc:  # the kernel has no PR_SET_MDWE (Linux < 6.3)
        pytest.skip(f"cannot apply the sandbox here: {exc}")
    # W+X memory, a netlink socket and @resources refused; IPv6 sockets allowed
    assert probe.stdout.split() == ["True", "True", "True", "False"], probe.stderr
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    agg_log, agent_log = tmp_path / "aggregator.log", tmp_path / "agent.log"
    listen = "run --listen /ip4/127.0.0.1/tcp/0 --http-listen 127.0.0.1:0 --workers 2".split()
    aggregator = [sys.executable, "-m", "aggregator", *listen]
    with started(aggregator, agg_log, env, agg_box) as agg:
        addr = eventually_blocking(
            lambda: _found(r"^(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)$", agg_log, agg),
            timeout=30,
            what="the aggregator's multiaddr",
        )
        url = eventually_blocking(
            lambda: _found(r"^(http://127\.0\.0\.1:\d+)$", agg_log, agg), timeout=10, what="URL"
        )
        beat = "run --head-source simulated --nickname boxed --beat-period 1s".split()
        agent = [sys.executable, "-m", "heartbeat", *beat, "--target", addr]
        agent += ["--metrics-listen", "127.0.0.1:0"]
        with started(agent, agent_log, env, agent_box) as beating:

            def node_up() -> bool:
                assert beating.poll() is None, agent_log.read_text(errors="replace")
                nodes = httpx.get(f"{url}/api/v1/nodes", timeout=5).json()
                return any(n["nickname"] == "boxed" and n["up"] for n in nodes)

            eventually_blocking(
                node_up, timeout=30, what="the agent's beats", transient=(httpx.HTTPError,)
            )
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            assert "process_resident_memory_bytes" in metrics
            assert 'nickname="boxed"' in metrics
            assert 'fil_heartbeat_worker_up{worker="1"} 1.0' in metrics
            if (REPO / "aggregator" / "statuspage" / "static").is_dir():
                # the status page and one of its static files
                page = httpx.get(f"{url}/", timeout=5)
                assert page.status_code == 200, page.text[:500]
                asset = re.search(r'"(/static/[^"?]+)', page.text)
                assert asset is not None, page.text[:500]
                assert httpx.get(url + asset.group(1), timeout=5).status_code == 200
        assert beating.returncode == 0, agent_log.read_text(errors="replace")
    assert agg.returncode == 0, agg_log.read_text(errors="replace")
