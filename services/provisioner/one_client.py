"""The only module of Carina that imports pyone: OpenNebula's XML-RPC API, with deadlines and bounded concurrency.

pyone is synchronous and sends requests without a per-request timeout (its `timeout=` sets the process-wide socket
default, which would leak into every other client in the process). So each zone gets its own `requests.Session`
with explicit connect/read timeouts, a bounded thread pool (at most `concurrency` calls in flight per zone), and an
asyncio deadline around every call. pyone's exceptions are translated into Carina's error classes once, here:

- connection refused/reset, timeouts, OpenNebula's API/internal errors → `ZoneUnavailable` (transient);
- authentication/authorization errors → `ZoneRefused` (permanent: retrying will not fix credentials);
- "no such object" → `ZoneNotFound`; action refused in this state → `ZoneActionRefused` (permanent).

An allocation whose reply was lost is indeterminate: callers look the VM up by its deterministic name before
allocating again (see `services.provisioner.handlers.vm_provision`).
"""

from __future__ import annotations

import asyncio
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyone
import requests

from libs.common.errors import PermanentError, TransientError

T = TypeVar("T")

# OpenNebula VM STATE and LCM_STATE numbers (OpenNebula 6.10).
STATE_NAMES = {0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED", 6: "DONE",
               8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING", 11: "CLONING_FAILURE"}
LCM_FAILURES = {36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 60}  # *_FAILURE states (reference §2.4)
LCM_LIFECYCLE = {0: "PENDING", 1: "PROLOG", 2: "BOOT", 3: "RUNNING", 11: "EPILOG", 12: "SHUTDOWN", 16: "UNKNOWN",
                 18: "SHUTDOWN", 19: "BOOT", 20: "BOOT", 21: "BOOT", 22: "BOOT", 23: "SHUTDOWN"}


def lifecycle_of(state: int, lcm_state: int) -> str:
    """Carina's coarse lifecycle for a VM (the vocabulary envmgr reasons with)."""
    if state == 3:
        if lcm_state in LCM_FAILURES:
            return "FAILED"
        return LCM_LIFECYCLE.get(lcm_state, "OTHER")
    return {1: "PENDING", 2: "HOLD", 4: "STOPPED", 5: "SUSPENDED", 6: "DONE", 8: "POWEROFF", 9: "UNDEPLOYED",
            11: "FAILED"}.get(state, "OTHER")


class ZoneUnavailable(TransientError):
    """The zone did not answer, or answered with an internal error: try again later."""


class ZoneRefused(PermanentError):
    """The zone refused the credentials or the permission."""


class ZoneNotFound(PermanentError):
    """The object does not exist in the zone."""


class ZoneActionRefused(PermanentError):
    """The zone refused the action (wrong state, invalid template, quota…)."""


@dataclass
class VmView:
    """What Carina reads of one OpenNebula VM."""

    id: int
    name: str
    state: int
    lcm_state: int
    ip: str | None = None
    host: str | None = None
    cpu: float | None = None
    memory: int | None = None
    user_template: dict[str, Any] = field(default_factory=dict)

    @property
    def lifecycle(self) -> str:
        return lifecycle_of(self.state, self.lcm_state)


class _TimedTransport(pyone.RequestsTransport):  # type: ignore[misc]
    """pyone's transport with a session and explicit timeouts (pyone sends with none)."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        super().__init__()
        self.session = requests.Session()
        self.timeouts = (connect_timeout, read_timeout)

    def request(self, host: str, handler: str, request_body: bytes, verbose: bool = False) -> Any:
        url = self._build_url(host, handler)
        headers = {"User-Agent": "carina-provisioner", "Content-Type": "text/xml", "Accept": "*/*"}
        resp = self.session.post(url, data=request_body, headers=headers, verify=self.https_verify,
                                 timeout=self.timeouts)
        if resp.status_code >= 400:
            raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason, dict(resp.headers))
        return self.parse_response(resp)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _vm_view(vm: Any) -> VmView:
    template = vm.TEMPLATE if isinstance(vm.TEMPLATE, dict) else {}
    nic = _first(template.get("NIC"))
    ip = nic.get("IP") if isinstance(nic, dict) else None
    host = None
    history = getattr(vm, "HISTORY_RECORDS", None)
    records = getattr(history, "HISTORY", None) if history is not None else None
    if records:
        host = getattr(records[-1], "HOSTNAME", None)
    monitoring = vm.MONITORING if isinstance(getattr(vm, "MONITORING", None), dict) else {}
    cpu = _float(monitoring.get("CPU"))
    memory = _float(monitoring.get("MEMORY"))
    user_template = vm.USER_TEMPLATE if isinstance(vm.USER_TEMPLATE, dict) else {}
    return VmView(id=int(vm.ID), name=str(vm.NAME), state=int(vm.STATE), lcm_state=int(vm.LCM_STATE), ip=ip,
                  host=host, cpu=cpu, memory=int(memory) if memory is not None else None, user_template=user_template)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class ZoneClient:
    """Asynchronous access to one OpenNebula zone with one service's credentials.

    Args:
        url: XML-RPC endpoint.
        session: "user:password".
        concurrency: calls in flight at once against this zone.
        timeout: seconds for one call (connect and read); every call also has an asyncio deadline.
    """

    def __init__(self, url: str, session: str, concurrency: int = 8, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="one")
        self._session = session
        self._local: Any = __import__("threading").local()

    def _server(self) -> Any:
        # xmlrpc ServerProxy is not thread-safe: one per worker thread.
        server = getattr(self._local, "server", None)
        if server is None:
            server = pyone.OneServer(self.url, session=self._session)
            transport = _TimedTransport(min(5.0, self.timeout), self.timeout)
            transport.set_https(self.url.startswith("https"))
            transport.set_https_verify(True)
            server._ServerProxy__transport = transport
            self._local.server = server
        return server

    async def _call(self, fn: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()

        def run() -> T:
            return fn(self._server())

        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, run), timeout=self.timeout + 5)
        except TimeoutError:
            raise ZoneUnavailable(f"zone {self.url} did not answer within {self.timeout:g} s") from None
        except pyone.OneAuthenticationException as exc:
            raise ZoneRefused(f"zone refused the credentials: {exc}") from None
        except pyone.OneAuthorizationException as exc:
            raise ZoneRefused(f"zone refused the operation (authorization): {exc}") from None
        except pyone.OneNoExistsException as exc:
            raise ZoneNotFound(str(exc)) from None
        except pyone.OneActionException as exc:
            raise ZoneActionRefused(str(exc)) from None
        except (pyone.OneInternalException, pyone.OneApiException) as exc:
            raise ZoneUnavailable(f"zone error: {exc}") from None
        except (requests.RequestException, xmlrpc.client.ProtocolError, ConnectionError, OSError) as exc:
            raise ZoneUnavailable(f"zone {self.url} unreachable: {type(exc).__name__}") from None
        except pyone.OneException as exc:
            # Codes pyone has no class for (e.g. oned's ALLOCATE 0x4000: "Error allocating a new virtual machine")
            # and XML-RPC faults are answers about the request itself: retrying the same call cannot succeed.
            raise ZoneActionRefused(f"zone refused the request: {exc}") from None

    async def version(self) -> str:
        return str(await self._call(lambda one: one.system.version()))

    async def find_by_name(self, name: str) -> list[VmView]:
        """VMs (not DONE) with exactly this name: the adoption lookup."""
        pool = await self._call(lambda one: one.vmpool.infoextended(-2, -1, -1, -1, f"NAME={name}"))
        return [_vm_view(vm) for vm in (pool.VM or []) if str(vm.NAME) == name]

    async def allocate(self, template: str) -> int:
        return int(await self._call(lambda one: one.vm.allocate(template, False)))

    async def instantiate(self, template_id: int, name: str, extra: str) -> int:
        return int(await self._call(lambda one: one.template.instantiate(template_id, name, False, extra, False)))

    async def info(self, vmid: int) -> VmView:
        return _vm_view(await self._call(lambda one: one.vm.info(vmid)))

    async def action(self, action: str, vmid: int) -> None:
        await self._call(lambda one: one.vm.action(action, vmid))

    async def pool(self) -> list[VmView]:
        """Every VM of this account that is not DONE, with templates (for IPs and tags)."""
        pool = await self._call(lambda one: one.vmpool.infoextended(-3, -1, -1, -1))
        return [_vm_view(vm) for vm in (pool.VM or [])]

    async def monitoring(self) -> dict[int, tuple[float | None, int | None]]:
        """Latest CPU (percent) and memory (KiB) per VM of this account."""
        data = await self._call(lambda one: one.vmpool.monitoring(-3, 0))
        out: dict[int, tuple[float | None, int | None]] = {}
        for record in getattr(data, "MONITORING", None) or []:
            vmid = getattr(record, "ID", None)
            if vmid is None:
                continue
            cpu = _float(getattr(record, "CPU", None))
            mem = _float(getattr(record, "MEMORY", None))
            out[int(vmid)] = (cpu, int(mem) if mem is not None else None)
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
