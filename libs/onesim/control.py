"""Python client of a simulated zone's control API (faults, load, guest outcomes, guest records).

Where it sits: tests and tools drive a running :class:`libs.onesim.SimZone` (in-process or ``python -m
libs.onesim``) through :class:`SimControl`; the routes are documented in :mod:`libs.onesim.server`. Plain urllib,
one request per call, every call with a timeout.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ControlError(RuntimeError):
    """The control API answered an error (the message is the API's ``error`` field)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


Selector = dict[str, Any]


def selector(vm_id: int | None = None, name: str | None = None, envid: str | int | None = None) -> Selector:
    """Build a VM selector: by id, by name glob, by CARINA_ENVID; no argument selects every VM."""
    sel: Selector = {}
    if vm_id is not None:
        sel["vm_id"] = vm_id
    if name is not None:
        sel["name"] = name
    if envid is not None:
        sel["envid"] = str(envid)
    return sel


class SimControl:
    """Client of ``/control/...`` on a simulated zone.

    Args:
        base_url: ``http://host:port`` of the zone (a ``.../RPC2`` URL is accepted and trimmed).
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/RPC2"):
            base = base[: -len("/RPC2")]
        self.base = base
        self.timeout = timeout

    def _call(self, verb: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"{}" if verb == "POST" else None)
        req = urllib.request.Request(
            f"{self.base}/control/{path}", data=data, method=verb, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise ControlError(exc.code, str(message)) from exc

    # ------------------------------------------------------------------------------------------ reading
    def health(self) -> dict[str, Any]:
        """``{"ok": true, "name": ..., "url": ...}``."""
        return dict(self._call("GET", "health"))

    def state(self) -> dict[str, Any]:
        """VM counts per state name, hosts with usage, the PENDING queue."""
        return dict(self._call("GET", "state"))

    def calls(self) -> dict[str, int]:
        """Number of XML-RPC calls received per method."""
        return dict(self._call("GET", "calls")["counts"])

    def faults(self) -> list[dict[str, Any]]:
        """Faults still armed."""
        return list(self._call("GET", "faults")["faults"])

    def guest_record(self, vm_id: int) -> dict[str, Any]:
        """What a VM's guest did: ``reports`` (kind, params without token, status_code, ok, attempts),
        ``notifications`` applied, ``members`` (ip -> data), ``acked_seq``, ``metrics_pushed``, ``errors``."""
        return dict(self._call("GET", f"vms/{vm_id}/guest"))

    # ------------------------------------------------------------------------------------------- faults
    def fail_calls(self, method: str, count: int = 1, code: int | str = 0x2000, message: str = "") -> None:
        """Answer the next ``count`` calls of ``method`` (glob allowed) with OpenNebula error ``code``."""
        self._call("POST", "faults/error", {"method": method, "count": count, "code": code, "message": message})

    def lose_replies(self, method: str, count: int = 1) -> None:
        """Apply the next ``count`` calls of ``method`` but close the connection instead of answering."""
        self._call("POST", "faults/lose-reply", {"method": method, "count": count})

    def slow_replies(self, method: str, delay: float, count: int | None = None) -> None:
        """Delay replies of ``method`` by ``delay`` seconds (``count`` None: until :meth:`clear_faults`)."""
        self._call("POST", "faults/slow", {"method": method, "delay": delay, "count": count})

    def outage(self, seconds: float, mode: str = "refuse") -> None:
        """Zone unreachable for ``seconds``: ``refuse`` (connection refused) or ``reset`` (TCP RST)."""
        self._call("POST", "faults/outage", {"seconds": seconds, "mode": mode})

    def clear_faults(self) -> None:
        """Disarm every fault (and end a reset outage)."""
        self._call("POST", "faults/clear")

    def fail_vm(self, vm_id: int, lcm_state: int = 36) -> dict[str, Any]:
        """Put a VM in an LCM failure state (default BOOT_FAILURE 36)."""
        return dict(self._call("POST", f"vms/{vm_id}/fail", {"kind": "failure", "lcm_state": lcm_state}))

    def unknown_vm(self, vm_id: int) -> dict[str, Any]:
        """Put a VM in ACTIVE/UNKNOWN (16)."""
        return dict(self._call("POST", f"vms/{vm_id}/fail", {"kind": "unknown"}))

    def delete_vm(self, vm_id: int) -> dict[str, Any]:
        """Delete a VM behind the client's back (it becomes DONE)."""
        return dict(self._call("POST", f"vms/{vm_id}/delete"))

    def host_down(self, host_id: int) -> dict[str, Any]:
        """Host to ERROR; its active VMs turn UNKNOWN."""
        return dict(self._call("POST", f"hosts/{host_id}/down"))

    def host_up(self, host_id: int) -> dict[str, Any]:
        """Host back to MONITORED; its UNKNOWN VMs run again."""
        return dict(self._call("POST", f"hosts/{host_id}/up"))

    # --------------------------------------------------------------------------------------- behaviour
    def set_load(self, sel: Selector, kind: str = "constant", cpu: float = 10.0, **profile: float) -> int:
        """Set the load profile of the selected VMs (also VMs created later); returns how many match now.

        ``profile`` keys: ``high`` and ``at`` (step), ``amplitude`` and ``period`` (sine), ``memory`` (fraction).
        """
        body = {"selector": sel, "profile": {"kind": kind, "cpu": cpu, **profile}}
        return int(self._call("POST", "load", body)["matched"])

    def set_guest_outcome(self, sel: Selector, outcome: str = "done", reason: str = "") -> int:
        """``done`` (INIT_DONE), ``fail`` (INIT_FAIL[:reason]), ``silent`` (no reports), ``no_app`` (IP only)."""
        return int(self._call("POST", "guest-outcome", {"selector": sel, "outcome": outcome, "reason": reason})[
            "matched"])

    def set_metrics(self, sel: Selector, enabled: bool = True) -> int:
        """Switch OneGate metric pushes of the selected guests."""
        return int(self._call("POST", "metrics", {"selector": sel, "enabled": enabled})["matched"])

    def monitor_now(self) -> int:
        """Run a monitoring round at once; returns the number of rounds so far."""
        return int(self._call("POST", "monitor")["rounds"])
