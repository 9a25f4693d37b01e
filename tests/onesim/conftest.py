"""Fixtures for the simulated-zone tests: an in-process zone on a free port, a pyone client, the control client,
and a tiny threaded HTTP server standing in for Carina's gateway (what guests call)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyone
import pytest

from libs.onesim import NetworkSpec, SimControl, SimZone, ZoneConfig


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def fast_config(**kw: Any) -> ZoneConfig:
    cfg = ZoneConfig(
        hosts=ZoneConfig.uniform_hosts(4, 800, 8192),
        networks=[NetworkSpec("public", "10.1.0.0/24"), NetworkSpec("private", "192.168.50.0/29")],
        users=[("oneadmin", "secret"), ("alice", "pw")],
        boot_seconds=0.1, shutdown_seconds=0.1, monitor_seconds=0.2, guest_seconds=0.05,
        guest_poll_seconds=0.05, guest_metrics_seconds=0.05, guest_backoff=0.02, guest_retries=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def zone() -> Iterator[SimZone]:
    with SimZone(fast_config()) as z:
        yield z


@pytest.fixture
def one(zone: SimZone) -> pyone.OneServer:
    return pyone.OneServer(zone.url, session=zone.session)


@pytest.fixture
def ctl(zone: SimZone) -> SimControl:
    return SimControl(zone.control_url, timeout=5)


class Gateway:
    """Records every guest request; serves pull notifications that stay until acknowledged."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.acked = 0
        self.lock = threading.Lock()
        self.fail_first: dict[str, int] = {}
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _record(self, body: bytes) -> str:
                url = urllib.parse.urlsplit(self.path)
                with gw.lock:
                    gw.requests.append({
                        "method": self.command, "path": url.path,
                        "query": dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
                        "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode(),
                    })
                    left = gw.fail_first.get(url.path, 0)
                    if left:
                        gw.fail_first[url.path] = left - 1
                        return "fail"
                return url.path

            def _reply(self, status: int, data: Any) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                path = self._record(b"")
                if path == "fail":
                    self._reply(503, {"error": "try later"})
                elif path == "/guest/v1/notifications":
                    with gw.lock:
                        pending = [n for n in gw.notifications if n["seq"] > gw.acked]
                    self._reply(200, {"notifications": pending})
                else:
                    self._reply(200, {"ok": True})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self._record(body)
                if path == "/guest/v1/notifications/ack":
                    with gw.lock:
                        gw.acked = max(gw.acked, int(json.loads(body)["seq"]))
                self._reply(200, {"ok": True})

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                self._reply(200, {"ok": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def of(self, path: str, vmid: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path and (
                vmid is None or r["query"].get("vmid") == str(vmid) or r["headers"].get("x-onegate-vmid") == str(vmid))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    yield gw
    gw.close()
