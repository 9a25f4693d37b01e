"""Prometheus metrics of the gateway (`carina_gateway_…`), served by the runner's probe server at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "carina_gateway_requests_total",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "carina_gateway_request_duration_seconds",
    "Time to answer an HTTP request (streams: time to the first byte), by route template",
    ["route"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GUEST_CALLBACKS = Counter(
    "carina_gateway_guest_callbacks_total",
    "Guest callbacks, by kind and result (accepted, unauthenticated, forbidden, invalid, limited)",
    ["kind", "result"],
)
NUDGES_LOST = Counter(
    "carina_gateway_nudge_publish_failures_total",
    "Commands recorded in MongoDB whose NATS nudge could not be published (the consumer's resync picks them up)",
    ["subject"],
)
EVENT_STREAMS = Counter(
    "carina_gateway_event_streams_total",
    "Server-sent event streams opened by watchers",
)
