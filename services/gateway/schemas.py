"""The shapes of the REST API v1: request bodies (strict: unknown keys refused) and responses.

These models are the OpenAPI document's schemas; the route modules in `services.gateway.routes` fill them from
MongoDB documents through `services.gateway.views`. Internal fields of the stored documents (an environment's
`spec`, slot nonces, token hashes, zone credentials) have no place here, so they cannot leak by accident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RequestId = str


class Body(BaseModel):
    """Base of request bodies: a typo in a key is an error, not a silently ignored field."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """Base of responses."""


# --- errors -----------------------------------------------------------------------------------------------------------


class Problem(Out):
    path: str = Field(description="where the problem is: a configuration key path, a field, or 'line L, column C'")
    message: str


class ErrorBody(Out):
    detail: str = Field(description="what went wrong, in one sentence")
    problems: list[Problem] | None = Field(None, description="every problem found, when there are several")


# --- health ----------------------------------------------------------------------------------------------------------


class Health(Out):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


# --- configuration ---------------------------------------------------------------------------------------------------


class ConfigUploaded(Out):
    service: str
    revision: int
    environments: list[str] = Field(description="environment and group names the configuration defines")
    warnings: list[str] = Field(default_factory=list,
                                description="what a config.rb conversion accepted but deserves a look")


class StoredConfig(Out):
    service: str
    revision: int
    uploaded_at: datetime | None = None
    config: dict[str, Any] = Field(description="the configuration with credentials redacted")


class ConfigEntry(Out):
    name: str
    type: str
    endpoint: str
    zone: str
    description: str


class TemplateUploaded(Out):
    service: str
    name: str
    revision: int
    size: int


class TemplateEntry(Out):
    name: str
    revision: int
    uploaded_at: datetime | None = None
    size: int


# --- environments -----------------------------------------------------------------------------------------------------


class CreateEnvironment(Body):
    config: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                        description="name of an environment or group in the service's configuration")
    request_id: RequestId | None = Field(None, min_length=1, max_length=128,
                                         description="idempotency key: repeating it returns the first answer")
    service: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                                description="the service to act for (administrator only)")


class Member(Out):
    envid: int
    jobid: int
    name: str


class Created(Out):
    envid: int
    jobid: int
    members: list[Member]


class Recreate(Body):
    vmid: int = Field(ge=0, description="OpenNebula id of the VM to replace")


class JobAccepted(Out):
    envid: int
    jobid: int


class GroupRemoval(Out):
    groupid: int
    envids: list[int]
    jobids: list[int]


class CurrentJob(Out):
    jobid: int
    type: str
    phase: str | None = None


class Failure(Out):
    jobid: int | None = None
    type: str | None = None
    reason: str | None = None
    at: datetime | None = None


class EnvSummary(Out):
    envid: int
    name: str
    service: str
    zone: str | None = None
    numvms: int
    status: str
    policy_status: str
    app_url: str | None = None
    info: str | None = None
    groupid: int | None = None
    active: bool
    job: CurrentJob | None = None
    failed: Failure | None = None


class Vm(Out):
    vmid: int | None = Field(description="OpenNebula VM id (null until the VM exists)")
    envid: int
    zone: str | None = None
    hostname: str | None = None
    ipaddr: str | None = None
    status: str = Field(description="the guest's status (lower case) or OpenNebula's short state")
    cpu: float | None = None
    role: str
    index: int | None = None
    slot: str
    lifecycle: str | None = None


class Job(Out):
    jobid: int
    envid: int
    service: str
    name: str
    type: str
    status: str
    submit: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    reason: str | None = None
    requested_by: str | None = None
    groupid: int | None = None
    predjob: int | None = None


class EnvDetail(EnvSummary):
    type: str | None = None
    description: str | None = None
    endpoint: str | None = None
    group_name: str | None = None
    desired_slaves: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    config: dict[str, Any] | None = Field(None, description="the environment's definition it was created from")
    vms: list[Vm]
    jobs: list[Job] = Field(description="the most recent jobs, newest first")


# --- accounts ---------------------------------------------------------------------------------------------------------


class TokenIssued(Out):
    service: str
    token: str = Field(description="shown once; only its hash is stored")


class Account(Out):
    service: str
    role: str
    created_at: datetime | None = None
    rotated_at: datetime | None = None


# --- guests -----------------------------------------------------------------------------------------------------------


class Ack(Body):
    seq: int = Field(ge=0, description="the highest notification sequence number applied")


class Notification(Out):
    seq: int
    op: Literal["add", "delete"] | str
    ip: str | None = None
    data: str | None = None


class Notifications(Out):
    notifications: list[Notification]


# --- global scheduler -------------------------------------------------------------------------------------------------


class SchedulerConfigUploaded(Out):
    revision: int
    pools: list[str]
    services: list[str]
    warnings: list[str] = Field(default_factory=list, description="what a global.rb conversion deserves a look at")


class StoredSchedulerConfig(Out):
    revision: int
    uploaded_at: datetime | None = None
    config: dict[str, Any] = Field(description="pools and services, in the native YAML shape")


class Pool(Out):
    name: str
    zone: str
    service_class: str = Field(alias="class", description="lowest service class allowed to use the pool")
    vcpus: float = Field(description="vCPUs the scheduler may grant from the pool")
    memory: int = Field(description="memory the scheduler may grant from the pool, MiB")
    allocated_vcpus: float
    allocated_memory: int
    available_vcpus: float
    available_memory: int
    pending: int = Field(description="requests waiting for capacity in the pool's zone")


class SchedulerService(Out):
    name: str
    service_class: str = Field(alias="class")
    max_vcpus: float
    max_memory: int
    allocated_vcpus: float
    allocated_memory: int
    pending: int = Field(description="requests of the service waiting for capacity")
    zones: list[str] = Field(description="zones of the service's configured endpoints (where its environments run)")


RequestStatus = Literal["PEND", "ALLOCATED", "RELEASED", "CANCELLED", "REJECTED"]


class CapacityRequest(Out):
    reqid: int
    envid: int
    env: str | None = Field(None, description="name of the environment")
    service: str
    vcpus: float
    memory: int
    zone: str | None = None
    target_pool: str | None = None
    kind: str | None = None
    status: str
    pool: str | None = Field(None, description="the pool granted")
    submitted_at: datetime | None = None
    granted_at: datetime | None = None
    lease_expires_at: datetime | None = None
    reason: str | None = None


# --- policies ---------------------------------------------------------------------------------------------------------


class PolicyDecision(Out):
    at: datetime | None = None
    policy: str
    action: str
    reason: str
    source: str | None = None
    count: int | None = None
    recommend_only: bool = False
    recommended: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict, description="the values the policy looked at")
    expressions: dict[str, Any] = Field(default_factory=dict, description="each expression and its value")
    vm: dict[str, Any] | None = None


class PolicyView(Out):
    envid: int
    name: str
    policy_status: str
    info: str | None = None
    elasticity: dict[str, Any] | None = Field(None, description="the environment's elasticity policy")
    availability: dict[str, Any] | None = Field(None, description="the environment's availability policy")
    state: dict[str, Any] = Field(default_factory=dict,
                                  description="counters, cooldown and last action kept between evaluations")
    updated_at: datetime | None = Field(None, description="when the policy service last evaluated")
    recent: list[PolicyDecision] = Field(description="the last evaluation's decisions, newest first")
    decisions: list[PolicyDecision] = Field(description="recorded decisions (actions and changes), newest first")
