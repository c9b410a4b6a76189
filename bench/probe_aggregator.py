"""The aggregator with a latency probe, for bench_latency (never used in production).

Runs `python -m aggregator` in this process after wrapping the fleet subscriber: every
`BeatAccepted` whose Version carries a load generator stamp (`lg t=<CLOCK_MONOTONIC ns>`, sent
with `fil-heartbeat loadgen --stamp` on the same machine) records `now - stamp` right after
the fleet model applied the beat: the beat→fleet-model latency, sender's encode, Noise, Yamux,
the ingest, the bus and the fleet update included.

It also serves `/metrics-thread`: the same exposition rendered in a worker thread (how
`/metrics` was served before), to compare with `/metrics` (rendered on the event loop in
batches of 500 nodes) under the same load (bench_scrape.py).

Control without touching the event loop: a daemon thread polls `$BENCH_PROBE_DIR/probe.req`;
`reset` clears the samples, `dump` writes them (ns) to `$BENCH_PROBE_DIR/latency.json`.

    BENCH_PROBE_DIR=/tmp/p .venv/bin/python -m bench.probe_aggregator run --listen …
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aggregator.app as app
from aggregator.bus import BeatAccepted
from heartbeat.tools.loadgen import parse_stamp

__all__ = ["SAMPLES", "main", "request"]

SAMPLES: deque[int] = deque(maxlen=1_000_000)
_SUBSCRIBER = "fleet_subscriber" if hasattr(app, "fleet_subscriber") else "_fleet_subscriber"
_original = getattr(app, _SUBSCRIBER)


def _probed(fleet: Any) -> Callable[[Any], None]:
    update = _original(fleet)
    clock = time.monotonic_ns
    append = SAMPLES.append

    def probe(event: Any) -> None:
        update(event)
        if type(event) is BeatAccepted:
            sent = parse_stamp(event.beat.version)
            if sent is not None:
                append(clock() - sent)

    return probe


def _control(directory: Path) -> None:
    req = directory / "probe.req"
    while True:
        time.sleep(0.5)
        if not os.path.exists(req):  # cheap: this thread shares the GIL with the event loop
            continue
        command = req.read_text().strip()
        if command == "reset":
            SAMPLES.clear()
        elif command == "dump":
            tmp = directory / "latency.json.tmp"
            tmp.write_text(json.dumps(list(SAMPLES)))
            os.replace(tmp, directory / "latency.json")
        req.unlink()


def request(directory: Path, command: str, timeout: float = 30.0) -> list[int] | None:
    """Send `reset` or `dump` to a probe; the samples (ns) for `dump`."""
    out = directory / "latency.json"
    if command == "dump" and out.exists():
        out.unlink()
    (directory / "probe.req").write_text(command)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if command == "dump" and out.exists():
            return list(json.loads(out.read_text()))
        if command != "dump" and not (directory / "probe.req").exists():
            return None
        time.sleep(0.1)
    raise TimeoutError(f"probe did not answer {command!r}")


def _serve_metrics_thread() -> None:
    import trio

    from aggregator import http
    from aggregator.exposition import CONTENT_TYPE

    route = http.HttpApi._route

    async def probed_route(
        self: Any, method: str, path: str, query: str = ""
    ) -> tuple[int, bytes, bytes]:
        if path == "/metrics-thread" and self.metrics is not None:
            prepared = self.metrics.prepare()
            body = await trio.to_thread.run_sync(self.metrics.render_prepared, prepared)
            return 200, CONTENT_TYPE.encode(), body
        return await route(self, method, path, query)

    http.HttpApi._route = probed_route  # type: ignore[method-assign]


def main() -> int:
    if "BENCH_PROBE_DIR" not in os.environ:  # run by the benchmarks, which set it
        print(__doc__)
        return 0 if {"-h", "--help"} & set(sys.argv[1:]) else 2
    _serve_metrics_thread()
    directory = Path(os.environ["BENCH_PROBE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    setattr(app, _SUBSCRIBER, _probed)
    threading.Thread(target=_control, args=(directory,), daemon=True).start()
    from aggregator.__main__ import main as aggregator_main

    return aggregator_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
