"""The simulated zone's state and behaviour: hosts, networks, templates, VMs and their lifecycle.

Where it sits: :mod:`libs.onesim.server` turns XML-RPC calls into calls of :class:`ZoneCore` methods named after
the OpenNebula methods (``vm_allocate`` for ``one.vm.allocate`` ...) and control requests into the ``ctl_*``
methods. A single re-entrant lock guards the state; timed transitions (PROLOG → BOOT → RUNNING, SHUTDOWN → EPILOG
→ DONE ...) run on one engine thread from a heap of due events, or inline when their duration is 0. Guests are
started through :class:`libs.onesim.guests.GuestRunner` when a VM boots.
"""

from __future__ import annotations

import fnmatch
import heapq
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import states as S
from .config import ZoneConfig
from .placement import ExpressionError, choose_host, validate
from .template import Template, TemplateSyntaxError, cdata, parse_template, resolve_context

log = logging.getLogger(__name__)

_PERMS_XML = (
    "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A><GROUP_U>0</GROUP_U>"
    "<GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A>"
    "</PERMISSIONS>"
)
# USER_TEMPLATE attributes oned keeps in the short (vmpool.info) form
_SHORT_USER_ATTRS = ("LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_REQUIREMENTS")
_WORD = re.compile(r"\w+")


class OneError(Exception):
    """An OpenNebula failure response: ``[False, message, code]``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _x(value: object) -> str:
    """Escape text for XML element content (names users choose may hold & or <)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ----------------------------------------------------------------------------------------------------- entities
@dataclass
class User:
    uid: int
    name: str
    password: str
    gid: int
    gname: str


@dataclass
class Host:
    hid: int
    name: str
    max_cpu: int
    max_mem_kb: int
    hypervisor: str
    im_mad: str
    vm_mad: str
    state: int = S.HOST_MONITORED
    prev_state: int = S.HOST_MONITORED
    cpu_usage: int = 0
    mem_usage_kb: int = 0
    vms: set[int] = field(default_factory=set)
    template: Template = field(default_factory=Template)
    last_mon: int = 0
    used_cpu_mon: int = 0
    used_mem_mon: int = 0

    def attrs(self) -> dict[str, str | float]:
        """Attributes visible to SCHED_REQUIREMENTS / SCHED_RANK."""
        free_cpu = float(self.max_cpu - self.cpu_usage)
        free_mem = float(self.max_mem_kb - self.mem_usage_kb)
        out: dict[str, str | float] = {k: v for k, v in self.template.simple_items()}
        out.update(
            ID=float(self.hid), NAME=self.name, HYPERVISOR=self.hypervisor, CLUSTER_ID=0.0, CLUSTER="default",
            RUNNING_VMS=float(len(self.vms)), FREE_CPU=free_cpu, FREECPU=free_cpu, FREE_MEM=free_mem,
            FREEMEMORY=free_mem, MAX_CPU=float(self.max_cpu), MAX_MEM=float(self.max_mem_kb),
            TOTAL_CPU=float(self.max_cpu), TOTAL_MEM=float(self.max_mem_kb), CPU_USAGE=float(self.cpu_usage),
            MEM_USAGE=float(self.mem_usage_kb), IM_MAD=self.im_mad, VM_MAD=self.vm_mad,
        )
        return out


@dataclass
class VNet:
    nid: int
    name: str
    first_ip: int
    size: int
    leases: dict[int, int] = field(default_factory=dict)  # ip offset -> vm id
    cursor: int = 0

    def lease(self, vm_id: int) -> str | None:
        """Take the next free address (round robin from the last one handed out, as oned's AR does)."""
        for step in range(self.size):
            off = (self.cursor + step) % self.size
            if off not in self.leases:
                self.leases[off] = vm_id
                self.cursor = (off + 1) % self.size
                return str(ipaddress.IPv4Address(self.first_ip + off))
        return None

    def release(self, ip: str, vm_id: int) -> None:
        try:
            off = int(ipaddress.IPv4Address(ip)) - self.first_ip
        except ValueError:
            return
        if self.leases.get(off) == vm_id:
            del self.leases[off]

    @property
    def first_mac(self) -> str:
        return mac_for(str(ipaddress.IPv4Address(self.first_ip)))


def mac_for(ip: str) -> str:
    """oned's default MAC: prefix 02:00 followed by the four IPv4 bytes."""
    b = ipaddress.IPv4Address(ip).packed
    return "02:00:" + ":".join(f"{x:02x}" for x in b)


@dataclass
class VMTemplate:
    tid: int
    name: str
    uid: int
    gid: int
    regtime: int
    template: Template


@dataclass
class History:
    seq: int
    hid: int
    hostname: str
    vm_mad: str
    stime: int
    pstime: int = 0
    petime: int = 0
    rstime: int = 0
    retime: int = 0
    estime: int = 0
    eetime: int = 0
    etime: int = 0
    action: int = 0


@dataclass
class LoadProfile:
    """CPU (OpenNebula percent: 100 = one core) and memory (fraction of MEMORY) a VM reports over time."""

    kind: str = "constant"  # constant | step | sine
    cpu: float = 10.0
    high: float = 90.0  # step: value after ``at`` seconds
    at: float = 0.0
    amplitude: float = 0.0  # sine
    period: float = 60.0
    memory: float = 0.5
    since: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadProfile:
        """Build from the control API's JSON, validating kinds and numbers."""
        kind = str(data.get("kind", data.get("profile", "constant")))
        if kind not in ("constant", "step", "sine"):
            raise ValueError(f"load profile kind {kind!r}: expected constant, step or sine")
        try:
            prof = cls(
                kind=kind, cpu=float(data.get("cpu", 10.0)), high=float(data.get("high", data.get("cpu", 90.0))),
                at=float(data.get("at", 0.0)), amplitude=float(data.get("amplitude", 0.0)),
                period=float(data.get("period", 60.0)), memory=float(data.get("memory", 0.5)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"load profile: {exc}") from exc
        if prof.period <= 0 or not 0 <= prof.memory <= 1:
            raise ValueError("load profile: period must be > 0 and memory a fraction in [0, 1]")
        return prof

    def cpu_at(self, now: float) -> float:
        if self.kind == "step":
            return self.high if now - self.since >= self.at else self.cpu
        if self.kind == "sine":
            return max(0.0, self.cpu + self.amplitude * math.sin(2 * math.pi * (now - self.since) / self.period))
        return self.cpu


@dataclass
class VM:
    vid: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    template: Template
    user_template: Template
    stime: int
    state: int = S.PENDING
    lcm: int = S.LCM_INIT
    prev_state: int = S.PENDING
    prev_lcm: int = S.LCM_INIT
    etime: int = 0
    deploy_id: str = ""
    host: int | None = None
    history: list[History] = field(default_factory=list)
    monitoring: list[dict[str, Any]] = field(default_factory=list)
    resume_from: str = ""  # "", "undeploy" or "stop": how to boot when next placed
    gen: int = 0  # bumped on every lifecycle step: stale timed events compare and give up
    boot_seq: int = 0  # guest incarnation
    version: int = 0
    cache_full: tuple[int, str] | None = None
    cache_short: tuple[int, str] | None = None
    cpu: float = 1.0
    memory_mb: int = 128
    netrx: int = 0
    nettx: int = 0

    @property
    def envid(self) -> str:
        ctx = self.template.vector("CONTEXT") or {}
        return self.user_template.get("CARINA_ENVID") or ctx.get("ENVID", "")


# --------------------------------------------------------------------------------------------------- selectors
def selector_matches(sel: dict[str, Any], vm: VM) -> bool:
    """Control-API selector: ``{"vm_id": 5}``, ``{"name": "web-*"}``, ``{"envid": "7"}`` or ``{}`` (all)."""
    if "vm_id" in sel and int(sel["vm_id"]) != vm.vid:
        return False
    if "name" in sel and not fnmatch.fnmatchcase(vm.name, str(sel["name"])):
        return False
    return not ("envid" in sel and str(sel["envid"]) != vm.envid)


def check_selector(sel: Any) -> dict[str, Any]:
    """Validate a selector object and return it."""
    if not isinstance(sel, dict) or not set(sel) <= {"vm_id", "name", "envid"}:
        raise ValueError("selector: expected an object with vm_id, name and/or envid")
    if "vm_id" in sel:
        try:
            int(sel["vm_id"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"selector vm_id {sel['vm_id']!r} is not an integer") from exc
    return sel


class GuestHooks:
    """What the zone needs from the guest runner (see :class:`libs.onesim.guests.GuestRunner`)."""

    def start(self, vm_id: int, boot_seq: int, info: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self, vm_id: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------- core
class ZoneCore:
    """State and behaviour of one simulated OpenNebula zone.

    Args:
        config: the zone's configuration.
        endpoint: the XML-RPC URL reported by ``one.zonepool.info``.
    """

    def __init__(self, config: ZoneConfig, endpoint: str = "") -> None:
        self.cfg = config
        self.endpoint = endpoint
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dirty = False
        self.guests: GuestHooks | None = None

        self.users: dict[str, User] = {}
        for i, (name, pw) in enumerate(config.users):
            self.users[name] = User(i, name, pw, 0 if i == 0 else 1, "oneadmin" if i == 0 else "users")
        self.hosts: dict[int, Host] = {}
        self.vnets: dict[int, VNet] = {}
        self.templates: dict[int, VMTemplate] = {}
        self.vms: dict[int, VM] = {}
        self.live: set[int] = set()  # VMs not DONE
        self.pending: dict[int, None] = {}  # PENDING VMs in arrival order
        self.next_vm = 0
        self.next_tmpl = 0
        self.next_host = 0
        self.load_rules: list[tuple[dict[str, Any], LoadProfile]] = []
        self.outcome_rules: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.metrics_rules: list[tuple[dict[str, Any], bool]] = []
        self.monitor_rounds = 0

        for spec in config.hosts:
            self._add_host(spec.name, spec.cpu, spec.memory_mb, spec.hypervisor)
        for i, net in enumerate(config.networks):
            network = ipaddress.IPv4Network(net.cidr)
            first = int(network.network_address) + 1
            self.vnets[i] = VNet(i, net.name, first, network.num_addresses - 2)
        if config.state_file and os.path.exists(config.state_file):
            self._load_state(config.state_file)

    # ============================================================================================== engine
    def start(self) -> None:
        """Start the engine thread (timed transitions, monitoring, state saving)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._engine, name=f"onesim-{self.cfg.name}-engine", daemon=True)
        self._thread.start()
        with self.lock:
            self._reschedule()
            self._every(self.cfg.monitor_seconds, self._monitor_round)
            if self.cfg.state_file:
                self._every(self.cfg.save_seconds, self._save_if_dirty)

    def stop(self) -> None:
        """Stop the engine and write the state file one last time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cfg.state_file:
            with self.lock:
                self._save_state(self.cfg.state_file)

    def _engine(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, fn = heapq.heappop(self._heap)
                    try:
                        fn()
                    except Exception:  # one bad event must not stop the zone
                        log.exception("onesim %s: timed event failed", self.cfg.name)
                timeout = (self._heap[0][0] - time.monotonic()) if self._heap else 1.0
                self._cond.wait(max(0.0, min(timeout, 1.0)))

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` under the lock after ``delay`` seconds; at once when ``delay`` is 0."""
        if delay <= 0:
            fn()
            return
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
        self._cond.notify()

    def _every(self, period: float, fn: Callable[[], None]) -> None:
        def tick() -> None:
            fn()
            if not self._stopping:
                self._after(period, tick)

        self._after(max(period, 0.01), tick)

    # ======================================================================================== authentication
    def auth(self, session: Any, method: str) -> User:
        """Check the ``user:password`` session string."""
        if isinstance(session, str) and ":" in session:
            name, _, pw = session.partition(":")
            user = self.users.get(name)
            if user is not None and user.password == pw:
                return user
        raise OneError(S.AUTHENTICATION, f"[{method}] User couldn't be authenticated, aborting call.")

    # ============================================================================================= helpers
    def _touch(self, vm: VM) -> None:
        vm.version += 1
        self._dirty = True

    def _set_state(self, vm: VM, state: int, lcm: int) -> None:
        if (vm.state, vm.lcm) != (state, lcm):
            vm.prev_state, vm.prev_lcm = vm.state, vm.lcm
            vm.state, vm.lcm = state, lcm
        self._touch(vm)

    def _vm(self, vid: Any, method: str) -> VM:
        vm = self.vms.get(vid) if isinstance(vid, int) else None
        if vm is None:
            raise OneError(S.NO_EXISTS, f"[{method}] Error getting virtual machine [{vid}].")
        return vm

    def _owner_check(self, user: User, vm: VM, method: str) -> None:
        if user.uid != 0 and vm.uid != user.uid:
            raise OneError(
                S.AUTHORIZATION,
                f"[{method}] User [{user.uid}] : Not authorized to perform MANAGE VM [{vm.vid}].",
            )

    def _add_host(self, name: str, cpu: int, memory_mb: int, hypervisor: str) -> Host:
        hid = self.next_host
        self.next_host += 1
        mad = "ec2" if hypervisor == "ec2" else hypervisor
        host = Host(hid, name, cpu, memory_mb * 1024, hypervisor, mad, mad)
        host.template.items = [
            ("ARCH", "x86_64"), ("CPUSPEED", "2400"), ("HOSTNAME", name), ("HYPERVISOR", hypervisor),
            ("IM_MAD", mad), ("MODELNAME", "Simulated CPU"),
            ("VM_MAD", mad),
        ]
        self.hosts[hid] = host
        return host

    def _parse(self, text: Any, method: str, what: str = "template") -> Template:
        if not isinstance(text, str):
            raise OneError(S.XML_RPC_API, f"[{method}] Expected a string {what}.")
        try:
            return parse_template(text)
        except TemplateSyntaxError as exc:
            raise OneError(S.INTERNAL, f"[{method}] {exc}") from exc

    # ====================================================================================== system / zone
    def system_version(self, user: User) -> str:
        return self.cfg.version

    def zonepool_info(self, user: User) -> str:
        return (
            f"<ZONE_POOL><ZONE><ID>{self.cfg.zone_id}</ID><NAME>{_x(self.cfg.name)}</NAME><STATE>0</STATE>"
            f"<TEMPLATE><ENDPOINT>{cdata(self.endpoint)}</ENDPOINT></TEMPLATE><SERVER_POOL/></ZONE></ZONE_POOL>"
        )

    # ============================================================================================== hosts
    def host_allocate(self, user: User, name: Any, im_mad: Any, vm_mad: Any, cluster_id: Any = -1) -> int:
        m = "one.host.allocate"
        if user.uid != 0:
            raise OneError(S.AUTHORIZATION, f"[{m}] User [{user.uid}] : Not authorized to perform CREATE HOST.")
        if not isinstance(name, str) or not name.strip():
            raise OneError(S.ALLOCATE, f"[{m}] Error allocating a new host. Invalid NAME.")
        for h in self.hosts.values():
            if h.name == name:
                raise OneError(S.ALLOCATE, f"[{m}] Error allocating a new host. NAME is already taken by HOST {h.hid}.")
        spec = self.cfg.hosts[0] if self.cfg.hosts else None
        hyper = str(vm_mad) if vm_mad in ("kvm", "openvz", "ec2", "lxc", "qemu", "firecracker") else "kvm"
        host = self._add_host(name, spec.cpu if spec else 800, spec.memory_mb if spec else 32768, hyper)
        host.im_mad, host.vm_mad = str(im_mad), str(vm_mad)
        self._dirty = True
        self._reschedule()
        return host.hid

    def _host(self, hid: Any, method: str) -> Host:
        host = self.hosts.get(hid) if isinstance(hid, int) else None
        if host is None:
            raise OneError(S.NO_EXISTS, f"[{method}] Error getting host [{hid}].")
        return host

    def host_info(self, user: User, hid: Any, decrypt: Any = False) -> str:
        return self._host_xml(self._host(hid, "one.host.info"))

    def host_status(self, user: User, hid: Any, status: Any) -> int:
        m = "one.host.status"
        host = self._host(hid, m)
        if status not in (0, 1, 2):
            raise OneError(S.XML_RPC_API, f"[{m}] Wrong status code {status}.")
        new_state = {0: S.HOST_MONITORED, 1: S.HOST_DISABLED, 2: S.HOST_OFFLINE}[status]
        host.prev_state, host.state = host.state, new_state
        self._dirty = True
        if new_state == S.HOST_MONITORED:
            self._reschedule()
        return int(host.hid)

    def hostpool_info(self, user: User) -> str:
        return "<HOST_POOL>" + "".join(self._host_xml(h) for h in self.hosts.values()) + "</HOST_POOL>"

    def _host_xml(self, h: Host) -> str:
        free_cpu = max(0, h.max_cpu - h.used_cpu_mon)
        free_mem = max(0, h.max_mem_kb - h.used_mem_mon)
        vms = "".join(f"<ID>{v}</ID>" for v in sorted(h.vms))
        return (
            f"<HOST><ID>{h.hid}</ID><NAME>{_x(h.name)}</NAME><STATE>{h.state}</STATE>"
            f"<PREV_STATE>{h.prev_state}</PREV_STATE><IM_MAD>{cdata(h.im_mad)}</IM_MAD>"
            f"<VM_MAD>{cdata(h.vm_mad)}</VM_MAD><CLUSTER_ID>0</CLUSTER_ID><CLUSTER>default</CLUSTER>"
            f"<HOST_SHARE><MEM_USAGE>{h.mem_usage_kb}</MEM_USAGE><CPU_USAGE>{h.cpu_usage}</CPU_USAGE>"
            f"<TOTAL_MEM>{h.max_mem_kb}</TOTAL_MEM><TOTAL_CPU>{h.max_cpu}</TOTAL_CPU>"
            f"<MAX_MEM>{h.max_mem_kb}</MAX_MEM><MAX_CPU>{h.max_cpu}</MAX_CPU>"
            f"<RUNNING_VMS>{len(h.vms)}</RUNNING_VMS><VMS_THREAD>1</VMS_THREAD>"
            "<DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>1048576</FREE_DISK><MAX_DISK>1048576</MAX_DISK>"
            "<USED_DISK>0</USED_DISK></DATASTORES><PCI_DEVICES/><NUMA_NODES/></HOST_SHARE>"
            f"<VMS>{vms}</VMS>{h.template.to_xml()}"
            f"<MONITORING><TIMESTAMP>{h.last_mon}</TIMESTAMP><ID>{h.hid}</ID><CAPACITY>"
            f"<FREE_CPU>{free_cpu}</FREE_CPU><FREE_MEMORY>{free_mem}</FREE_MEMORY>"
            f"<USED_CPU>{h.used_cpu_mon}</USED_CPU><USED_MEMORY>{h.used_mem_mon}</USED_MEMORY></CAPACITY>"
            "<SYSTEM><NETRX>0</NETRX><NETTX>0</NETTX></SYSTEM></MONITORING></HOST>"
        )

    # ===================================================================================== networks/images
    def vnpool_info(self, user: User, filter_flag: Any = -2, start: Any = -1, end: Any = -1) -> str:
        parts = ["<VNET_POOL>"]
        for n in self.vnets.values():
            first = str(ipaddress.IPv4Address(n.first_ip))
            parts.append(
                f"<VNET><ID>{n.nid}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME>"
                f"<NAME>{_x(n.name)}</NAME>{_PERMS_XML}<CLUSTERS><ID>0</ID></CLUSTERS><BRIDGE>br{n.nid}</BRIDGE>"
                "<BRIDGE_TYPE>linux</BRIDGE_TYPE><STATE>1</STATE><PREV_STATE>0</PREV_STATE>"
                "<PARENT_NETWORK_ID/><VN_MAD>bridge</VN_MAD><PHYDEV/><VLAN_ID/><OUTER_VLAN_ID/>"
                "<VLAN_ID_AUTOMATIC>0</VLAN_ID_AUTOMATIC><OUTER_VLAN_ID_AUTOMATIC>0</OUTER_VLAN_ID_AUTOMATIC>"
                f"<USED_LEASES>{len(n.leases)}</USED_LEASES><VROUTERS/><UPDATED_VMS/><OUTDATED_VMS/>"
                "<UPDATING_VMS/><ERROR_VMS/>"
                f"<TEMPLATE><BRIDGE>{cdata(f'br{n.nid}')}</BRIDGE><VN_MAD>{cdata('bridge')}</VN_MAD></TEMPLATE>"
                f"<AR_POOL><AR><AR_ID>0</AR_ID><IP>{first}</IP><MAC>{n.first_mac}</MAC><SIZE>{n.size}</SIZE>"
                f"<TYPE>IP4</TYPE><ALLOCATED/></AR></AR_POOL></VNET>"
            )
        parts.append("</VNET_POOL>")
        return "".join(parts)

    def imagepool_info(self, user: User, filter_flag: Any = -2, start: Any = -1, end: Any = -1) -> str:
        return (
            "<IMAGE_POOL><IMAGE><ID>0</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME>"
            f"<NAME>base-os</NAME>{_PERMS_XML}<TYPE>0</TYPE><DISK_TYPE>0</DISK_TYPE><PERSISTENT>0</PERSISTENT>"
            "<REGTIME>1700000000</REGTIME><SOURCE>/var/lib/one/datastores/1/base-os</SOURCE><PATH/>"
            "<FORMAT>qcow2</FORMAT><FS/><SIZE>2048</SIZE><STATE>1</STATE><PREV_STATE>1</PREV_STATE>"
            "<RUNNING_VMS>0</RUNNING_VMS><CLONING_OPS>0</CLONING_OPS><CLONING_ID>-1</CLONING_ID>"
            "<TARGET_SNAPSHOT>-1</TARGET_SNAPSHOT><DATASTORE_ID>1</DATASTORE_ID><DATASTORE>default</DATASTORE>"
            "<VMS/><CLONES/><APP_CLONES/><TEMPLATE><DEV_PREFIX><![CDATA[vd]]></DEV_PREFIX></TEMPLATE>"
            "<SNAPSHOTS><ALLOW_ORPHANS>NO</ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE>"
            "<NEXT_SNAPSHOT>0</NEXT_SNAPSHOT></SNAPSHOTS></IMAGE></IMAGE_POOL>"
        )

    # ========================================================================================== templates
    def template_allocate(self, user: User, text: Any) -> int:
        m = "one.template.allocate"
        tmpl = self._parse(text, m)
        name = tmpl.get("NAME")
        if not name:
            raise OneError(S.ALLOCATE, f"[{m}] Error allocating a new template. No NAME in template.")
        for t in self.templates.values():
            if t.name == name and t.uid == user.uid:
                raise OneError(
                    S.ALLOCATE, f"[{m}] Error allocating a new template. NAME is already taken by TEMPLATE {t.tid}."
                )
        tmpl.remove("NAME")
        tid = self.next_tmpl
        self.next_tmpl += 1
        self.templates[tid] = VMTemplate(tid, name, user.uid, user.gid, int(time.time()), tmpl)
        self._dirty = True
        return tid

    def _template(self, tid: Any, method: str) -> VMTemplate:
        t = self.templates.get(tid) if isinstance(tid, int) else None
        if t is None:
            raise OneError(S.NO_EXISTS, f"[{method}] Error getting template [{tid}].")
        return t

    def template_info(self, user: User, tid: Any, extended: Any = False, decrypt: Any = False) -> str:
        return self._template_xml(self._template(tid, "one.template.info"))

    def template_delete(self, user: User, tid: Any, recursive: Any = False) -> int:
        t = self._template(tid, "one.template.delete")
        del self.templates[t.tid]
        self._dirty = True
        return t.tid

    def templatepool_info(self, user: User, filter_flag: Any = -2, start: Any = -1, end: Any = -1) -> str:
        items = [t for t in self.templates.values() if self._id_in(t.tid, start, end)]
        items.sort(key=lambda t: t.tid, reverse=self.cfg.list_order_desc)
        return "<VMTEMPLATE_POOL>" + "".join(self._template_xml(t) for t in items) + "</VMTEMPLATE_POOL>"

    def _template_xml(self, t: VMTemplate) -> str:
        body = t.template.copy()
        body.set("NAME", t.name)
        return (
            f"<VMTEMPLATE><ID>{t.tid}</ID><UID>{t.uid}</UID><GID>{t.gid}</GID>"
            f"<UNAME>{self._uname(t.uid)}</UNAME><GNAME>{self._gname(t.gid)}</GNAME><NAME>{_x(t.name)}</NAME>"
            f"{_PERMS_XML}<REGTIME>{t.regtime}</REGTIME>{body.to_xml()}</VMTEMPLATE>"
        )

    def template_instantiate(
        self, user: User, tid: Any, name: Any = "", hold: Any = False, extra: Any = "", persistent: Any = False
    ) -> int:
        m = "one.template.instantiate"
        t = self._template(tid, m)
        tmpl = t.template.copy()
        if extra:
            tmpl.merge(self._parse(extra, m, "extra template"))
        tmpl.set("TEMPLATE_ID", str(t.tid))
        vm_name = name if isinstance(name, str) and name else ""
        return self._create_vm(user, tmpl, bool(hold), m, vm_name or None, default_name=t.name)

    def _uname(self, uid: int) -> str:
        return next((u.name for u in self.users.values() if u.uid == uid), "oneadmin")

    def _gname(self, gid: int) -> str:
        return "oneadmin" if gid == 0 else "users"

    # ================================================================================================ VMs
    def vm_allocate(self, user: User, text: Any, hold: Any = False) -> int:
        m = "one.vm.allocate"
        return self._create_vm(user, self._parse(text, m), bool(hold), m, None, default_name=None)

    def _create_vm(
        self, user: User, tmpl: Template, hold: bool, method: str, name: str | None, default_name: str | None
    ) -> int:
        err = f"[{method}] Error allocating a new virtual machine template."
        try:
            cpu = float(tmpl.get("CPU") or "")
            memory = int(float(tmpl.get("MEMORY") or ""))
        except ValueError as exc:
            raise OneError(S.ALLOCATE, f"{err} VM template needs numeric CPU and MEMORY attributes.") from exc
        if cpu <= 0 or memory <= 0:
            raise OneError(S.ALLOCATE, f"{err} CPU and MEMORY must be positive.")
        reqs = tmpl.get("SCHED_REQUIREMENTS") or tmpl.get("REQUIREMENTS") or ""
        rank_expr = tmpl.get("SCHED_RANK") or tmpl.get("RANK") or ""
        try:
            validate(reqs, rank_expr)
        except ExpressionError as exc:
            raise OneError(S.ALLOCATE, f"{err} {exc}") from exc

        vid = self.next_vm
        # NIC leases first: a missing network or a full range rejects the VM before it exists
        leased: list[tuple[VNet, str]] = []
        nic_id = 0
        new_items: list[tuple[str, str | dict[str, str]]] = []
        for key, value in tmpl.items:
            if key != "NIC" or not isinstance(value, dict):
                new_items.append((key, value))
                continue
            net = self._find_vnet(value)
            if net is None:
                for n, lip in leased:
                    n.release(lip, vid)
                ref = value.get("NETWORK_ID", value.get("NETWORK", "?"))
                raise OneError(S.ALLOCATE, f"{err} Virtual network {ref} does not exist.")
            ip = value.get("IP") or net.lease(vid)
            if ip is None:
                for n, lip in leased:
                    n.release(lip, vid)
                raise OneError(S.ALLOCATE, f"{err} Cannot get IP/MAC lease from virtual network {net.nid}.")
            leased.append((net, ip))
            nic = dict(value)
            nic.update(
                AR_ID="0", BRIDGE=f"br{net.nid}", BRIDGE_TYPE="linux", IP=ip, MAC=mac_for(ip), NAME=f"NIC{nic_id}",
                NETWORK=net.name, NETWORK_ID=str(net.nid), NETWORK_UNAME="oneadmin", NIC_ID=str(nic_id),
                SECURITY_GROUPS="0", TARGET=f"one-{vid}-{nic_id}", VN_MAD="bridge",
            )
            new_items.append(("NIC", nic))
            nic_id += 1
        tmpl.items = new_items

        vm_name: str = name or tmpl.get("NAME") or (f"{default_name}-{vid}" if default_name else f"one-{vid}")
        tmpl.remove("NAME")
        ctx = tmpl.vector("CONTEXT")
        if ctx is not None and ctx.get("NETWORK", "").upper() == "YES":
            for i, nic in enumerate(tmpl.vectors("NIC")):
                ctx.setdefault(f"ETH{i}_IP", nic["IP"])
                ctx.setdefault(f"ETH{i}_MAC", nic["MAC"])
        if ctx is not None:
            ctx.setdefault("DISK_ID", "1")
            ctx.setdefault("TARGET", "hda")
        resolve_context(tmpl, {
            "VMID": str(vid), "NAME": vm_name, "UID": str(user.uid), "UNAME": user.name,
            "GID": str(user.gid), "GNAME": user.gname,
        })
        tmpl.set("VMID", str(vid))
        tmpl.set("CPU", tmpl.get("CPU") or "1")
        if not tmpl.has("AUTOMATIC_REQUIREMENTS"):
            tmpl.items.append(("AUTOMATIC_REQUIREMENTS", "!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)"))

        # Attributes oned moves out of TEMPLATE into USER_TEMPLATE (anything it does not know as VM syntax)
        user_tmpl = Template()
        keep = {
            "CPU", "VCPU", "MEMORY", "NIC", "DISK", "CONTEXT", "GRAPHICS", "OS", "FEATURES", "INPUT", "RAW",
            "CPU_MODEL", "VMID", "TEMPLATE_ID", "AUTOMATIC_REQUIREMENTS", "AUTOMATIC_DS_REQUIREMENTS",
            "AUTOMATIC_NIC_REQUIREMENTS", "NIC_ALIAS", "PCI", "SECURITY_GROUP_RULE", "TOPOLOGY", "VROUTER_ID",
            "MEMORY_UNIT_COST", "CPU_COST", "MEMORY_COST", "DISK_COST", "SCHED_ACTION",
        }
        sys_items: list[tuple[str, str | dict[str, str]]] = []
        for key, value in tmpl.items:
            (sys_items if key in keep else user_tmpl.items).append((key, value))
        tmpl.items = sys_items

        self.next_vm += 1
        vm = VM(
            vid, user.uid, user.gid, user.name, user.gname, vm_name, tmpl, user_tmpl, int(time.time()),
            cpu=cpu, memory_mb=memory,
        )
        self.vms[vid] = vm
        self.live.add(vid)
        self._touch(vm)
        if hold:
            self._set_state(vm, S.HOLD, S.LCM_INIT)
        else:
            self._make_pending(vm)
        return vid

    def _find_vnet(self, nic: dict[str, str]) -> VNet | None:
        if "NETWORK_ID" in nic:
            try:
                return self.vnets.get(int(nic["NETWORK_ID"]))
            except ValueError:
                return None
        name = nic.get("NETWORK")
        return next((n for n in self.vnets.values() if n.name == name), None)

    # ------------------------------------------------------------------------------------- scheduling
    def _make_pending(self, vm: VM) -> None:
        self._set_state(vm, S.PENDING, S.LCM_INIT)
        self.pending[vm.vid] = None
        gen = vm.gen = vm.gen + 1

        def place() -> None:
            self._try_place(vm, gen)

        self._after(self.cfg.sched_seconds, place)

    def _try_place(self, vm: VM, gen: int | None = None) -> bool:
        if vm.state != S.PENDING or (gen is not None and gen != vm.gen):
            return False
        need_cpu = int(round(vm.cpu * 100))
        need_mem = vm.memory_mb * 1024
        candidates = [
            (h.hid, h.attrs()) for h in self.hosts.values()
            if h.state == S.HOST_MONITORED and h.cpu_usage + need_cpu <= h.max_cpu
            and h.mem_usage_kb + need_mem <= h.max_mem_kb
        ]
        reqs = vm.user_template.get("SCHED_REQUIREMENTS") or vm.user_template.get("REQUIREMENTS") or ""
        rank_expr = vm.user_template.get("SCHED_RANK") or vm.user_template.get("RANK") or ""
        hid = choose_host(candidates, reqs, rank_expr) if candidates else None
        if hid is None:
            msg = "No host with enough capacity to deploy the VM" if not candidates else (
                "No host meets capacity and SCHED_REQUIREMENTS")
            if not (vm.user_template.get("SCHED_MESSAGE") or "").endswith(msg):
                vm.user_template.set("SCHED_MESSAGE", f"{time.strftime('%a %b %d %H:%M:%S %Y')}: {msg}")
                self._touch(vm)
            return False
        self.pending.pop(vm.vid, None)
        vm.user_template.remove("SCHED_MESSAGE")
        host = self.hosts[hid]
        host.cpu_usage += need_cpu
        host.mem_usage_kb += need_mem
        host.vms.add(vm.vid)
        vm.host = hid
        now = int(time.time())
        vm.history.append(History(len(vm.history), hid, host.name, host.vm_mad, now, pstime=now))
        half = self.cfg.boot_seconds / 2
        if vm.resume_from == "undeploy":
            steps = [(S.ACTIVE, S.PROLOG_UNDEPLOY, half), (S.ACTIVE, S.BOOT_UNDEPLOY, half)]
        elif vm.resume_from == "stop":
            steps = [(S.ACTIVE, S.PROLOG_RESUME, half), (S.ACTIVE, S.BOOT_STOPPED, half)]
        else:
            steps = [(S.ACTIVE, S.PROLOG, half), (S.ACTIVE, S.BOOT, half)]
        vm.resume_from = ""
        self._chain(vm, steps, self._booted)
        return True

    def _reschedule(self) -> None:
        """Capacity changed: try every PENDING VM again, oldest first."""
        for vid in list(self.pending):
            vm = self.vms.get(vid)
            if vm is None or vm.state != S.PENDING:
                self.pending.pop(vid, None)
                continue
            self._try_place(vm)

    def _release_host(self, vm: VM) -> None:
        if vm.host is None:
            return
        host = self.hosts.get(vm.host)
        if host is not None:
            host.cpu_usage = max(0, host.cpu_usage - int(round(vm.cpu * 100)))
            host.mem_usage_kb = max(0, host.mem_usage_kb - vm.memory_mb * 1024)
            host.vms.discard(vm.vid)
        vm.host = None
        self._after(0, self._reschedule)

    # -------------------------------------------------------------------------------------- lifecycle
    def _chain(
        self, vm: VM, steps: list[tuple[int, int, float]], done: Callable[[VM], None] | None
    ) -> None:
        """Walk ``vm`` through timed (state, lcm, seconds) steps, then call ``done``; a newer chain cancels it."""
        gen = vm.gen = vm.gen + 1

        def step(i: int) -> None:
            if vm.gen != gen:
                return
            if i == len(steps):
                if done is not None:
                    done(vm)
                return
            state, lcm, seconds = steps[i]
            self._set_state(vm, state, lcm)
            if lcm in (S.BOOT, S.BOOT_UNDEPLOY, S.BOOT_STOPPED, S.BOOT_POWEROFF, S.BOOT_SUSPENDED):
                vm.deploy_id = vm.deploy_id or f"one-{vm.vid}"
                if vm.history:
                    vm.history[-1].petime = vm.history[-1].petime or int(time.time())
                    vm.history[-1].rstime = vm.history[-1].rstime or int(time.time())
            self._after(seconds, lambda: step(i + 1))

        step(0)

    def _booted(self, vm: VM) -> None:
        self._set_state(vm, S.ACTIVE, S.RUNNING)
        self._start_guest(vm)

    def _start_guest(self, vm: VM) -> None:
        vm.boot_seq += 1
        ctx = vm.template.vector("CONTEXT")
        if self.guests is None or ctx is None or not ctx.get("CARINA_URL"):
            return
        nics = vm.template.vectors("NIC")
        info = {
            "vm_id": vm.vid, "name": vm.name, "ip": nics[0]["IP"] if nics else "", "context": dict(ctx),
        }
        self.guests.start(vm.vid, vm.boot_seq, info)

    def _stop_guest(self, vm: VM) -> None:
        if self.guests is not None:
            self.guests.stop(vm.vid)

    def _finish(self, vm: VM) -> None:
        """The VM reaches DONE: free its host and leases, close its history."""
        now = int(time.time())
        self._stop_guest(vm)
        self._release_host(vm)
        for nic in vm.template.vectors("NIC"):
            net = self._find_vnet(nic)
            if net is not None:
                net.release(nic.get("IP", ""), vm.vid)
        if vm.history and not vm.history[-1].etime:
            h = vm.history[-1]
            h.etime = h.eetime = now
            h.retime = h.retime or now
        vm.etime = now
        self.pending.pop(vm.vid, None)
        self.live.discard(vm.vid)
        vm.gen += 1
        self._set_state(vm, S.DONE, S.LCM_INIT)

    def _close_history(self, vm: VM, action: str) -> None:
        if vm.history and not vm.history[-1].etime:
            now = int(time.time())
            h = vm.history[-1]
            h.etime = h.eetime = now
            h.retime = h.retime or now
            h.action = S.HISTORY_ACTION.get(action, 0)

    def vm_action(self, user: User, action: Any, vid: Any) -> int:
        m = "one.vm.action"
        vm = self._vm(vid, m)
        self._owner_check(user, vm, m)
        if not isinstance(action, str):
            raise OneError(S.XML_RPC_API, f"[{m}] Expected an action name.")
        st, lcm = vm.state, vm.lcm
        hard = action.endswith("-hard")
        base = action[:-5] if hard else action
        shut = self.cfg.shutdown_seconds * (self.cfg.hard_factor if hard else 1.0)
        half = shut / 2
        running = st == S.ACTIVE and lcm == S.RUNNING
        unknown = st == S.ACTIVE and lcm == S.UNKNOWN

        def bad() -> OneError:
            return OneError(
                S.ACTION,
                f"[{m}] Error performing action \"{action}\" on virtual machine [{vm.vid}]: "
                f"this action is not available for state {S.state_name(st, lcm)}",
            )

        if base == "terminate" and action in ("terminate", "terminate-hard"):
            if st in (S.PENDING, S.HOLD, S.UNDEPLOYED, S.STOPPED):
                self._close_history(vm, action)
                self._finish(vm)
            elif running or unknown or st in (S.POWEROFF, S.SUSPENDED) or (
                hard and st == S.ACTIVE and lcm not in (S.EPILOG,)
            ):
                self._stop_guest(vm)
                self._close_history(vm, action)
                if st in (S.POWEROFF, S.SUSPENDED) or lcm in S.FAILURE_LCM_STATES:
                    steps = [(S.ACTIVE, S.EPILOG, shut)]
                else:
                    steps = [(S.ACTIVE, S.SHUTDOWN, half), (S.ACTIVE, S.EPILOG, half)]
                self._chain(vm, steps, self._finish)
            else:
                raise bad()
        elif base == "poweroff" and action in ("poweroff", "poweroff-hard"):
            if not (running or unknown):
                raise bad()
            self._stop_guest(vm)
            self._chain(vm, [(S.ACTIVE, S.SHUTDOWN_POWEROFF, shut)],
                        lambda v: self._set_state(v, S.POWEROFF, S.LCM_INIT))
        elif base == "undeploy" and action in ("undeploy", "undeploy-hard"):
            if not (running or unknown or st == S.POWEROFF):
                raise bad()
            self._stop_guest(vm)
            self._close_history(vm, action)
            steps = [(S.ACTIVE, S.EPILOG_UNDEPLOY, half)]
            if st != S.POWEROFF:
                steps.insert(0, (S.ACTIVE, S.SHUTDOWN_UNDEPLOY, half))

            def undeployed(v: VM) -> None:
                self._release_host(v)
                self._set_state(v, S.UNDEPLOYED, S.LCM_INIT)

            self._chain(vm, steps, undeployed)
        elif action == "stop":
            if not (running or st == S.SUSPENDED):
                raise bad()
            self._stop_guest(vm)
            self._close_history(vm, action)

            def stopped(v: VM) -> None:
                self._release_host(v)
                self._set_state(v, S.STOPPED, S.LCM_INIT)

            self._chain(vm, [(S.ACTIVE, S.SAVE_STOP, half), (S.ACTIVE, S.EPILOG_STOP, half)], stopped)
        elif action == "suspend":
            if not running:
                raise bad()
            self._stop_guest(vm)
            self._chain(vm, [(S.ACTIVE, S.SAVE_SUSPEND, shut)],
                        lambda v: self._set_state(v, S.SUSPENDED, S.LCM_INIT))
        elif action == "resume":
            boot = self.cfg.boot_seconds / 2
            if st == S.POWEROFF:
                self._chain(vm, [(S.ACTIVE, S.BOOT_POWEROFF, boot)], self._booted)
            elif st == S.SUSPENDED:
                self._chain(vm, [(S.ACTIVE, S.BOOT_SUSPENDED, boot)], self._booted)
            elif unknown:
                self._chain(vm, [(S.ACTIVE, S.BOOT_UNKNOWN, boot)], self._booted)
            elif st in (S.UNDEPLOYED, S.STOPPED):
                vm.resume_from = "undeploy" if st == S.UNDEPLOYED else "stop"
                self._make_pending(vm)
            else:
                raise bad()
        elif base == "reboot" and action in ("reboot", "reboot-hard"):
            if not running:
                raise bad()
            self._stop_guest(vm)
            self._touch(vm)
            self._after(0, lambda: self._start_guest(vm) if vm.state == S.ACTIVE and vm.lcm == S.RUNNING else None)
        elif action == "hold":
            if st != S.PENDING:
                raise bad()
            self.pending.pop(vm.vid, None)
            vm.gen += 1
            self._set_state(vm, S.HOLD, S.LCM_INIT)
        elif action == "release":
            if st != S.HOLD:
                raise bad()
            self._make_pending(vm)
        else:
            raise OneError(S.XML_RPC_API, f"[{m}] Virtual machine action \"{action}\" is not supported.")
        return vm.vid

    def vm_info(self, user: User, vid: Any, decrypt: Any = False) -> str:
        return self._vm_full_xml(self._vm(vid, "one.vm.info"))

    def vm_update(self, user: User, vid: Any, text: Any, mode: Any = 0) -> int:
        m = "one.vm.update"
        vm = self._vm(vid, m)
        self._owner_check(user, vm, m)
        new = self._parse(text, m)
        if mode in (1, True):
            vm.user_template.merge(new)
        elif mode in (0, False):
            vm.user_template = new
        else:
            raise OneError(S.XML_RPC_API, f"[{m}] Wrong update type {mode}, must be 0 (replace) or 1 (merge).")
        self._touch(vm)
        return vm.vid

    def vm_rename(self, user: User, vid: Any, name: Any) -> int:
        m = "one.vm.rename"
        vm = self._vm(vid, m)
        self._owner_check(user, vm, m)
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "\n\"'"):
            raise OneError(S.ACTION, f"[{m}] Invalid name for virtual machine [{vm.vid}].")
        vm.name = name
        self._touch(vm)
        return vm.vid

    # ---------------------------------------------------------------------------------------- pool info
    @staticmethod
    def _id_in(oid: int, start: Any, end: Any) -> bool:
        if isinstance(start, int) and start >= 0 and oid < start:
            return False
        return not (isinstance(end, int) and end >= 0 and oid > end)

    def _select_vms(self, method: str, user: User, filter_flag: Any, start: Any, end: Any, state: Any,
                    query: Any) -> list[VM]:
        if not all(isinstance(v, int) for v in (filter_flag, start, end, state)):
            raise OneError(S.XML_RPC_API, f"[{method}] Expected integer filter, start, end and state arguments.")
        if filter_flag < -4:
            raise OneError(S.XML_RPC_API, f"[{method}] Incorrect filter_flag")
        if state < -2 or state > 11:
            raise OneError(S.XML_RPC_API, f"[{method}] Incorrect filter_flag, state")
        q = query if isinstance(query, str) else ""
        if q and not self.cfg.fts_supported:
            raise OneError(S.INTERNAL, f"[{method}] Full text search is not supported by the SQL backend")
        source: Iterable[int] = self.vms if state in (-2, S.DONE) else self.live
        out = []
        for vid in source:
            vm = self.vms[vid]
            if state == -1 and vm.state == S.DONE:
                continue
            if state >= 0 and vm.state != state:
                continue
            if filter_flag == -3 and vm.uid != user.uid:
                continue
            if filter_flag in (-1, -4) and vm.uid != user.uid and vm.gid != user.gid:
                continue
            if filter_flag >= 0 and vm.uid != filter_flag:
                continue
            if user.uid != 0 and filter_flag == -2 and vm.uid != user.uid and vm.gid != user.gid:
                continue
            if not self._id_in(vid, start, -1 if end < -1 else end):
                continue
            if q and not self._search(vm, q):
                continue
            out.append(vm)
        out.sort(key=lambda v: v.vid, reverse=self.cfg.list_order_desc)
        if end < -1:
            out = out[: -end]
        return out

    def _search(self, vm: VM, query: str) -> bool:
        """oned's ``KEY=VALUE`` search over a VM (a MySQL full-text phrase over its search token).

        The token lists ``KEY=value`` for UNAME, GNAME, NAME, every TEMPLATE and USER_TEMPLATE attribute (vector
        attributes contribute their inner pairs) and the last history HOSTNAME. A phrase match on words means the
        value's words must start with the query's words: ``NAME=web`` matches ``web`` and ``web-3`` but not
        ``myweb``. Dotted paths (``VM.NAME=x``, ``VM.USER_TEMPLATE.KEY=x``, ``VM.TEMPLATE.NIC.IP=x``) are an
        onesim extension (``search_dotted_paths``) matching that exact attribute's whole value.
        """
        key, sep, value = query.partition("=")
        key = key.strip().upper()
        value = value.strip()
        if key.startswith("VM.") and self.cfg.search_dotted_paths:
            return any(v == value for v in self._path_values(vm, key[3:].split(".")))
        want = [w.lower() for w in _WORD.findall(value)]
        for k, v in self._token_pairs(vm):
            if k != key:
                continue
            words = [w.lower() for w in _WORD.findall(v)]
            if words[: len(want)] == want and (want or not sep or not value):
                return True
        return False

    def _token_pairs(self, vm: VM) -> Iterable[tuple[str, str]]:
        yield "UNAME", vm.uname
        yield "GNAME", vm.gname
        yield "NAME", vm.name
        for tmpl in (vm.template, vm.user_template):
            for k, v in tmpl.items:
                if isinstance(v, str):
                    yield k, v
                else:
                    yield from v.items()
        if vm.history:
            yield "HOSTNAME", vm.history[-1].hostname

    def _path_values(self, vm: VM, path: list[str]) -> list[str]:
        scalars = {
            "ID": str(vm.vid), "NAME": vm.name, "UNAME": vm.uname, "GNAME": vm.gname, "UID": str(vm.uid),
            "GID": str(vm.gid), "STATE": str(vm.state), "LCM_STATE": str(vm.lcm), "DEPLOY_ID": vm.deploy_id,
        }
        if len(path) == 1:
            return [scalars[path[0]]] if path[0] in scalars else []
        section = {"TEMPLATE": vm.template, "USER_TEMPLATE": vm.user_template}.get(path[0])
        if section is None:
            return []
        if len(path) == 2:
            return [v for k, v in section.items if k == path[1] and isinstance(v, str)]
        if len(path) == 3:
            return [v[path[2]] for v in section.vectors(path[1]) if path[2] in v]
        return []

    def vmpool_info(self, user: User, filter_flag: Any = -2, start: Any = -1, end: Any = -1, state: Any = -1,
                    query: Any = "") -> str:
        vms = self._select_vms("one.vmpool.info", user, filter_flag, start, end, state, query)
        return "<VM_POOL>" + "".join(self._vm_short_xml(v) for v in vms) + "</VM_POOL>"

    def vmpool_infoextended(self, user: User, filter_flag: Any = -2, start: Any = -1, end: Any = -1,
                            state: Any = -1, query: Any = "") -> str:
        vms = self._select_vms("one.vmpool.infoextended", user, filter_flag, start, end, state, query)
        return "<VM_POOL>" + "".join(self._vm_full_xml(v) for v in vms) + "</VM_POOL>"

    def vmpool_monitoring(self, user: User, filter_flag: Any = -2, seconds: Any = 0) -> str:
        if not isinstance(seconds, int):
            raise OneError(S.XML_RPC_API, "[one.vmpool.monitoring] Expected an integer number of seconds.")
        now = int(time.time())
        parts = ["<MONITORING_DATA>"]
        for vid in sorted(self.vms):
            vm = self.vms[vid]
            if filter_flag >= 0 and vm.uid != filter_flag or filter_flag == -3 and vm.uid != user.uid:
                continue
            if not vm.monitoring:
                continue
            if seconds == 0:
                records = vm.monitoring[-1:]
            elif seconds < 0:
                records = vm.monitoring
            else:
                records = [r for r in vm.monitoring if r["TIMESTAMP"] >= now - seconds]
            parts.extend(self._monitoring_xml(r) for r in records)
        parts.append("</MONITORING_DATA>")
        return "".join(parts)

    # -------------------------------------------------------------------------------------- rendering
    @staticmethod
    def _monitoring_xml(rec: dict[str, Any]) -> str:
        return "<MONITORING>" + "".join(f"<{k}>{cdata(str(rec[k]))}</{k}>" for k in sorted(rec)) + "</MONITORING>"

    @staticmethod
    def _history_xml(vm: VM, h: History) -> str:
        return (
            f"<HISTORY><OID>{vm.vid}</OID><SEQ>{h.seq}</SEQ><HOSTNAME>{_x(h.hostname)}</HOSTNAME>"
            f"<HID>{h.hid}</HID><CID>0</CID><STIME>{h.stime}</STIME><ETIME>{h.etime}</ETIME>"
            f"<VM_MAD>{cdata(h.vm_mad)}</VM_MAD><TM_MAD>{cdata('ssh')}</TM_MAD><DS_ID>0</DS_ID>"
            f"<PSTIME>{h.pstime}</PSTIME><PETIME>{h.petime}</PETIME><RSTIME>{h.rstime}</RSTIME>"
            f"<RETIME>{h.retime}</RETIME><ESTIME>{h.estime}</ESTIME><EETIME>{h.eetime}</EETIME>"
            f"<ACTION>{h.action}</ACTION><UID>-1</UID><GID>-1</GID><REQUEST_ID>-1</REQUEST_ID></HISTORY>"
        )

    def _vm_head(self, vm: VM) -> tuple[str, str]:
        last_poll = vm.monitoring[-1]["TIMESTAMP"] if vm.monitoring else 0
        return (
            f"<VM><ID>{vm.vid}</ID><UID>{vm.uid}</UID><GID>{vm.gid}</GID><UNAME>{_x(vm.uname)}</UNAME>"
            f"<GNAME>{_x(vm.gname)}</GNAME><NAME>{_x(vm.name)}</NAME>"
        ), str(last_poll)

    def _vm_full_xml(self, vm: VM) -> str:
        if vm.cache_full is not None and vm.cache_full[0] == vm.version:
            return vm.cache_full[1]
        head, last_poll = self._vm_head(vm)
        mon = self._monitoring_xml(vm.monitoring[-1]) if vm.monitoring else "<MONITORING/>"
        hist = "".join(self._history_xml(vm, h) for h in vm.history)
        xml = (
            f"{head}{_PERMS_XML}<LAST_POLL>{last_poll}</LAST_POLL><STATE>{vm.state}</STATE>"
            f"<LCM_STATE>{vm.lcm}</LCM_STATE><PREV_STATE>{vm.prev_state}</PREV_STATE>"
            f"<PREV_LCM_STATE>{vm.prev_lcm}</PREV_LCM_STATE><RESCHED>0</RESCHED><STIME>{vm.stime}</STIME>"
            f"<ETIME>{vm.etime}</ETIME><DEPLOY_ID>{_x(vm.deploy_id)}</DEPLOY_ID>{mon}"
            f"{vm.template.to_xml()}{vm.user_template.to_xml('USER_TEMPLATE')}"
            f"<HISTORY_RECORDS>{hist}</HISTORY_RECORDS>"
            "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS></VM>"
        )
        vm.cache_full = (vm.version, xml)
        return xml

    def _vm_short_xml(self, vm: VM) -> str:
        if vm.cache_short is not None and vm.cache_short[0] == vm.version:
            return vm.cache_short[1]
        head, last_poll = self._vm_head(vm)
        short = Template([(k, v) for k, v in vm.template.items if k in ("CPU", "MEMORY", "GRAPHICS")])
        for nic in vm.template.vectors("NIC"):
            short.items.append(("NIC", {k: nic[k] for k in ("IP", "MAC", "NETWORK", "NETWORK_ID", "NIC_ID",
                                                            "SECURITY_GROUPS") if k in nic}))
        for disk in vm.template.vectors("DISK"):
            short.items.append(("DISK", {k: disk[k] for k in ("DISK_ID", "IMAGE", "IMAGE_ID", "SIZE",
                                                              "TARGET", "TYPE") if k in disk}))
        user_short = Template([(k, v) for k, v in vm.user_template.items if k in _SHORT_USER_ATTRS])
        mon = "<MONITORING/>"
        if vm.monitoring:
            r = vm.monitoring[-1]
            mon = (f"<MONITORING><CPU>{cdata(str(r['CPU']))}</CPU>"
                   f"<MEMORY>{cdata(str(r['MEMORY']))}</MEMORY></MONITORING>")
        hist = ""
        if vm.history:
            h = vm.history[-1]
            hist = (
                f"<HISTORY><OID>{vm.vid}</OID><SEQ>{h.seq}</SEQ><HOSTNAME>{_x(h.hostname)}</HOSTNAME>"
                f"<HID>{h.hid}</HID><CID>0</CID><DS_ID>0</DS_ID><VM_MAD>{cdata(h.vm_mad)}</VM_MAD>"
                f"<TM_MAD>{cdata('ssh')}</TM_MAD><ACTION>{h.action}</ACTION></HISTORY>"
            )
        xml = (
            f"{head}<LAST_POLL>{last_poll}</LAST_POLL><STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm}</LCM_STATE>"
            f"<RESCHED>0</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{_x(vm.deploy_id)}</DEPLOY_ID>{short.to_xml()}{mon}"
            f"{user_short.to_xml('USER_TEMPLATE')}<HISTORY_RECORDS>{hist}</HISTORY_RECORDS></VM>"
        )
        vm.cache_short = (vm.version, xml)
        return xml

    # ============================================================================================ monitoring
    def _monitor_round(self) -> None:
        now_f = time.time()
        now = int(now_f)
        per_host: dict[int, tuple[int, int]] = {}
        for vid in self.live:
            vm = self.vms[vid]
            if vm.state != S.ACTIVE or vm.lcm != S.RUNNING:
                continue
            prof = self.load_for(vm)
            cpu = round(prof.cpu_at(now_f), 2)
            mem_kb = int(vm.memory_mb * 1024 * prof.memory)
            vm.netrx += int(1000 + cpu * 150)
            vm.nettx += int(800 + cpu * 120)
            vm.monitoring.append({
                "CPU": cpu, "DISKRDBYTES": 0, "DISKRDIOPS": 0, "DISKWRBYTES": 0, "DISKWRIOPS": 0, "ID": vm.vid,
                "MEMORY": mem_kb, "NETRX": vm.netrx, "NETTX": vm.nettx, "TIMESTAMP": now,
            })
            if len(vm.monitoring) > self.cfg.monitor_keep:
                del vm.monitoring[0]
            self._touch(vm)
            if vm.host is not None:
                c, mm = per_host.get(vm.host, (0, 0))
                per_host[vm.host] = (c + int(cpu), mm + mem_kb)
        for h in self.hosts.values():
            if h.state in (S.HOST_ERROR, S.HOST_OFFLINE):
                continue
            h.used_cpu_mon, h.used_mem_mon = per_host.get(h.hid, (0, 0))
            h.last_mon = now
        self.monitor_rounds += 1

    def load_for(self, vm: VM) -> LoadProfile:
        """The load profile in force for ``vm`` (latest matching rule wins)."""
        matched = [prof for sel, prof in self.load_rules if selector_matches(sel, vm)]
        return matched[-1] if matched else LoadProfile(cpu=10.0, memory=0.5)

    def outcome_for(self, vm_id: int) -> dict[str, Any]:
        """The guest outcome in force for ``vm_id``: ``{"outcome": "done"|"fail"|"silent"|"no_app", ...}``."""
        with self.lock:
            vm = self.vms.get(vm_id)
            found = [o for sel, o in self.outcome_rules if vm is not None and selector_matches(sel, vm)]
        return found[-1] if found else {"outcome": "done"}

    def metrics_enabled(self, vm_id: int) -> bool:
        """Whether the guest of ``vm_id`` pushes OneGate metrics."""
        with self.lock:
            vm = self.vms.get(vm_id)
            found = [e for sel, e in self.metrics_rules if vm is not None and selector_matches(sel, vm)]
        return found[-1] if found else self.cfg.guest_metrics

    def guest_load(self, vm_id: int) -> tuple[float, float]:
        """Current (CPU percent, memory fraction) of a VM's load profile, for metrics pushes."""
        with self.lock:
            vm = self.vms.get(vm_id)
            if vm is None:
                return 0.0, 0.0
            prof = self.load_for(vm)
            return round(prof.cpu_at(time.time()), 2), prof.memory

    def guest_alive(self, vm_id: int, boot_seq: int) -> str:
        """``running``, ``paused`` (host unreachable) or ``gone`` for a guest incarnation."""
        with self.lock:
            vm = self.vms.get(vm_id)
            if vm is None or vm.boot_seq != boot_seq or vm.state != S.ACTIVE:
                return "gone"
            if vm.lcm == S.RUNNING:
                return "running"
            return "paused" if vm.lcm == S.UNKNOWN else "gone"

    # ============================================================================================== control
    def _selected(self, sel: dict[str, Any]) -> list[VM]:
        return [self.vms[v] for v in sorted(self.vms) if selector_matches(sel, self.vms[v])]

    def ctl_fail_vm(self, vid: int, kind: str = "failure", lcm_state: int = S.BOOT_FAILURE) -> dict[str, Any]:
        """Turn a VM into an LCM failure state (default BOOT_FAILURE 36) or UNKNOWN (16)."""
        vm = self.vms.get(vid)
        if vm is None or vm.state == S.DONE:
            raise KeyError(f"VM {vid} does not exist or is DONE")
        if kind == "unknown":
            lcm_state = S.UNKNOWN
        elif lcm_state not in S.FAILURE_LCM_STATES:
            raise ValueError(f"lcm_state {lcm_state} is not an LCM failure state")
        self._stop_guest(vm)
        vm.gen += 1
        self.pending.pop(vm.vid, None)
        self._set_state(vm, S.ACTIVE, lcm_state)
        return {"id": vm.vid, "state": vm.state, "lcm_state": vm.lcm}

    def ctl_delete_vm(self, vid: int) -> dict[str, Any]:
        """Delete a VM behind the client's back: it shows as DONE at once."""
        vm = self.vms.get(vid)
        if vm is None:
            raise KeyError(f"VM {vid} does not exist")
        if vm.state != S.DONE:
            self._close_history(vm, "terminate-hard")
            self._finish(vm)
        return {"id": vm.vid, "state": vm.state}

    def ctl_host(self, hid: int, up: bool) -> dict[str, Any]:
        """Take a host down (ERROR: its active VMs turn UNKNOWN) or bring it back (UNKNOWN VMs run again)."""
        host = self.hosts.get(hid)
        if host is None:
            raise KeyError(f"host {hid} does not exist")
        host.prev_state = host.state
        host.state = S.HOST_MONITORED if up else S.HOST_ERROR
        self._dirty = True
        for vid in sorted(host.vms):
            vm = self.vms[vid]
            if not up and vm.state == S.ACTIVE and vm.lcm not in S.FAILURE_LCM_STATES:
                vm.gen += 1
                self._set_state(vm, S.ACTIVE, S.UNKNOWN)
            elif up and vm.state == S.ACTIVE and vm.lcm == S.UNKNOWN:
                self._set_state(vm, S.ACTIVE, S.RUNNING)
        if up:
            self._reschedule()
        return {"id": host.hid, "state": host.state, "vms": sorted(host.vms)}

    def ctl_set_load(self, sel: dict[str, Any], profile: LoadProfile) -> int:
        self.load_rules.append((sel, profile))
        return len(self._selected(sel))

    def ctl_set_outcome(self, sel: dict[str, Any], outcome: dict[str, Any]) -> int:
        self.outcome_rules.append((sel, outcome))
        return len(self._selected(sel))

    def ctl_set_metrics(self, sel: dict[str, Any], enabled: bool) -> int:
        self.metrics_rules.append((sel, enabled))
        return len(self._selected(sel))

    def ctl_monitor_now(self) -> int:
        self._monitor_round()
        return self.monitor_rounds

    def ctl_summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for vm in self.vms.values():
            key = S.state_name(vm.state, vm.lcm)
            counts[key] = counts.get(key, 0) + 1
        return {
            "name": self.cfg.name, "vms": len(self.vms), "states": counts, "pending": list(self.pending),
            "hosts": [{"id": h.hid, "name": h.name, "state": h.state, "cpu_usage": h.cpu_usage,
                       "mem_usage_kb": h.mem_usage_kb, "vms": sorted(h.vms)} for h in self.hosts.values()],
            "monitor_rounds": self.monitor_rounds,
        }

    # ============================================================================================ persistence
    def _save_if_dirty(self) -> None:
        if self._dirty and self.cfg.state_file:
            self._save_state(self.cfg.state_file)

    def _save_state(self, path: str) -> None:
        data = {
            "version": 1, "next_vm": self.next_vm, "next_tmpl": self.next_tmpl, "next_host": self.next_host,
            "hosts": [{"hid": h.hid, "name": h.name, "max_cpu": h.max_cpu, "max_mem_kb": h.max_mem_kb,
                       "hypervisor": h.hypervisor, "im_mad": h.im_mad, "vm_mad": h.vm_mad, "state": h.state}
                      for h in self.hosts.values()],
            "templates": [{"tid": t.tid, "name": t.name, "uid": t.uid, "gid": t.gid, "regtime": t.regtime,
                           "template": t.template.to_json()} for t in self.templates.values()],
            "vms": [self._vm_json(vm) for vm in self.vms.values()],
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._dirty = False

    @staticmethod
    def _vm_json(vm: VM) -> dict[str, Any]:
        return {
            "vid": vm.vid, "uid": vm.uid, "gid": vm.gid, "uname": vm.uname, "gname": vm.gname, "name": vm.name,
            "template": vm.template.to_json(), "user_template": vm.user_template.to_json(), "stime": vm.stime,
            "state": vm.state, "lcm": vm.lcm, "prev_state": vm.prev_state, "prev_lcm": vm.prev_lcm,
            "etime": vm.etime, "deploy_id": vm.deploy_id, "host": vm.host, "cpu": vm.cpu,
            "memory_mb": vm.memory_mb, "resume_from": vm.resume_from,
            "history": [h.__dict__ for h in vm.history],
        }

    def _load_state(self, path: str) -> None:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        self.hosts.clear()
        for h in data["hosts"]:
            host = Host(h["hid"], h["name"], h["max_cpu"], h["max_mem_kb"], h["hypervisor"], h["im_mad"],
                        h["vm_mad"], state=h["state"])
            host.template.items = [("HOSTNAME", host.name), ("HYPERVISOR", host.hypervisor),
                                   ("IM_MAD", host.im_mad), ("VM_MAD", host.vm_mad)]
            self.hosts[host.hid] = host
        for t in data["templates"]:
            self.templates[t["tid"]] = VMTemplate(t["tid"], t["name"], t["uid"], t["gid"], t["regtime"],
                                                  Template.from_json(t["template"]))
        self.next_vm, self.next_tmpl, self.next_host = data["next_vm"], data["next_tmpl"], data["next_host"]
        for d in data["vms"]:
            vm = VM(d["vid"], d["uid"], d["gid"], d["uname"], d["gname"], d["name"],
                    Template.from_json(d["template"]), Template.from_json(d["user_template"]), d["stime"],
                    state=d["state"], lcm=d["lcm"], prev_state=d["prev_state"], prev_lcm=d["prev_lcm"],
                    etime=d["etime"], deploy_id=d["deploy_id"], host=d["host"], cpu=d["cpu"],
                    memory_mb=d["memory_mb"], resume_from=d["resume_from"],
                    history=[History(**h) for h in d["history"]])
            self.vms[vm.vid] = vm
            if vm.state != S.DONE:
                self.live.add(vm.vid)
                for nic in vm.template.vectors("NIC"):
                    net = self._find_vnet(nic)
                    if net is not None and nic.get("IP"):
                        net.leases[int(ipaddress.IPv4Address(nic["IP"])) - net.first_ip] = vm.vid
            if vm.host is not None and vm.host in self.hosts:
                host = self.hosts[vm.host]
                host.cpu_usage += int(round(vm.cpu * 100))
                host.mem_usage_kb += vm.memory_mb * 1024
                host.vms.add(vm.vid)
        # transitions in flight when the previous process stopped complete now
        for vm in list(self.vms.values()):
            if vm.state == S.PENDING:
                self.pending[vm.vid] = None
            elif vm.state == S.ACTIVE and vm.lcm in (S.PROLOG, S.BOOT, S.PROLOG_UNDEPLOY, S.BOOT_UNDEPLOY,
                                                      S.PROLOG_RESUME, S.BOOT_STOPPED, S.BOOT_POWEROFF,
                                                      S.BOOT_SUSPENDED, S.BOOT_UNKNOWN):
                self._set_state(vm, S.ACTIVE, S.RUNNING)
            elif vm.state == S.ACTIVE and vm.lcm in (S.SHUTDOWN, S.EPILOG):
                self._finish(vm)
            elif vm.state == S.ACTIVE and vm.lcm == S.SHUTDOWN_POWEROFF:
                self._set_state(vm, S.POWEROFF, S.LCM_INIT)
            elif vm.state == S.ACTIVE and vm.lcm in (S.SHUTDOWN_UNDEPLOY, S.EPILOG_UNDEPLOY):
                self._release_host(vm)
                self._set_state(vm, S.UNDEPLOYED, S.LCM_INIT)
            elif vm.state == S.ACTIVE and vm.lcm in (S.SAVE_STOP, S.EPILOG_STOP):
                self._release_host(vm)
                self._set_state(vm, S.STOPPED, S.LCM_INIT)
            elif vm.state == S.ACTIVE and vm.lcm == S.SAVE_SUSPEND:
                self._set_state(vm, S.SUSPENDED, S.LCM_INIT)
        self._dirty = False
