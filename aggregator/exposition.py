"""The Prometheus text format, written by hand: the name prefix, escaping and sample values.

Shared by the hand-written fleet families (aggregator/fleet_metrics.py) and the self families.
"""

from __future__ import annotations

import math

__all__ = ["CONTENT_TYPE", "PREFIX", "escape_label_value"]

PREFIX = "fil_heartbeat_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote, line feed escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(value: float) -> str:
    """A sample value: integers without a fraction, other floats in their shortest exact form."""
    if type(value) is int:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2.0**53:
        return str(int(value))
    return repr(value)


def _header(name: str, kind: str, doc: str) -> str:
    # prometheus_client names a counter's HELP/TYPE lines after its `_total` sample: do the same
    shown = name + "_total" if kind == "counter" else name
    return f"# HELP {shown} {_escape_help(doc)}\n# TYPE {shown} {kind}\n"


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
