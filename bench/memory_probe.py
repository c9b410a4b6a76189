"""The aggregator with a memory probe, for bench_memory (never used in production).

Runs `python -m aggregator` in this process, under tracemalloc from the start when
`$BENCH_TRACEMALLOC_FRAMES` > 0 (a traced aggregator accepts connections ~5x slower). A
daemon thread polls
`$BENCH_PROBE_DIR/probe.req` for a command and a NAME, and answers with
`$BENCH_PROBE_DIR/NAME.json`. `snapshot NAME` writes, in this order (so that the probe's own
garbage never reaches the figures it reports):

- `rss_kb` (VmRSS), glibc's `mallinfo2` (bytes in use and free in malloc's heap and mmaps),
  pymalloc's arenas (from `sys._debugmallocstats`, which prints nothing under tracemalloc),
  tracemalloc's traced total and its own overhead;
- with tracemalloc on: every traced block, dumped raw to `NAME.traces` (marshal), which
  `group_traces` groups four ways in the bench's own process (`by_line`: the allocating
  file:line; `by_module`: its module; `by_owner`: the innermost frame outside the standard
  library and trio, i.e. which code of ours or of py-libp2p asked for it; `by_owner_module`),
  as {key: [bytes, blocks]};
- the gc-tracked objects by type (`types`: {module.qualname: count}).

`light NAME`: only the sizes (RSS, malloc, pymalloc), for the plain runs. `collect NAME`:
`gc.collect()`, then the sizes: what a full collection frees (cyclic garbage the raised GC
thresholds let live) is the difference.

    BENCH_PROBE_DIR=/tmp/p .venv/bin/python -m bench.memory_probe run --listen …
"""

from __future__ import annotations

import ctypes
import gc
import json
import marshal
import os
import re
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["group_traces", "main", "module_of", "request", "take"]

_STDLIB = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
#: Frames in these are "plumbing": the owner of a block is the innermost frame outside them.
_PLUMBING = ("/trio/", "/outcome/", "/sniffio/", "/attr/", "/typing_extensions")
_MODULE_ROOTS = [p for p in sys.path if p] + [str(Path(__file__).resolve().parent.parent)]


def module_of(filename: str) -> str:
    """A dotted module name for a source file (`<frozen …>` and the like unchanged)."""
    best = ""
    for root in _MODULE_ROOTS:
        root = root.rstrip("/") + "/"
        if filename.startswith(root) and len(root) > len(best):
            best = root
    if not best:
        return filename
    rel = filename[len(best) :].removesuffix(".py").removesuffix("/__init__")
    return rel.replace("/", ".")


def _is_plumbing(filename: str) -> bool:
    if filename.startswith(_STDLIB) and "site-packages" not in filename:
        return True
    return filename.startswith("<") or any(part in filename for part in _PLUMBING)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int]:
    """glibc's heap: `arena` (sbrk heap) + `hblkhd` (mmapped), `uordblks` in use,
    `fordblks` free inside the heap (fragmentation, or not yet returned)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {field[0]: int(getattr(info, field[0])) for field in _MallInfo2._fields_}


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas and its allocated/free bytes, parsed from `sys._debugmallocstats`."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    wanted = {
        "arenas allocated current": "arenas_current",
        "bytes in allocated blocks": "allocated_bytes",
        "bytes in available blocks": "available_bytes",
    }
    stats: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"#?\s*(.+?)\s*=\s*([\d,]+)\s*$", line)
        if match and match.group(1) in wanted:
            stats[wanted[match.group(1)]] = int(match.group(2).replace(",", ""))
        elif match and match.group(1) == "Total" and "arena_bytes" not in stats:
            stats["arena_bytes"] = int(match.group(2).replace(",", ""))  # the first Total
    return stats


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def group_traces(path: Path) -> dict[str, dict[str, list[int]]]:
    """The traced blocks dumped by `take` (tracemalloc's raw traces, frames most recent
    first), grouped by site: run in the bench's process, not under tracemalloc.

    The keys of a traceback are computed once: tracemalloc shares one frames tuple between
    every block allocated from the same traceback.
    """
    groups: dict[str, dict[str, list[int]]] = {
        "by_line": {},
        "by_module": {},
        "by_owner": {},
        "by_owner_module": {},
    }
    modules: dict[str, str] = {}
    keys_of: dict[int, tuple[tuple[str, str], ...]] = {}
    with path.open("rb") as dump:
        traces = marshal.load(dump)
    for _domain, size, frames, _total in traces:
        keys = keys_of.get(id(frames))
        if keys is None:
            inner = frames[0]
            owner = next((f for f in frames if not _is_plumbing(f[0])), inner)
            out = []
            sites = ((inner, ("by_line", "by_module")), (owner, ("by_owner", "by_owner_module")))
            for (filename, lineno), kinds in sites:
                module = modules.get(filename)
                if module is None:
                    module = modules[filename] = module_of(filename)
                out += [(kinds[0], f"{module}:{lineno}"), (kinds[1], module)]
            keys = keys_of[id(frames)] = tuple(out)
        for group, key in keys:
            slot = groups[group].get(key)
            if slot is None:
                groups[group][key] = [size, 1]
            else:
                slot[0] += size
                slot[1] += 1
    return groups


def take(
    directory: Path, name: str, *, collect: bool = False, light: bool = False
) -> dict[str, Any]:
    """One snapshot, written to `directory/NAME.json` (see the module docstring).

    `light`: only the sizes (RSS, malloc, pymalloc), nothing that allocates much.
    """
    t0 = time.monotonic()
    freed = gc.collect() if collect else 0
    out: dict[str, Any] = {
        "name": name,
        "collected": freed,
        "rss_kb": _rss_kb(),
        "mallinfo": _mallinfo(),
        "pymalloc": _pymalloc(),
        "tracing": tracemalloc.is_tracing(),
        "gc_counts": list(gc.get_count()),
        "gc_frozen": gc.get_freeze_count(),
    }
    if tracemalloc.is_tracing():
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        out["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
    if tracemalloc.is_tracing() and not light:
        # Grouped by the bench: Python code here would run traced, 10x slower.
        traces = tracemalloc._get_traces()  # type: ignore[attr-defined]
        with (directory / f"{name}.traces").open("wb") as dump:
            marshal.dump(traces, dump)
        del traces
        out["traces_file"] = str(directory / f"{name}.traces")
    if not light:
        types = Counter(map(type, gc.get_objects()))
        out["types"] = {f"{t.__module__}.{t.__qualname__}": n for t, n in types.items()}
    out["probe_s"] = time.monotonic() - t0
    tmp = directory / f"{name}.json.tmp"
    tmp.write_text(json.dumps(out))
    os.replace(tmp, directory / f"{name}.json")
    return out


def _control(directory: Path) -> None:
    req = directory / "probe.req"
    while True:
        time.sleep(0.2)
        if not os.path.exists(req):  # cheap: this thread shares the GIL with the event loop
            continue
        command, _, name = req.read_text().strip().partition(" ")
        if command in ("snapshot", "collect", "light") and name:
            take(
                directory, name, collect=command == "collect", light=command in ("light", "collect")
            )
        req.unlink()


def request(directory: Path, command: str, name: str, timeout: float = 300.0) -> dict[str, Any]:
    """Ask a running probe for `snapshot`, `light` or `collect` NAME; its JSON."""
    out = directory / f"{name}.json"
    if out.exists():
        out.unlink()
    (directory / "probe.req").write_text(f"{command} {name}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            return dict(json.loads(out.read_text()))
        time.sleep(0.2)
    raise TimeoutError(f"memory probe did not answer {command} {name}")


def main() -> int:
    if "BENCH_PROBE_DIR" not in os.environ:  # run by the benchmarks, which set it
        print(__doc__)
        return 0 if {"-h", "--help"} & set(sys.argv[1:]) else 2
    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "0"))
    if frames > 0:
        tracemalloc.start(frames)
    directory = Path(os.environ["BENCH_PROBE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_control, args=(directory,), daemon=True).start()
    from aggregator.__main__ import main as aggregator_main

    return aggregator_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
