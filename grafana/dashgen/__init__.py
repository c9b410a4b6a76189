"""The fil-heartbeat dashboards as grafana-foundation-sdk builders (grafana/dashboards.py
writes them out): `parts` the shared pieces, `fleet` and `node` the two dashboards, `table`
and `agents` their larger rows."""
