"""`python -m heartbeat`: the agent's command line (heartbeat.agent.cli)."""

from __future__ import annotations

import sys

from heartbeat.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
