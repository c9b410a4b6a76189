"""`python -m heartbeat.tools.loadgen`: the load generator's command line."""

from __future__ import annotations

import sys

from heartbeat.tools.loadgen.cli import main

if __name__ == "__main__":  # spawned workers import this module as __mp_main__
    sys.exit(main())
