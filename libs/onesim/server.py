"""HTTP front of a simulated zone: OpenNebula XML-RPC on /RPC2, a JSON control API under /control/, faults.

Where it sits: :class:`SimZone` is what tests, benchmarks and ``python -m libs.onesim`` start. It owns a
:class:`~libs.onesim.core.ZoneCore` (state and lifecycle), a :class:`~libs.onesim.guests.GuestRunner` (emulated
guests) and a threading HTTP server. Each XML-RPC request is checked against oned's method signatures (a type
mismatch is an XML-RPC fault, as xmlrpc-c answers), authenticated, passed through the fault book (slow reply,
injected error, lost reply) and dispatched to the core under its lock.

Control routes (JSON in, JSON out; 400 on bad input, 404 on unknown ids):

=======  ===================================  =========================================================
GET      /control/health                      ``{"ok": true, "name": ...}``
GET      /control/state                       VM counts per state, hosts, pending queue
GET      /control/calls                       XML-RPC calls received per method
GET      /control/faults                      faults still armed
POST     /control/faults/error                ``{"method", "count", "code", "message"}``: fail next N calls
POST     /control/faults/lose-reply           ``{"method", "count"}``: apply, then close without answering
POST     /control/faults/slow                 ``{"method", "delay", "count"}`` (count null: until cleared)
POST     /control/faults/outage               ``{"seconds", "mode": "refuse"|"reset"}``
POST     /control/faults/clear                disarm every fault
POST     /control/vms/<id>/fail               ``{"kind": "failure"|"unknown", "lcm_state": 36}``
POST     /control/vms/<id>/delete             the VM disappears (DONE) behind the client's back
GET      /control/vms/<id>/guest              the guest's record (reports, notifications, members)
POST     /control/hosts/<id>/down|up          host ERROR (VMs UNKNOWN) / MONITORED again
POST     /control/load                        ``{"selector": {...}, "profile": {"kind", "cpu", ...}}``
POST     /control/guest-outcome               ``{"selector": {...}, "outcome": "done"|"fail"|"silent"|"no_app",
                                              "reason": "..."}``
POST     /control/metrics                     ``{"selector": {...}, "enabled": true}``
POST     /control/monitor                     run a monitoring round now
=======  ===================================  =========================================================

A selector is ``{"vm_id": 5}``, ``{"name": "glob*"}``, ``{"envid": "7"}`` (USER_TEMPLATE CARINA_ENVID or
CONTEXT ENVID) or ``{}`` for all VMs; rules also apply to VMs created later.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import re
import socket
import struct
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import states as S
from .config import ZoneConfig
from .core import LoadProfile, OneError, User, ZoneCore, check_selector
from .guests import GuestRunner

log = logging.getLogger(__name__)

# oned's signatures (after the session string): i = int, b = boolean, s = string
SIGNATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "one.system.version": ("system_version", ("",)),
    "one.zonepool.info": ("zonepool_info", ("",)),
    "one.vm.allocate": ("vm_allocate", ("s", "sb")),
    "one.vm.info": ("vm_info", ("i", "ib")),
    "one.vm.action": ("vm_action", ("si",)),
    "one.vm.update": ("vm_update", ("isi",)),
    "one.vm.rename": ("vm_rename", ("is",)),
    "one.vmpool.info": ("vmpool_info", ("", "i", "iii", "iiii", "iiiis")),
    "one.vmpool.infoextended": ("vmpool_infoextended", ("", "i", "iii", "iiii", "iiiis")),
    "one.vmpool.monitoring": ("vmpool_monitoring", ("i", "ii")),
    "one.template.allocate": ("template_allocate", ("s",)),
    "one.template.info": ("template_info", ("i", "ib", "ibb")),
    "one.template.instantiate": ("template_instantiate", ("i", "is", "isb", "isbs", "isbsb")),
    "one.template.delete": ("template_delete", ("i", "ib")),
    "one.templatepool.info": ("templatepool_info", ("", "iii")),
    "one.host.allocate": ("host_allocate", ("sss", "sssi")),
    "one.host.info": ("host_info", ("i", "ib")),
    "one.host.status": ("host_status", ("ii",)),
    "one.hostpool.info": ("hostpool_info", ("",)),
    "one.vnpool.info": ("vnpool_info", ("", "iii")),
    "one.imagepool.info": ("imagepool_info", ("", "iii")),
}


def _type_code(value: Any) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "i"
    if isinstance(value, str):
        return "s"
    return "?"


# -------------------------------------------------------------------------------------------------------- faults
@dataclass
class _Fault:
    kind: str  # error | lose | slow
    method: str
    count: int | None
    code: int = S.INTERNAL
    message: str = ""
    delay: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "method": self.method, "count": self.count, "code": self.code,
                "message": self.message, "delay": self.delay}


class FaultBook:
    """Armed faults, consumed in arming order; thread-safe."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, kind: str, method: str) -> _Fault | None:
        """Consume one use of the first armed fault of ``kind`` matching ``method`` (glob patterns allowed)."""
        with self._lock:
            for f in self._faults:
                if f.kind == kind and (f.method == method or fnmatch.fnmatchcase(method, f.method)):
                    if f.count is not None:
                        f.count -= 1
                        if f.count <= 0:
                            self._faults.remove(f)
                    return f
        return None

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_json() for f in self._faults]


class _DropReply(Exception):
    """The call was applied; its reply must be lost."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, addr: tuple[str, int], zone: SimZone) -> None:
        self.zone = zone
        super().__init__(addr, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # "reset" outage: accept, then abort with RST (SO_LINGER 0) instead of answering
        if time.monotonic() < self.zone._reset_until:
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"
    server_version = "xmlrpc-c/1.51"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("onesim %s: " + format, self.server.zone.config.name, *args)

    # -------------------------------------------------------------------------------------------- routing
    def do_POST(self) -> None:
        zone = self.server.zone
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/RPC2", ""):
            try:
                payload = zone.handle_xmlrpc(body)
            except _DropReply:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(200, payload, "text/xml")
        elif path.startswith("/control/"):
            self._control("POST", path, body)
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path.startswith("/control/"):
            self._control("GET", path, b"")
        else:
            self._json(405 if path == "/RPC2" else 404, {"error": "XML-RPC requests must be POSTed to /RPC2"})

    def _send(self, status: int, payload: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _control(self, verb: str, path: str, body: bytes) -> None:
        zone = self.server.zone
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as exc:
            self._json(400, {"error": f"bad JSON body: {exc}"})
            return
        try:
            status, result, after = zone.handle_control(verb, path, data)
        except KeyError as exc:
            self._json(404, {"error": str(exc.args[0]) if exc.args else "not found"})
            return
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": str(exc)})
            return
        self._json(status, result)
        if after is not None:
            threading.Thread(target=after, name="onesim-control-after", daemon=True).start()


# ---------------------------------------------------------------------------------------------------------- zone
class SimZone:
    """A simulated OpenNebula 6.10 front-end, serving XML-RPC in a background thread.

    Args:
        config: zone configuration; keyword ``overrides`` replace single fields (``SimZone(boot_seconds=0)``).

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``url`` is the XML-RPC endpoint
    (``http://host:port/RPC2``), ``control_url`` the base of the control API, ``session`` the first user's
    ``user:password`` string.
    """

    def __init__(self, config: ZoneConfig | None = None, **overrides: Any) -> None:
        cfg = config or ZoneConfig()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"ZoneConfig has no field {key!r}")
            setattr(cfg, key, value)
        self.config = cfg
        self.core = ZoneCore(cfg)
        self.guests = GuestRunner(self.core)
        self.core.guests = self.guests
        self.faults = FaultBook()
        self.calls: dict[str, int] = {}
        self._calls_lock = threading.Lock()
        self._http: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._http_lock = threading.Lock()
        self._reset_until = 0.0
        self._refuse_timer: threading.Timer | None = None
        self._started = False
        self.port = cfg.port

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The XML-RPC endpoint."""
        return f"http://{self.config.host}:{self.port}/RPC2"

    @property
    def control_url(self) -> str:
        """Base URL of the control API (same port)."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def session(self) -> str:
        """``user:password`` of the zone's first (oneadmin) user."""
        name, pw = self.config.users[0]
        return f"{name}:{pw}"

    def start(self) -> SimZone:
        """Bind the port (0 picks a free one), start the engine, guests and HTTP threads."""
        if self._started:
            return self
        self._bind(self.config.port)
        self.core.endpoint = self.url
        self.guests.start_thread()
        self.core.start()
        self._started = True
        log.info("onesim %s listening on %s", self.config.name, self.url)
        return self

    def stop(self) -> None:
        """Stop serving, stop guests and the engine, write the state file."""
        if not self._started:
            return
        self._started = False
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
        self._unbind()
        self.guests.close()
        self.core.stop()

    def __enter__(self) -> SimZone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self, port: int) -> None:
        with self._http_lock:
            server = _HTTPServer((self.config.host, port), self)
            self.port = server.server_address[1]
            self._http = server
            self._serve_thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"onesim-{self.config.name}-http", daemon=True,
            )
            self._serve_thread.start()

    def _unbind(self) -> None:
        with self._http_lock:
            server, self._http = self._http, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # -------------------------------------------------------------------------------------------- outage
    def outage(self, seconds: float, mode: str = "refuse") -> None:
        """Make the zone unreachable for ``seconds``.

        ``refuse`` closes the listening socket (clients get ECONNREFUSED; the control API is unreachable too
        until the port is bound again); ``reset`` accepts connections and aborts them with a TCP RST.
        """
        if seconds <= 0:
            raise ValueError("outage seconds must be > 0")
        if mode == "reset":
            self._reset_until = time.monotonic() + seconds
            return
        if mode != "refuse":
            raise ValueError(f"outage mode {mode!r}: expected refuse or reset")
        self._unbind()
        timer = threading.Timer(seconds, self._end_refuse)
        timer.daemon = True
        self._refuse_timer = timer
        timer.start()

    def _end_refuse(self) -> None:
        for _ in range(50):
            if not self._started:
                return
            try:
                self._bind(self.port)
                return
            except OSError:
                time.sleep(0.1)
        log.error("onesim %s: could not bind port %s again after an outage", self.config.name, self.port)

    def end_outage(self) -> None:
        """End any outage now (in-process use)."""
        self._reset_until = 0.0
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
            self._refuse_timer = None
        if self._http is None and self._started:
            self._bind(self.port)

    # ------------------------------------------------------------------------------------------- XML-RPC
    def handle_xmlrpc(self, body: bytes) -> bytes:
        """Answer one XML-RPC request body; raises _DropReply when a lost-reply fault applies."""
        try:
            params, method = xmlrpc.client.loads(body)
        except Exception as exc:  # malformed XML-RPC: xmlrpc-c answers a fault
            return xmlrpc.client.dumps(xmlrpc.client.Fault(-503, f"Call XML not a proper XML-RPC call. {exc}"),
                                       methodresponse=True).encode()
        method = method or ""
        with self._calls_lock:
            self.calls[method] = self.calls.get(method, 0) + 1
        slow = self.faults.take("slow", method)
        if slow is not None:
            time.sleep(slow.delay)
        result = self._dispatch(method, params)
        if isinstance(result, xmlrpc.client.Fault):
            return xmlrpc.client.dumps(result, methodresponse=True).encode()
        payload = xmlrpc.client.dumps((result,), methodresponse=True).encode("utf-8")
        if self.faults.take("lose", method) is not None:
            raise _DropReply()
        return payload

    def _dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any] | xmlrpc.client.Fault:
        entry = SIGNATURES.get(method)
        if entry is None:
            return xmlrpc.client.Fault(-506, f"Method '{method}' not defined")
        func_name, sigs = entry
        if not params or not isinstance(params[0], str):
            return xmlrpc.client.Fault(-501, f"Type mismatch: {method} expects the session string first")
        got = "".join(_type_code(p) for p in params[1:])
        if got not in sigs:
            return xmlrpc.client.Fault(
                -501, f"Parameter type mismatch for {method}: got ({got or 'none'}), "
                      f"expected one of {', '.join('(' + s + ')' for s in sigs)}",
            )
        injected = self.faults.take("error", method)
        try:
            with self.core.lock:
                user: User = self.core.auth(params[0], method)
                if injected is not None:
                    raise OneError(injected.code, injected.message or f"[{method}] Simulated failure.")
                value = getattr(self.core, func_name)(user, *params[1:])
        except OneError as err:
            return [False, err.message, err.code, -1]
        except Exception:  # an internal bug answers like oned's INTERNAL error rather than killing the thread
            log.exception("onesim %s: %s failed", self.config.name, method)
            return [False, f"[{method}] Internal error", S.INTERNAL, -1]
        return [True, value, 0]

    # ------------------------------------------------------------------------------------------- control
    def handle_control(
        self, verb: str, path: str, data: dict[str, Any]
    ) -> tuple[int, Any, Callable[[], None] | None]:
        """Apply one control request; returns (HTTP status, JSON result, action to run after answering)."""
        core = self.core
        parts = path.strip("/").split("/")[1:]
        route = "/".join(parts)
        if verb == "GET":
            if route == "health":
                return 200, {"ok": True, "name": self.config.name, "url": self.url}, None
            if route == "state":
                with core.lock:
                    return 200, core.ctl_summary(), None
            if route == "calls":
                with self._calls_lock:
                    return 200, {"counts": dict(self.calls)}, None
            if route == "faults":
                return 200, {"faults": self.faults.listing(),
                             "reset_outage": max(0.0, self._reset_until - time.monotonic())}, None
            m = re.fullmatch(r"vms/(\d+)/guest", route)
            if m:
                vid = int(m.group(1))
                with core.lock:
                    if vid not in core.vms:
                        raise KeyError(f"VM {vid} does not exist")
                rec = self.guests.record(vid)
                return 200, rec or {"vm_id": vid, "reports": [], "notifications": [], "members": {},
                                    "errors": [], "status": "no guest"}, None
            raise KeyError(f"no route GET {path}")

        if route == "faults/error":
            code = data.get("code", S.INTERNAL)
            if isinstance(code, str):
                if code.lower() not in S.ERROR_CODES:
                    raise ValueError(f"code {code!r}: expected one of {sorted(S.ERROR_CODES)} or a number")
                code = S.ERROR_CODES[code.lower()]
            self.faults.arm(_Fault("error", _method(data), _count(data, 1), code=int(code),
                                   message=str(data.get("message", ""))))
            return 200, {"armed": self.faults.listing()}, None
        if route == "faults/lose-reply":
            self.faults.arm(_Fault("lose", _method(data), _count(data, 1)))
            return 200, {"armed": self.faults.listing()}, None
        if route == "faults/slow":
            delay = float(data.get("delay", 1.0))
            if delay < 0:
                raise ValueError("delay must be >= 0")
            self.faults.arm(_Fault("slow", _method(data), _count(data, None), delay=delay))
            return 200, {"armed": self.faults.listing()}, None
        if route == "faults/outage":
            seconds = float(data.get("seconds", 1.0))
            mode = str(data.get("mode", "refuse"))
            if seconds <= 0 or mode not in ("refuse", "reset"):
                raise ValueError("outage needs seconds > 0 and mode refuse or reset")
            if mode == "reset":  # takes effect before this reply is even sent
                self.outage(seconds, mode)
                return 200, {"outage": mode, "seconds": seconds}, None
            # closing the listener must wait until this reply is out
            return 200, {"outage": mode, "seconds": seconds}, lambda: self.outage(seconds, mode)
        if route == "faults/clear":
            self.faults.clear()
            self._reset_until = 0.0
            return 200, {"armed": []}, None
        if route == "monitor":
            with core.lock:
                return 200, {"rounds": core.ctl_monitor_now()}, None
        m = re.fullmatch(r"vms/(\d+)/(fail|delete)", route)
        if m:
            vid = int(m.group(1))
            with core.lock:
                if m.group(2) == "delete":
                    return 200, core.ctl_delete_vm(vid), None
                kind = str(data.get("kind", "failure"))
                if kind not in ("failure", "unknown"):
                    raise ValueError("kind must be failure or unknown")
                return 200, core.ctl_fail_vm(vid, kind, int(data.get("lcm_state", S.BOOT_FAILURE))), None
        m = re.fullmatch(r"hosts/(\d+)/(down|up)", route)
        if m:
            with core.lock:
                return 200, core.ctl_host(int(m.group(1)), m.group(2) == "up"), None
        if route == "load":
            sel = check_selector(data.get("selector", {}))
            prof = LoadProfile.from_json(data.get("profile", {}))
            with core.lock:
                return 200, {"matched": core.ctl_set_load(sel, prof)}, None
        if route == "guest-outcome":
            sel = check_selector(data.get("selector", {}))
            outcome = str(data.get("outcome", "done"))
            if outcome not in ("done", "fail", "silent", "no_app"):
                raise ValueError("outcome must be done, fail, silent or no_app")
            with core.lock:
                matched = core.ctl_set_outcome(sel, {"outcome": outcome, "reason": str(data.get("reason", ""))})
            return 200, {"matched": matched}, None
        if route == "metrics":
            sel = check_selector(data.get("selector", {}))
            with core.lock:
                return 200, {"matched": core.ctl_set_metrics(sel, bool(data.get("enabled", True)))}, None
        raise KeyError(f"no route POST {path}")


def _method(data: dict[str, Any]) -> str:
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise ValueError("method: expected an XML-RPC method name or glob, e.g. one.vm.allocate or one.vm.*")
    return method


def _count(data: dict[str, Any], default: int | None) -> int | None:
    count = data.get("count", default)
    if count is None:
        return None
    if not isinstance(count, int) or count < 1:
        raise ValueError("count must be a positive integer (or null for slow faults: until cleared)")
    return count
