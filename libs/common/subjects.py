"""Subject names and the JetStream streams that persist them.

The subject is the contract between services: one constant per subject here, one pydantic model per subject in
`libs.common.messages`, one handler module per subject in the consuming service. Streams group subjects by concern
so that retention and replication can be tuned per concern; every stream has a duplicate window so that a command
re-published with the same `Nats-Msg-Id` (after a crash, a lost ack, a retry) is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

# ENV: commands on environments (gateway, policy, scheduler → envmgr).
ENV_CREATE = "env.create"
ENV_SCALE = "env.scale"
ENV_REMOVE = "env.remove"
ENV_RECREATE = "env.recreate"
ENV_RECOVER = "env.recover"
ENV_FAILOVER = "env.failover"
ENV_FAILBACK = "env.failback"
ENV_RECONCILE = "env.reconcile"  # a bare nudge: "look at this environment again"

# POOL: capacity requests (envmgr ↔ scheduler).
POOL_REQUEST = "pool.request"
POOL_RELEASE = "pool.release"
POOL_CANCEL = "pool.cancel"
POOL_GRANT = "pool.grant"  # pool.grant.<service>
POOL_RECLAIM = "pool.reclaim"  # pool.reclaim.<service>

# VM: work on OpenNebula (envmgr → provisioner) and what is observed (provisioner, callback → envmgr, policy).
VM_PROVISION = "vm.provision"
VM_TERMINATE = "vm.terminate"
VM_STATUS = "vm.status"
VM_USAGE = "vm.usage"  # CPU and memory of many VMs at once (the monitor's periodic load reports)
VM_GUEST = "vm.guest"
VM_METRICS = "vm.metrics"

# GUEST: raw callbacks from guests, already authenticated by the gateway (gateway → callback).
GUEST_REPORT = "guest.report"

# POLICY: the ticker's beat and the audit of every decision.
POLICY_TICK = "policy.tick"
POLICY_DECISION = "policy.decision"

# EVENTS: progress of an environment for watchers (envmgr → gateway SSE, CLI --watch).
EVENTS_ENV = "events.env"  # events.env.<envid>


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream declared in code."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float  # how long messages are kept; commands are short-lived nudges, not the record
    duplicate_window_s: float = 300.0  # longer than a restart plus retries, shorter than max_age


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("ENV", ("env.>",), max_age_s=7 * 86400),
    StreamSpec("POOL", ("pool.>",), max_age_s=7 * 86400),
    StreamSpec("VM", ("vm.>",), max_age_s=86400),
    StreamSpec("GUEST", ("guest.>",), max_age_s=86400),
    StreamSpec("POLICY", ("policy.>",), max_age_s=86400, duplicate_window_s=120.0),
    StreamSpec("EVENTS", ("events.>",), max_age_s=86400, duplicate_window_s=120.0),
)

LEASE_BUCKET = "carina_leases"  # NATS KV bucket holding singleton leases (scheduler allocator, policy ticker)


def stream_for(subject: str) -> StreamSpec:
    """Return the stream that stores `subject`."""
    head = subject.split(".", 1)[0]
    for spec in STREAMS:
        if any(pattern.split(".", 1)[0] == head for pattern in spec.subjects):
            return spec
    raise KeyError(f"no stream stores subject {subject!r}")
