"""Several aggregators, one fleet: the JetStream export, the merged fleet and the leader lease.

Only `bridge.py` imports `nats` (and `trio_asyncio`); everything else here is a pure core or
a trio shell over the bridge. Nothing in this package is imported without `--nats-url`.
"""
