"""Shared helpers of the capacity benchmarks (and the resilience tests).

- `AggregatorProcess`: `python -m aggregator run` as a subprocess on loopback (ports chosen by
  the kernel), with its multiaddr and HTTP URL read from its stdout, its RSS and CPU time read
  from /proc, its /metrics parsed, and SIGTERM / SIGKILL by its own pid.
- `run_loadgen` / `LoadgenProcess`: `python -m heartbeat.tools.loadgen … --json` as a subprocess.
- `spread` and `print_table`: every figure is the median of several runs with min and max.

Blocking code (subprocess and urllib): benchmark scripts are plain Python, not trio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "PYTHON",
    "REPO",
    "AggregatorProcess",
    "LoadgenProcess",
    "add_aggregator_variants",
    "http_get",
    "metric_sum",
    "print_table",
    "proc_children",
    "proc_cpu_seconds",
    "proc_rss_kb",
    "run_loadgen",
    "spread",
    "start_py_spy",
    "start_workers",
    "variant_flags",
    "wait_for",
]

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def metric_sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of the `samples` (as `AggregatorProcess.metrics` returns) named `name` whose
    labels include `labels`: several figures from one scrape."""
    want = set(labels.items())
    return sum(value for (n, lab), value in samples.items() if n == name and want <= set(lab))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


def proc_children(pid: int) -> list[int]:
    """`pid`'s live child processes (per thread in /proc: trio spawns from a thread)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(out)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return bytes(response.read())


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate()` until true or `timeout` seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _or_zero(read: Any, pid: int) -> Any:
    try:
        return read(pid)
    except (OSError, LookupError):  # exited meanwhile
        return 0


class AggregatorProcess:
    """One aggregator subprocess on loopback."""

    def __init__(self, proc: subprocess.Popen[bytes], multiaddr: str, http_url: str) -> None:
        self.proc = proc
        self.multiaddr = multiaddr
        self.http_url = http_url

    @classmethod
    def start(
        cls,
        workdir: Path,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        log_path: Path | None = None,
        module: str = "aggregator",
        source: Path | None = None,
    ) -> AggregatorProcess:
        """Start with its identity and state db in `workdir` (reused across restarts);
        `source`: run the code of another source tree (an A/B comparison), not REPO's."""
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            PYTHON,
            "-m",
            module,
            "run",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
            "--http-listen",
            "127.0.0.1:0",
            "--identity-file",
            str(workdir / "aggregator.key"),
            "--state-db",
            str(workdir / "aggregator.db"),
            "--log-level",
            "WARNING",
            *args,
        ]
        log_file = open(log_path or workdir / "aggregator.log", "ab")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=source or REPO,
            env={**os.environ, **(env or {})},
        )
        log_file.close()
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        # It prints its multiaddrs, then its HTTP URL, once everything listens.
        while time.monotonic() < deadline:
            raw = proc.stdout.readline()
            if not raw:
                break
            line = raw.decode().strip()
            lines.append(line)
            if line.startswith("http://"):
                return cls(proc, lines[0], line)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"aggregator did not start: {lines!r} (log in {workdir})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.multiaddr.split("/")[4])

    def pids(self) -> list[int]:
        """This process and its ingest workers (`--workers N`)."""
        return [self.pid, *proc_children(self.pid)]

    def rss_kb(self) -> int:
        """RSS of the whole group (worker 0 and its workers)."""
        return int(sum(_or_zero(proc_rss_kb, pid) for pid in self.pids()))

    def cpu_seconds(self) -> float:
        """CPU of the whole group so far (a worker that died takes its share with it)."""
        return float(sum(_or_zero(proc_cpu_seconds, pid) for pid in self.pids()))

    def metrics(
        self, timeout: float = 60.0
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) → value.

        Rendering takes seconds with thousands of nodes on a busy aggregator: a long timeout.
        """
        text = http_get(self.http_url + "/metrics", timeout).decode()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        return metric_sum(self.metrics(), name, **labels)

    def nodes(self) -> list[dict[str, Any]]:
        data = json.loads(http_get(self.http_url + "/api/v1/nodes"))
        return list(data["nodes"] if isinstance(data, dict) else data)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown, the store flushed), then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the crash the resilience tests inflict."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> AggregatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_aggregator_variants(p: argparse.ArgumentParser) -> None:
    """The aggregator's layout and its "before" switches (`variant_flags`), for the benches."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        choices=(1, 2, 3, 4),
        help="the aggregator's --workers: ingest processes on its port",
    )
    p.add_argument(
        "--no-fast-task-lookup",
        dest="fast_task_lookup",
        action="store_false",
        help="the aggregator keeps py-libp2p's O(n) parent-task search (the 'before')",
    )
    p.add_argument(
        "--no-throttle-reconcile",
        dest="throttle_reconcile",
        action="store_false",
        help="py-libp2p's reconcile on every accept (the 'before')",
    )
    p.add_argument(
        "--identify-peers",
        action="store_true",
        help="the aggregator identifies every agent (py-libp2p's default; the 'before')",
    )
    p.add_argument(
        "--aggregator-arg",
        action="append",
        default=[],
        help="extra aggregator flag (repeatable), e.g. "
        "--aggregator-arg=--yamux-release-on-read (py-libp2p's Yamux credit, the "
        "'before')",
    )


def variant_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The aggregator flags of `add_aggregator_variants`' options (not `--workers`): the
    "before" switches (py-libp2p's O(n) parent-task search, its reconcile on every accept,
    identify towards every agent) and the extra `--aggregator-arg`s."""
    flags = () if args.fast_task_lookup else ("--no-fast-task-lookup",)
    flags = flags if args.throttle_reconcile else (*flags, "--no-throttle-reconcile")
    flags = (*flags, "--identify-peers") if args.identify_peers else flags
    return (*flags, *args.aggregator_arg)


def start_workers(workdir: Path, workers: int, *args: str, **kw: Any) -> list[AggregatorProcess]:
    """`workers` aggregator processes sharing one identity and one TCP port.

    py-libp2p 0.8.1 opens every TCP listener with SO_REUSEPORT, so the kernel spreads new
    connections over the processes; each keeps its own fleet view, state db and HTTP port.
    """
    first = AggregatorProcess.start(workdir / "w0", *args, **kw)
    procs = [first]
    try:
        for i in range(1, workers):
            wdir = workdir / f"w{i}"
            wdir.mkdir(parents=True, exist_ok=True)
            key = wdir / "aggregator.key"
            key.write_bytes((workdir / "w0" / "aggregator.key").read_bytes())
            key.chmod(0o600)
            procs.append(AggregatorProcess.start(wdir, *args, port=first.port, **kw))
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


def _loadgen_cmd(target: str, args: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "heartbeat.tools.loadgen", "--target", target, "--json", *args]


class LoadgenProcess:
    """A load generator running in the background; `result()` waits for its JSON summary."""

    def __init__(self, target: str, *args: str) -> None:
        # stderr to a file: a full pipe would block the load generator.
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            _loadgen_cmd(target, args), stdout=subprocess.PIPE, stderr=self._err, cwd=REPO
        )

    def _stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError(f"loadgen timed out: {self._stderr()}") from None
        if not out.strip():
            raise RuntimeError(f"loadgen failed ({self.proc.returncode}): {self._stderr()}")
        summary = dict(json.loads(out))
        errors = [w["error"] for w in summary.get("workers", []) if w.get("error")]
        if errors:
            raise RuntimeError(f"loadgen worker failed: {errors} {self._stderr()}")
        return summary


def run_loadgen(target: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run the load generator to completion; its JSON summary."""
    return LoadgenProcess(target, *args).result(timeout)


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max of several runs."""
    vals = list(values)
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_spread(values: Iterable[float], fmt: str = "{:.0f}") -> str:
    s = spread(values)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def start_py_spy(out: str, pid: int, duration: float) -> subprocess.Popen[bytes]:
    """`py-spy record` of `pid` for `duration` s into `out` (collapsed stacks, 100 Hz, CPU
    samples only, e.g. for flamegraph.pl or a grep); py-spy from the venv or PATH."""
    exe = Path(sys.executable).parent / "py-spy"
    spy = str(exe) if exe.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")
    cmd = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
    cmd += ["--duration", f"{duration:.0f}", "--nonblocking", "-o", out]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine_note() -> str:
    """CPU count and load average, to print beside every figure."""
    load = os.getloadavg()
    return f"cpus={os.cpu_count()} load_avg={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}"
