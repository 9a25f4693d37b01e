"""Prometheus metrics shared by every service (`carina_<noun>_<unit>`, labels subject/zone/result).

Each service adds its own metrics in `services/<name>/metrics.py`; these are the ones the bus and the runner
record for all of them. One process per pod (no multiprocess mode), so the default registry is enough.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HANDLER_SECONDS = Histogram(
    "carina_handler_duration_seconds",
    "Time spent handling one message, by subject",
    ["subject"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MESSAGES_TOTAL = Counter(
    "carina_messages_total",
    "Messages handled, by subject and result (ok, retry, error, permanent, invalid)",
    ["subject", "result"],
)
PUBLISH_TOTAL = Counter(
    "carina_published_messages_total",
    "Messages published, by subject and result (ok, duplicate, error)",
    ["subject", "result"],
)
READY = Gauge("carina_ready", "1 when the service is ready (dependencies reachable, consumers running)")
DB_COMMANDS_TOTAL = Counter(
    "carina_db_commands_total",
    "MongoDB commands sent (round trips), by collection and command",
    ["collection", "command"],
)
DB_COMMAND_SECONDS = Histogram(
    "carina_db_command_duration_seconds",
    "MongoDB command round-trip time, by command",
    ["command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
