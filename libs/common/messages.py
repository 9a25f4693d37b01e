"""One strict pydantic model per subject: the payloads services trade over NATS.

Every model is frozen and forbids unknown keys, so a typo in a hand-typed `nats pub` is refused with a clear
reason instead of being half-understood. Each carries `schema_version` and the ids that identify what it is about,
and knows its deterministic message id (`msg_id()`): publishing the same command twice — after a crash or a lost
acknowledgement — yields the same `Nats-Msg-Id`, which JetStream stores once. Messages are nudges; MongoDB holds
the truth, so consumers reload documents rather than trusting a payload's copy of state.

The subject catalogue `docs/subjects.md` is generated from `CATALOGUE` below (`python -m libs.common.catalogue`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common import subjects as s

Name = str  # service, configuration and zone names (validated where they are defined)
MAX_USAGE_SAMPLES = 100  # per `vm.usage` message: about 10 KB of JSON, one bulk write short enough not to stall


def utcnow() -> datetime:
    """The current time, timezone-aware (all stored times are UTC)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    SUBJECT: ClassVar[str]
    schema_version: Literal[1] = 1

    def subject(self) -> str:
        """The subject this message is published on."""
        return self.SUBJECT

    def msg_id(self) -> str:
        """A deterministic id: the same command always maps onto the same `Nats-Msg-Id`."""
        digest = hashlib.sha256(self.model_dump_json(exclude={"at"}).encode()).hexdigest()[:20]
        return f"{self.SUBJECT}:{digest}"

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# --- ENV ------------------------------------------------------------------------------------------------------------


class EnvCreate(Message):
    """Create an environment (or a group) from a service's configuration.

    The gateway records the environment first and sends its `envid`; a message typed by an operator with only
    `service` and `config` makes envmgr allocate the ids itself.
    """

    SUBJECT: ClassVar[str] = s.ENV_CREATE
    service: Name
    config: Name = Field(description="name of an environment (or group) in the service's configuration")
    envid: int | None = Field(None, ge=1, description="set when the gateway already recorded the environment")
    request_id: str | None = Field(None, max_length=128, description="idempotency key chosen by the client")

    def msg_id(self) -> str:
        key = self.envid if self.envid is not None else f"{self.service}:{self.request_id or self.config}"
        return f"env.create:{key}"


class EnvScale(Message):
    """Add or remove slaves (one job, one slave at a time, as Carina did)."""

    SUBJECT: ClassVar[str] = s.ENV_SCALE
    envid: int = Field(ge=1)
    direction: Literal["up", "down"]
    requested_by: Literal["api", "policy", "scheduler", "operator"] = "operator"
    reason: str | None = Field(None, max_length=500)
    reqid: int | None = Field(None, description="the scheduler request this scale-down releases (reclaim)")
    request_id: str | None = Field(None, max_length=128, description="distinguishes repeated requests")

    def msg_id(self) -> str:
        return f"env.scale:{self.envid}:{self.direction}:{self.request_id or self.reqid or ''}"


class EnvRemove(Message):
    """Terminate every VM of an environment and keep its record (status DONE)."""

    SUBJECT: ClassVar[str] = s.ENV_REMOVE
    envid: int = Field(ge=1)
    requested_by: Literal["api", "policy", "scheduler", "operator"] = "operator"

    def msg_id(self) -> str:
        return f"env.remove:{self.envid}"


class EnvRecreate(Message):
    """Replace one VM (by OpenNebula id or slot) — the master first, then its slaves are re-added."""

    SUBJECT: ClassVar[str] = s.ENV_RECREATE
    envid: int = Field(ge=1)
    vmid: int | None = Field(None, ge=0, description="OpenNebula VM id to replace")
    slot: str | None = Field(None, description="slot id to replace (alternative to vmid)")
    requested_by: Literal["api", "policy", "scheduler", "operator"] = "operator"
    request_id: str | None = Field(None, max_length=128)

    def msg_id(self) -> str:
        return f"env.recreate:{self.envid}:{self.vmid if self.vmid is not None else self.slot}:{self.request_id or ''}"


class EnvRecover(Message):
    """Retry an environment's failed operation from where it stopped."""

    SUBJECT: ClassVar[str] = s.ENV_RECOVER
    envid: int = Field(ge=1)
    requested_by: Literal["api", "policy", "scheduler", "operator"] = "operator"
    request_id: str | None = Field(None, max_length=128)

    def msg_id(self) -> str:
        return f"env.recover:{self.envid}:{self.request_id or ''}"


class EnvFailover(Message):
    """Mark an active environment FAILED and make the passive twin of its failover group ACTIVE."""

    SUBJECT: ClassVar[str] = s.ENV_FAILOVER
    envid: int = Field(ge=1)
    group: str
    reason: str | None = None
    request_id: str | None = None

    def msg_id(self) -> str:
        return f"env.failover:{self.envid}:{self.request_id or ''}"


class EnvFailback(Message):
    """Make a FAILED environment ACTIVE again and its passive twin PASSIVE."""

    SUBJECT: ClassVar[str] = s.ENV_FAILBACK
    envid: int = Field(ge=1)
    group: str
    reason: str | None = None
    request_id: str | None = None

    def msg_id(self) -> str:
        return f"env.failback:{self.envid}:{self.request_id or ''}"


class EnvReconcile(Message):
    """Look at an environment again (sent after anything it depends on changed)."""

    SUBJECT: ClassVar[str] = s.ENV_RECONCILE
    envid: int = Field(ge=1)
    reason: str = ""


# --- POOL -----------------------------------------------------------------------------------------------------------


class PoolRequest(Message):
    """Ask the global scheduler for capacity for one VM of an environment."""

    SUBJECT: ClassVar[str] = s.POOL_REQUEST
    reqid: int = Field(ge=1)
    service: Name
    envid: int = Field(ge=1)
    pool: Name = Field(description="the environment's endpoint (Carina names pools after endpoints)")
    zone: Name
    vcpus: float = Field(gt=0)
    memory: int = Field(gt=0, description="MiB")
    kind: Literal["create", "scaleup"] = "scaleup"

    def msg_id(self) -> str:
        return f"pool.request:{self.reqid}"


class PoolRelease(Message):
    """Give capacity back (scale-down, reclaim honoured, VM gone)."""

    SUBJECT: ClassVar[str] = s.POOL_RELEASE
    reqid: int = Field(ge=1)
    service: Name
    envid: int = Field(ge=1)

    def msg_id(self) -> str:
        return f"pool.release:{self.reqid}"


class PoolCancel(Message):
    """An environment was removed: cancel its pending requests and free its grants."""

    SUBJECT: ClassVar[str] = s.POOL_CANCEL
    service: Name
    envid: int = Field(ge=1)

    def msg_id(self) -> str:
        return f"pool.cancel:{self.service}:{self.envid}"


class PoolGrant(Message):
    """Capacity granted (published on `pool.grant.<service>`)."""

    SUBJECT: ClassVar[str] = s.POOL_GRANT
    reqid: int = Field(ge=1)
    service: Name
    envid: int = Field(ge=1)
    pool: Name
    vcpus: float
    memory: int

    def subject(self) -> str:
        return f"{self.SUBJECT}.{self.service}"

    def msg_id(self) -> str:
        return f"pool.grant:{self.reqid}"


class PoolReclaim(Message):
    """A higher class needs borrowed capacity back: scale down one slave and release (`pool.reclaim.<service>`)."""

    SUBJECT: ClassVar[str] = s.POOL_RECLAIM
    reqid: int = Field(ge=1)
    service: Name
    envid: int = Field(ge=1)
    for_reqid: int | None = Field(None, description="the pending request that needs the capacity")

    def subject(self) -> str:
        return f"{self.SUBJECT}.{self.service}"

    def msg_id(self) -> str:
        return f"pool.reclaim:{self.reqid}"


# --- VM -------------------------------------------------------------------------------------------------------------


class VmProvision(Message):
    """Make sure the VM of a slot exists in its zone (create it, or adopt the one a crash left behind)."""

    SUBJECT: ClassVar[str] = s.VM_PROVISION
    envid: int = Field(ge=1)
    slot: str
    incarnation: int = Field(ge=1)
    attempt: int = Field(1, ge=1, description="bumped when envmgr asks again after a timeout")

    def msg_id(self) -> str:
        return f"vm.provision:{self.slot}:{self.incarnation}:{self.attempt}"


class VmTerminate(Message):
    """Terminate the VM of a slot incarnation (idempotent: a VM already gone is success)."""

    SUBJECT: ClassVar[str] = s.VM_TERMINATE
    envid: int = Field(ge=1)
    slot: str
    incarnation: int = Field(ge=1)
    attempt: int = Field(1, ge=1)

    def msg_id(self) -> str:
        return f"vm.terminate:{self.slot}:{self.incarnation}:{self.attempt}"


VmLifecycle = Literal[
    "PENDING", "HOLD", "PROLOG", "BOOT", "RUNNING", "SHUTDOWN", "EPILOG", "POWEROFF", "SUSPENDED", "STOPPED",
    "UNDEPLOYED", "UNKNOWN", "FAILED", "DONE", "MISSING", "OTHER",
]


class VmStatus(Message):
    """What the provisioner observed of a VM in its zone: a change of state, IP or load, or a provisioning result."""

    SUBJECT: ClassVar[str] = s.VM_STATUS
    envid: int = Field(ge=1)
    slot: str
    incarnation: int = Field(ge=1)
    zone: Name
    one_id: int | None = Field(None, ge=0)
    lifecycle: VmLifecycle
    state: int | None = Field(None, description="OpenNebula STATE number")
    lcm_state: int | None = Field(None, description="OpenNebula LCM_STATE number")
    ip: str | None = None
    host: str | None = None
    cpu: float | None = Field(None, description="percent of one CPU, as OpenNebula monitors it")
    memory: int | None = Field(None, description="KiB, as OpenNebula monitors it")
    error: str | None = Field(None, max_length=2000, description="why provisioning failed, when it did")
    at: datetime = Field(default_factory=utcnow)

    def msg_id(self) -> str:
        observed = f"{self.one_id}:{self.lifecycle}:{self.ip}:{self.at.timestamp()}"
        return f"vm.status:{self.slot}:{self.incarnation}:{observed}"


class UsageSample(BaseModel):
    """One VM's load in a `vm.usage` batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    slot: str
    incarnation: int = Field(ge=1)
    cpu: float | None = Field(None, description="percent of one CPU, as OpenNebula monitors it")
    memory: int | None = Field(None, description="KiB, as OpenNebula monitors it")


class VmUsage(Message):
    """The load of many VMs of one zone, from one monitoring poll. Load alone never changes an environment's plan,
    so it is not sent as one `vm.status` per VM but in batches that envmgr records in one database round trip."""

    SUBJECT: ClassVar[str] = s.VM_USAGE
    zone: Name
    samples: list[UsageSample] = Field(min_length=1, max_length=MAX_USAGE_SAMPLES)
    at: datetime = Field(default_factory=utcnow)

    def msg_id(self) -> str:
        return f"vm.usage:{self.zone}:{self.at.timestamp()}:{self.samples[0].slot}"


class VmGuest(Message):
    """A verified report from a guest: network configured, an application status, or notifications applied."""

    SUBJECT: ClassVar[str] = s.VM_GUEST
    envid: int = Field(ge=1)
    slot: str
    incarnation: int = Field(ge=1)
    kind: Literal["vmstatus", "appstatus", "notify_ack"]
    ip: str | None = None
    hostname: str | None = None
    status: str | None = Field(None, max_length=256)
    seq: int | None = None
    at: datetime = Field(default_factory=utcnow)


class VmMetrics(Message):
    """Metrics a guest pushed (OneGate `PUT /vm`): numeric `KEY = VALUE` pairs."""

    SUBJECT: ClassVar[str] = s.VM_METRICS
    envid: int = Field(ge=1)
    slot: str
    one_id: int | None = None
    values: dict[str, float]
    at: datetime = Field(default_factory=utcnow)

    def msg_id(self) -> str:
        # Every push is a sample, even with the same values as the last one.
        return f"vm.metrics:{self.slot}:{self.at.timestamp()}"


# --- GUEST ----------------------------------------------------------------------------------------------------------


class GuestReport(Message):
    """A guest callback the gateway has authenticated, on its way to the callback service."""

    SUBJECT: ClassVar[str] = s.GUEST_REPORT
    envid: int = Field(ge=1)
    slot: str
    incarnation: int = Field(ge=1)
    one_id: int | None = None
    kind: Literal["vmstatus", "appstatus", "metrics", "notify_ack"]
    params: dict[str, str] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)


# --- POLICY ---------------------------------------------------------------------------------------------------------


class PolicyTick(Message):
    """The policy ticker's beat: evaluate the policies of one shard of the environments now.

    Each beat is split into `shards` messages (environments whose id modulo `shards` is `shard`), so that the
    replicas sharing the durable consumer share a tick's work.
    """

    SUBJECT: ClassVar[str] = s.POLICY_TICK
    seq: int = Field(ge=0, description="the tick period's number (wall-clock seconds // tick interval)")
    shard: int = Field(0, ge=0, description="which environments: those whose envid % shards == shard")
    shards: int = Field(1, ge=1, le=1024, description="how many messages this beat is split into")
    at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _shard_in_range(self) -> PolicyTick:
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} is not below shards {self.shards}")
        return self

    def msg_id(self) -> str:
        return f"policy.tick:{self.seq}:{self.shard}/{self.shards}"


class PolicyDecision(Message):
    """The audit record of one policy evaluation: inputs, expression values, and the action or why none."""

    SUBJECT: ClassVar[str] = s.POLICY_DECISION
    envid: int = Field(ge=1)
    policy: Literal["elasticity", "availability"]
    action: str
    reason: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    expressions: dict[str, str] = Field(default_factory=dict)
    recommend_only: bool = False
    at: datetime = Field(default_factory=utcnow)

    def msg_id(self) -> str:
        return f"policy.decision:{self.envid}:{self.policy}:{self.at.timestamp()}"


# --- EVENTS ---------------------------------------------------------------------------------------------------------


class EnvEvent(Message):
    """Progress of an environment, for watchers (`events.env.<envid>`)."""

    SUBJECT: ClassVar[str] = s.EVENTS_ENV
    envid: int = Field(ge=1)
    seq: int = Field(ge=0, description="the environment document's version when this happened")
    status: str
    policy_status: str
    message: str
    jobid: int | None = None
    job_status: str | None = None
    app_url: str | None = None
    notify_seq: int | None = Field(None, ge=0, description="number of the master's latest add/delete notification "
                                                           "(lets a waiting master's long poll skip other events)")
    at: datetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return f"{self.SUBJECT}.{self.envid}"

    def msg_id(self) -> str:
        return f"events.env:{self.envid}:{self.seq}:{hashlib.sha1(self.message.encode()).hexdigest()[:8]}"


# Producer and consumer of each subject, for the generated catalogue and the NATS permission table.
CATALOGUE: tuple[tuple[type[Message], str, str, str], ...] = (
    (EnvCreate, s.ENV_CREATE, "gateway, operator", "envmgr"),
    (EnvScale, s.ENV_SCALE, "gateway, policy, scheduler", "envmgr"),
    (EnvRemove, s.ENV_REMOVE, "gateway", "envmgr"),
    (EnvRecreate, s.ENV_RECREATE, "gateway, policy", "envmgr"),
    (EnvRecover, s.ENV_RECOVER, "gateway, policy", "envmgr"),
    (EnvFailover, s.ENV_FAILOVER, "policy", "envmgr"),
    (EnvFailback, s.ENV_FAILBACK, "policy", "envmgr"),
    (EnvReconcile, s.ENV_RECONCILE, "any service", "envmgr"),
    (PoolRequest, s.POOL_REQUEST, "envmgr", "scheduler"),
    (PoolRelease, s.POOL_RELEASE, "envmgr", "scheduler"),
    (PoolCancel, s.POOL_CANCEL, "envmgr", "scheduler"),
    (PoolGrant, s.POOL_GRANT + ".<service>", "scheduler", "envmgr"),
    (PoolReclaim, s.POOL_RECLAIM + ".<service>", "scheduler", "envmgr"),
    (VmProvision, s.VM_PROVISION, "envmgr", "provisioner"),
    (VmTerminate, s.VM_TERMINATE, "envmgr", "provisioner"),
    (VmStatus, s.VM_STATUS, "provisioner", "envmgr, policy"),
    (VmUsage, s.VM_USAGE, "provisioner", "envmgr"),
    (VmGuest, s.VM_GUEST, "callback", "envmgr"),
    (VmMetrics, s.VM_METRICS, "callback", "policy"),
    (GuestReport, s.GUEST_REPORT, "gateway", "callback"),
    (PolicyTick, s.POLICY_TICK, "policy (ticker)", "policy"),
    (PolicyDecision, s.POLICY_DECISION, "policy", "gateway (audit)"),
    (EnvEvent, s.EVENTS_ENV + ".<envid>", "envmgr", "gateway (SSE), CLI --watch"),
)


def example_payloads() -> dict[str, dict[str, Any]]:
    """One realistic example per subject, used by the catalogue and its test."""
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    examples: list[Message] = [
        EnvCreate(service="svc1", config="tomcat"),
        EnvScale(envid=18, direction="up", requested_by="api", request_id="job-52"),
        EnvRemove(envid=18, requested_by="api"),
        EnvRecreate(envid=18, vmid=1605, requested_by="policy"),
        EnvRecover(envid=18),
        EnvFailover(envid=20, group="tomcat-ha", reason="failover_expr true for 4 evaluations"),
        EnvFailback(envid=20, group="tomcat-ha"),
        EnvReconcile(envid=18, reason="grant received"),
        PoolRequest(reqid=7, service="svc1", envid=19, pool="zone1", zone="zone1", vcpus=1, memory=512),
        PoolRelease(reqid=7, service="svc1", envid=19),
        PoolCancel(service="svc1", envid=19),
        PoolGrant(reqid=7, service="svc1", envid=19, pool="zone1", vcpus=1, memory=512),
        PoolReclaim(reqid=4, service="batch", envid=14, for_reqid=7),
        VmProvision(envid=18, slot="18:slave:0", incarnation=1),
        VmTerminate(envid=18, slot="18:slave:1", incarnation=1),
        VmStatus(envid=18, slot="18:master", incarnation=1, zone="zone1", one_id=1604, lifecycle="RUNNING",
                 state=3, lcm_state=3, ip="10.1.0.5", host="host01", cpu=12.5, memory=524288, at=at),
        VmUsage(zone="zone1", samples=[UsageSample(slot="18:master:0:1", incarnation=1, cpu=12.5, memory=524288),
                                       UsageSample(slot="18:slave:0:1", incarnation=1, cpu=71.0, memory=1048576)],
                at=at),
        VmGuest(envid=18, slot="18:master", incarnation=1, kind="appstatus", status="MASTER_INIT_DONE", at=at),
        VmMetrics(envid=18, slot="18:slave:0", one_id=1605, values={"CPU_LOAD": 55.0}, at=at),
        GuestReport(envid=18, slot="18:master", incarnation=1, one_id=1604, kind="vmstatus",
                    params={"newip": "10.1.0.5", "name": "tomcat-18-m"}, at=at),
        PolicyTick(seq=42, shard=3, shards=8, at=at),
        PolicyDecision(envid=18, policy="elasticity", action="scaleup", reason="avgcpu > 50 for 4 evaluations",
                       inputs={"avgcpu": 72.0, "numvms": 3}, expressions={"scaleup_expr": "avgcpu[72.0] > 50"}, at=at),
        EnvEvent(envid=18, seq=12, status="MASTER_INIT_DONE", policy_status="INIT",
                 message="master initialised; creating 2 slaves", jobid=51, job_status="RUNNING", at=at),
    ]
    return {type(m).__name__: json.loads(m.to_bytes()) for m in examples}
