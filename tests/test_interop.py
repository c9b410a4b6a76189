"""Interop details found against js-libp2p senders, over real libp2p on loopback.

- a stream that ends inside a beat is counted as ``truncated``, logged and reset;
- a final legacy JSON beat without its newline is decoded at end of stream;
- a bare CID ``Head`` (no braces) is a one-block tipset key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from heartbeat.protocol.wire import Beat, encode_cbor
from tests.helpers import eventually
from tests.legacy_sender import legacy_line, scripted_sender
from tests.test_aggregator_e2e import GENESIS, make_config, running

pytestmark = pytest.mark.integration

CID = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"


def cbor_beat(height: int, nickname: str, head: str = "{" + CID + "}") -> bytes:
    beat = Beat(head, height, nickname, "f01234", GENESIS)
    return encode_cbor(beat)


async def test_stream_ending_inside_a_beat_is_counted_logged_and_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60), caplog.at_level(logging.WARNING, logger="aggregator.ingest"):
        async with running(make_config(tmp_path)) as agg:
            async with scripted_sender(agg.multiaddrs[0]) as sender:
                second = cbor_beat(2, "cut")
                await sender.write(cbor_beat(1, "cut") + second[: len(second) // 2])
                await eventually(lambda: agg.ingest.counters.beats_accepted == 1)
                await sender.stream.close()  # half-close: the end of our stream
                assert await sender.read_until_closed(10) == "closed"
            counters = agg.ingest.counters
            await eventually(lambda: counters.decode_errors.get("truncated") == 1)
            assert counters.beats_accepted == 1
    garbage = [m for (_, _, m) in caplog.record_tuples if m.startswith("stream_garbage")]
    assert len(garbage) == 1 and "reason=truncated" in garbage[0]


async def test_final_legacy_beat_without_newline_and_bare_cid_head(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running(make_config(tmp_path)) as agg:
            async with scripted_sender(agg.multiaddrs[0]) as legacy:
                last = json.dumps(
                    {"Head": CID, "Height": 8, "Nickname": "js", "MinerAddress": "t01234"}
                ).encode()
                await legacy.write(legacy_line(7, nickname="js") + last)  # no final newline
                await legacy.finish()
            counters = agg.ingest.counters
            await eventually(lambda: counters.beats_accepted == 2)
            assert dict(counters.beats_rejected) == {}
            assert dict(counters.decode_errors) == {}
            node = agg.snapshot().node(legacy.peer_id)
            assert node is not None
            assert node.height == 8
