"""Generate the fil-heartbeat Grafana dashboards with grafana-foundation-sdk.

    python grafana/dashboards.py            # rewrite grafana/dashboards/*.json
    python grafana/dashboards.py --check    # exit 1 when the committed files differ

The dashboards are built in the `dashgen` package beside this script (`parts`: datasource,
variables and helpers; `fleet`, `node`: the two dashboards; `table`, `agents`: their
larger rows). Every panel and query uses the `datasource` template variable (file
provisioning does not substitute `${DS_PROMETHEUS}`); its default is the provisioned
datasource's fixed uid. Queries use the aggregator's and the agents' metrics and the
recording rules of prometheus/rules.yml. The files are classic dashboard JSON at the
SDK's schemaVersion (41: Grafana 11.6 and 12.x, grafana/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder

# `dashgen` lives beside this script, which is run as a file (not from an installed package)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashgen import agents, fleet, node, parts, table
from dashgen.fleet import fleet_overview
from dashgen.node import node_detail
from dashgen.parts import DATASOURCE_UID

__all__ = [
    "DATASOURCE_UID",
    "OUT_DIR",
    "agents",
    "fleet",
    "fleet_overview",
    "main",
    "node",
    "node_detail",
    "panel_queries",
    "parts",
    "render_all",
    "table",
]

OUT_DIR = Path(__file__).resolve().parent / "dashboards"


def _to_json(builder: cogbuilder.Builder[Any]) -> str:
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        "fleet-overview.json": _to_json(fleet_overview()),
        "node-detail.json": _to_json(node_detail()),
    }


def panel_queries(model_json: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel in a dashboard."""
    out: list[tuple[str, str]] = []
    for panel in model_json.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(
            f"out of date: {', '.join(stale)} (run python grafana/dashboards.py)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
