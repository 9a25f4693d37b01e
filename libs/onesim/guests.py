"""Emulated contextualized guests of the simulated zone (the "Guest protocol" of docs/conventions.md).

Where it sits: :class:`libs.onesim.core.ZoneCore` calls :meth:`GuestRunner.start` when a VM whose CONTEXT carries
``CARINA_URL`` boots, and :meth:`GuestRunner.stop` when it leaves RUNNING. Each guest is one task on a single
asyncio loop (its own thread) sharing one httpx client and a semaphore bounding concurrent requests. A guest:

1. waits ``guest_seconds``, then
   ``GET {CARINA_URL}/cgi-bin/updatevmstatus.sh?service=&vmid=&envid=&newip=&name=&token=``;
2. ``GET .../updateappstatus.sh?...&status=`` with MASTER_INIT_DONE / SLAVE_<i>_INIT_DONE (or the _FAIL variants);
3. as a master with ``CARINA_NOTIFY=pull``, polls ``/guest/v1/notifications``, applies add/delete in seq order
   and acks the highest applied seq;
4. when metrics are enabled, ``PUT {ONEGATE_ENDPOINT}/vm`` with ``CPU_LOAD = x`` / ``MEM_LOAD = y`` lines.

Every request has a timeout; failures are retried with exponential backoff and recorded; nothing here may crash
the zone. Records never hold the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from .core import GuestHooks

if TYPE_CHECKING:
    from .core import ZoneCore

log = logging.getLogger(__name__)


class GuestRunner(GuestHooks):
    """Runs the guests of one zone on a private asyncio loop.

    Args:
        core: the zone whose VMs the guests belong to (asked for state, outcome, load, metrics switch).
    """

    def __init__(self, core: ZoneCore) -> None:
        self.core = core
        self.cfg = core.cfg
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"onesim-{self.cfg.name}-guests", daemon=True)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._records: dict[int, dict[str, Any]] = {}
        self._rec_lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------------------------------- thread
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def init() -> None:
            # No cap on connections: every real guest is its own machine, and each master holds a long poll open.
            # (httpx's default cap of 100 let 100 waiting masters starve every other guest's report.) Reports are
            # bounded by the semaphore instead.
            self._client = httpx.AsyncClient(timeout=self.cfg.guest_http_timeout,
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            self._sem = asyncio.Semaphore(self.cfg.guest_workers)

        self.loop.run_until_complete(init())
        self._ready.set()
        self.loop.run_forever()

    def start_thread(self) -> None:
        """Start the loop thread (waits until it is ready)."""
        self._thread.start()
        self._ready.wait(5)

    def close(self) -> None:
        """Cancel every guest, close the HTTP client and stop the loop."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = list(self._tasks.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    # ---------------------------------------------------------------------------------------- interface
    def start(self, vm_id: int, boot_seq: int, info: dict[str, Any]) -> None:
        """Boot the guest of ``vm_id`` (incarnation ``boot_seq``); called under the zone lock, never blocks."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._spawn, vm_id, boot_seq, info)

    def stop(self, vm_id: int) -> None:
        """Stop the guest of ``vm_id`` if it runs."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._cancel, vm_id)

    def record(self, vm_id: int) -> dict[str, Any] | None:
        """A copy of what the guest of ``vm_id`` did (reports, notifications applied, members, errors)."""
        with self._rec_lock:
            rec = self._records.get(vm_id)
            if rec is None:
                return None
            return {
                k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in rec.items()
            }

    # ---------------------------------------------------------------------------------------- internals
    def _spawn(self, vm_id: int, boot_seq: int, info: dict[str, Any]) -> None:
        self._cancel(vm_id)
        with self._rec_lock:
            prev = self._records.get(vm_id)
            rec: dict[str, Any] = {
                "vm_id": vm_id, "boot_seq": boot_seq, "boots": (prev["boots"] + 1) if prev else 1,
                "reports": [], "notifications": [], "members": dict(prev["members"]) if prev else {},
                "acked_seq": prev["acked_seq"] if prev else 0, "applied_seq": prev["applied_seq"] if prev else 0,
                "metrics_pushed": 0, "errors": [], "status": "booting",
            }
            self._records[vm_id] = rec
        task = self.loop.create_task(self._guest(vm_id, boot_seq, info, rec))
        self._tasks[vm_id] = task
        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(vm_id) is done:
                del self._tasks[vm_id]

        task.add_done_callback(forget)

    def _cancel(self, vm_id: int) -> None:
        task = self._tasks.pop(vm_id, None)
        if task is not None:
            task.cancel()

    def _note(self, rec: dict[str, Any], key: str, item: Any) -> None:
        with self._rec_lock:
            rec[key].append(item)

    async def _http(
        self, rec: dict[str, Any], kind: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """One guest request with timeout and retries; every outcome lands in the record."""
        assert self._client is not None and self._sem is not None
        params = kwargs.get("params") or {}
        shown = {k: v for k, v in params.items() if k != "token"}
        long_poll = bool(kwargs.pop("long_poll", False))
        timeout = self.cfg.guest_http_timeout + (self.cfg.guest_long_poll if long_poll else 0.0)
        last_error = ""
        for attempt in range(1, max(1, self.cfg.guest_retries) + 1):
            try:
                if long_poll:
                    # A held request must not occupy one of the few workers other guests' reports need.
                    resp = await self._client.request(method, url, timeout=timeout, **kwargs)
                else:
                    async with self._sem:
                        resp = await self._client.request(method, url, timeout=timeout, **kwargs)
                if resp.status_code < 500:
                    self._note(rec, "reports", {
                        "kind": kind, "method": method, "url": url.split("?")[0], "params": shown,
                        "status_code": resp.status_code, "ok": resp.is_success, "attempts": attempt,
                        "time": time.time(),
                    })
                    return resp
                last_error = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.cfg.guest_retries:
                await asyncio.sleep(min(5.0, self.cfg.guest_backoff * (2 ** (attempt - 1))))
        self._note(rec, "errors", {"kind": kind, "url": url.split("?")[0], "error": last_error, "time": time.time()})
        self._note(rec, "reports", {
            "kind": kind, "method": method, "url": url.split("?")[0], "params": shown, "status_code": None,
            "ok": False, "attempts": self.cfg.guest_retries, "time": time.time(),
        })
        return None

    async def _wait_running(self, vm_id: int, boot_seq: int) -> bool:
        """Wait while the VM's host is unreachable; False once this incarnation is gone."""
        while True:
            state = self.core.guest_alive(vm_id, boot_seq)
            if state == "running":
                return True
            if state == "gone":
                return False
            await asyncio.sleep(0.1)

    async def _guest(self, vm_id: int, boot_seq: int, info: dict[str, Any], rec: dict[str, Any]) -> None:
        try:
            await self._guest_body(vm_id, boot_seq, info, rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a guest bug is recorded, never propagated into the zone
            log.exception("onesim guest of VM %s failed", vm_id)
            self._note(rec, "errors", {"kind": "guest", "error": repr(exc), "time": time.time()})

    async def _guest_body(self, vm_id: int, boot_seq: int, info: dict[str, Any], rec: dict[str, Any]) -> None:
        ctx: dict[str, str] = info["context"]
        base = ctx["CARINA_URL"].rstrip("/")
        token = ctx.get("CARINA_TOKEN", "")
        await asyncio.sleep(self.cfg.guest_seconds)
        if not await self._wait_running(vm_id, boot_seq):
            return
        outcome = self.core.outcome_for(vm_id)
        kind = str(outcome.get("outcome", "done"))
        if kind == "silent":
            rec["status"] = "silent"
            return
        headers = {"X-Carina-Token": token} if token else {}
        common = {"service": ctx.get("SERVICE_NAME", ""), "vmid": str(vm_id), "envid": ctx.get("ENVID", "")}
        await self._http(rec, "updatevmstatus", "GET", f"{base}/cgi-bin/updatevmstatus.sh", headers=headers,
                         params={**common, "newip": info["ip"], "name": info["name"], "token": token})
        if kind != "no_app":
            role = ctx.get("CARINA_ROLE", "master").lower()
            prefix = "MASTER" if role == "master" else f"SLAVE_{ctx.get('SLAVE_INDEX', '0')}"
            if kind == "fail":
                reason = str(outcome.get("reason", ""))
                status = f"{prefix}_INIT_FAIL" + (f":{reason}" if reason else "")
            else:
                status = f"{prefix}_INIT_DONE"
            await self._http(rec, "updateappstatus", "GET", f"{base}/cgi-bin/updateappstatus.sh", headers=headers,
                             params={**common, "status": status, "token": token})
        rec["status"] = "up"
        loops = [self._metrics_loop(vm_id, boot_seq, ctx, rec)]
        if ctx.get("CARINA_ROLE", "").lower() == "master" and ctx.get("CARINA_NOTIFY", "").lower() == "pull":
            loops.append(self._pull_loop(vm_id, boot_seq, base, token, rec))
        await asyncio.gather(*loops)

    async def _pull_loop(self, vm_id: int, boot_seq: int, base: str, token: str, rec: dict[str, Any]) -> None:
        headers = {"X-ONEGATE-TOKEN": token, "X-ONEGATE-VMID": str(vm_id)}
        while await self._wait_running(vm_id, boot_seq):
            # Long poll: Carina holds the request until there is something to apply (or `wait` runs out).
            asked = time.monotonic()
            resp = await self._http(rec, "notifications", "GET", f"{base}/guest/v1/notifications", headers=headers,
                                    params={"wait": self.cfg.guest_long_poll}, long_poll=True)
            answered = resp is not None and resp.is_success
            applied_before = rec["applied_seq"]
            carried_work = False
            if resp is not None and resp.is_success:
                try:
                    notes = resp.json().get("notifications", [])
                    notes = sorted(notes, key=lambda n: int(n["seq"]))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    self._note(rec, "errors", {"kind": "notifications", "error": f"bad body: {exc}",
                                               "time": time.time()})
                    notes = []
                for note in notes:
                    seq = int(note["seq"])
                    if seq <= rec["applied_seq"]:
                        continue
                    op, ip = str(note.get("op", "")), str(note.get("ip", ""))
                    with self._rec_lock:
                        if op == "add":
                            rec["members"][ip] = str(note.get("data", ""))
                        elif op == "delete":
                            rec["members"].pop(ip, None)
                        rec["notifications"].append({"seq": seq, "op": op, "ip": ip, "data": note.get("data", "")})
                        rec["applied_seq"] = seq
                if rec["applied_seq"] > rec["acked_seq"]:
                    ack = await self._http(rec, "ack", "POST", f"{base}/guest/v1/notifications/ack",
                                           headers=headers, json={"seq": rec["applied_seq"]})
                    if ack is not None and ack.is_success:
                        rec["acked_seq"] = rec["applied_seq"]
                carried_work = rec["applied_seq"] > applied_before and rec["acked_seq"] == rec["applied_seq"]
            # Like a real long-polling agent: ask again at once after an answer that brought news or that the server
            # held; pause after a failure, or an answer with nothing new that came back at once (a server not
            # holding polls, or one re-sending what was acknowledged).
            held = time.monotonic() - asked >= 0.5 * self.cfg.guest_long_poll
            if not (answered and (carried_work or held)):
                await asyncio.sleep(self.cfg.guest_poll_seconds)

    async def _metrics_loop(self, vm_id: int, boot_seq: int, ctx: dict[str, str], rec: dict[str, Any]) -> None:
        endpoint = (ctx.get("ONEGATE_ENDPOINT") or ctx["CARINA_URL"]).rstrip("/")
        headers = {"X-ONEGATE-TOKEN": ctx.get("CARINA_TOKEN", ""), "X-ONEGATE-VMID": str(vm_id),
                   "Content-Type": "text/plain"}
        while await self._wait_running(vm_id, boot_seq):
            if self.core.metrics_enabled(vm_id):
                cpu, mem = self.core.guest_load(vm_id)
                body = f"CPU_LOAD = {cpu}\nMEM_LOAD = {round(mem * 100, 2)}\n"
                resp = await self._http(rec, "metrics", "PUT", f"{endpoint}/vm", headers=headers, content=body)
                if resp is not None and resp.is_success:
                    with self._rec_lock:
                        rec["metrics_pushed"] += 1
            await asyncio.sleep(self.cfg.guest_metrics_seconds)
