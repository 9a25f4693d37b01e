"""Per-service NATS users against a real nats-server started with the config `libs.common.natsauth` renders.

Each service connects as itself through `libs.common.bus.Bus`, declares the streams and its real durable consumers
(read from `services/<name>/app.py`), publishes every subject the catalogue lets it publish, and is refused on a
subject it does not own: the JetStream publish fails, the server reports a permission violation and nothing is
stored. The Helm chart's authorization block is checked against the same table so the two cannot drift.
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from libs.common import natsauth
from libs.common import subjects as s
from libs.common.bus import Bus, ConsumerSpec, Delivery, Lease
from libs.common.errors import TransientError
from libs.common.messages import (
    CATALOGUE,
    EnvCreate,
    EnvScale,
    GuestReport,
    Message,
    PolicyTick,
    VmStatus,
    example_payloads,
)
from libs.devstack.procs import Proc, free_port, nats_server_binary

REPO = Path(__file__).resolve().parents[2]
CHART_AUTH = REPO / "deploy/helm/carina/files/nats-authorization.conf"

EXAMPLES = example_payloads()
MODEL_OF_SUBJECT: dict[str, type[Message]] = {natsauth.subject_pattern(subject): model
                                              for model, subject, _, _ in CATALOGUE}


class Broker:
    def __init__(self, proc: Proc, url: str, passwords: dict[str, str]) -> None:
        self.proc = proc
        self.url = url
        self.passwords = passwords

    async def connect(self, user: str) -> Bus:
        creds = natsauth.service_credentials(user, self.passwords[user])
        bus = Bus(self.url, name=f"carina-{user}", user=creds["CARINA_NATS_USER"],
                  password=creds["CARINA_NATS_PASSWORD"])
        await bus.connect(timeout=5)
        return bus

    def violations(self, user: str) -> list[str]:
        return [line for line in self.proc.lines if f"user:{user}\"" in line and "Violation" in line]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    passwords = natsauth.generate_passwords()
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(natsauth.render_server_config(passwords, port, str(tmp_path / "js"), sync_always=True))
    proc = Proc("nats", [nats_server_binary(), "-c", str(config)], ready_pattern=r"Server is ready").start(timeout=20)
    yield Broker(proc, f"nats://127.0.0.1:{port}", passwords)
    proc.stop()


@pytest.fixture
async def operator(broker: Broker) -> AsyncIterator[Bus]:
    bus = await broker.connect(natsauth.OPERATOR)
    await bus.declare_streams()
    yield bus
    await bus.close()


def real_consumers() -> dict[str, list[tuple[str, str]]]:
    """(durable, subject) of every `ConsumerSpec("durable", s.SUBJECT, ...)` in services/<name>/app.py."""
    found: dict[str, list[tuple[str, str]]] = {}
    for service in natsauth.SERVICES:
        tree = ast.parse((REPO / "services" / service / "app.py").read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ConsumerSpec"
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[1], ast.Attribute)):
                found.setdefault(service, []).append((str(node.args[0].value), getattr(s, node.args[1].attr)))
    return found


def example(model: type[Message]) -> Message:
    return model.model_validate(EXAMPLES[model.__name__])


async def stored(bus: Bus, stream: str, subject: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


def test_every_real_consumer_is_covered_by_the_catalogue() -> None:
    consumers = real_consumers()
    assert consumers, "no ConsumerSpec found in services/*/app.py"
    for service, specs in consumers.items():
        allowed = natsauth.consumed_subjects(service)
        for durable, subject in specs:
            assert subject in allowed, f"{service} consumes {subject} ({durable}) but the catalogue does not say so"


def test_chart_embeds_the_generated_authorization_block() -> None:
    expected = natsauth.render_authorization({}, env_refs=True)
    assert CHART_AUTH.read_text() == expected, "regenerate: python -m libs.common.natsauth chart > " + str(CHART_AUTH)


def test_render_refuses_missing_or_empty_passwords() -> None:
    passwords = natsauth.generate_passwords()
    del passwords["callback"]
    with pytest.raises(ValueError, match="missing users \\['callback'\\]"):
        natsauth.render_server_config(passwords, 4222, "/tmp/js")
    passwords = natsauth.generate_passwords()
    passwords["gateway"] = ""
    with pytest.raises(ValueError, match="empty password for \\['gateway'\\]"):
        natsauth.render_server_config(passwords, 4222, "/tmp/js")
    with pytest.raises(ValueError, match="unknown service"):
        natsauth.service_credentials("billing", "x" * 20)


def test_publishers_follow_the_issue() -> None:
    who_publishes = {subject: {svc for svc in natsauth.SERVICES if subject in natsauth.produced_subjects(svc)}
                     for subject in ("vm.status", "policy.tick", "vm.provision", "events.env.>", "guest.report",
                                     "pool.grant.>", "env.reconcile")}
    assert who_publishes["vm.status"] == {"provisioner"}
    assert who_publishes["policy.tick"] == {"policy"}
    assert who_publishes["vm.provision"] == {"envmgr"}
    assert who_publishes["events.env.>"] == {"envmgr"}
    assert who_publishes["guest.report"] == {"gateway"}
    assert who_publishes["pool.grant.>"] == {"scheduler"}
    assert who_publishes["env.reconcile"] == set(natsauth.SERVICES)


@pytest.mark.parametrize("service", natsauth.SERVICES)
async def test_service_declares_consumes_and_publishes_what_it_owns(broker: Broker, operator: Bus,
                                                                    service: str) -> None:
    bus = await broker.connect(service)
    try:
        await bus.declare_streams()  # every service does this at start-up
        consumers = dict(real_consumers().get(service, []))
        for index, subject in enumerate(natsauth.consumed_subjects(service)):
            if subject not in consumers.values():
                consumers[f"{service}-extra-{index}"] = subject  # in the catalogue, not wired yet
        for durable, subject in consumers.items():
            await bus.declare_consumer(ConsumerSpec(durable, subject, MODEL_OF_SUBJECT[subject]))
            await bus.js.consumer_info(stream_name(subject), durable)
        for subject in natsauth.produced_subjects(service):
            message = example(MODEL_OF_SUBJECT[subject])
            await bus.publish(message, attempts=1)
            assert await stored(operator, stream_name(subject), message.subject()) == 1, subject
        if service in natsauth.LEASE_HOLDERS:
            lease = Lease(bus, f"{service}.test", holder=service, ttl=5)
            assert await lease.try_acquire_or_renew()
            assert await lease.try_acquire_or_renew()  # renewal is a compare-and-set
            await lease.release()
        assert broker.violations(service) == []
    finally:
        await bus.close()


def stream_name(subject: str) -> str:
    return s.stream_for(subject).name


async def test_publish_on_a_subject_not_owned_is_refused_and_not_stored(broker: Broker, operator: Bus) -> None:
    gateway = await broker.connect("gateway")
    callback = await broker.connect("callback")
    provisioner = await broker.connect("provisioner")
    refused: list[tuple[Bus, Message]] = [
        (gateway, example(VmStatus)),  # only the provisioner reports VM states
        (callback, PolicyTick(seq=7)),  # only the policy ticker beats
        (provisioner, example(EnvCreate)),  # environments are created through the gateway
        (callback, EnvScale(envid=3, direction="up")),
    ]
    try:
        results = await asyncio.gather(*(bus.publish(msg, attempts=1) for bus, msg in refused),
                                       return_exceptions=True)
        for (_, msg), result in zip(refused, results, strict=True):
            assert isinstance(result, TransientError), f"{msg.subject()} was accepted: {result!r}"
            assert await stored(operator, stream_name(msg.subject()), msg.subject()) == 0
        assert any('Subject "vm.status"' in line for line in broker.violations("gateway"))
        assert any('Subject "policy.tick"' in line for line in broker.violations("callback"))
        # The same users still publish what they own.
        assert await gateway.publish(example(GuestReport), attempts=1)
    finally:
        for bus in (gateway, callback, provisioner):
            await bus.close()


async def test_jetstream_administration_is_refused_to_services(broker: Broker, operator: Bus) -> None:
    gateway = await broker.connect("gateway")
    policy = await broker.connect("policy")
    try:
        attempts = [
            gateway.nc.request("$JS.API.STREAM.DELETE.ENV", b"", timeout=1),  # type: ignore[union-attr]
            gateway.nc.request("$JS.API.STREAM.PURGE.VM", b"", timeout=1),  # type: ignore[union-attr]
            # A consumer reading provisioner work off the VM stream: the gateway consumes nothing there.
            gateway.js.add_consumer("VM", durable_name="steal", name="steal", filter_subject="vm.provision",
                                    timeout=1),
            # The policy service reads vm.status and vm.metrics from VM, not the provisioner's commands.
            policy.js.add_consumer("VM", durable_name="steal", name="steal", filter_subject="vm.provision",
                                   timeout=1),
            # Leases belong to the scheduler, the policy ticker and the provisioner.
            gateway.js.publish(f"$KV.{s.LEASE_BUCKET}.scheduler.allocator", b"gateway", timeout=1),
        ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert all(isinstance(r, nats.errors.TimeoutError) for r in results), results
        assert (await operator.js.stream_info("ENV")).config.name == "ENV"
        with pytest.raises(nats.js.errors.NotFoundError):
            await operator.js.consumer_info("VM", "steal")
        assert len(broker.violations("gateway")) == 4 and len(broker.violations("policy")) == 1
    finally:
        await gateway.close()
        await policy.close()


async def test_pull_consumer_acks_and_redelivers_under_permissions(broker: Broker, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    gateway = await broker.connect("gateway")
    envmgr = await broker.connect("envmgr")
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(msg: EnvCreate, delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            raise TransientError("first delivery fails on purpose", delay=0.1)  # nak → redelivery
        done.set()

    try:
        await envmgr.declare_streams()
        caplog.set_level(logging.WARNING, logger="carina.bus")
        await envmgr.consume(ConsumerSpec("envmgr-env-create", s.ENV_CREATE, EnvCreate, concurrency=1), handler)
        assert await gateway.publish(EnvCreate(service="svc1", config="tomcat"), attempts=1)
        await asyncio.wait_for(done.wait(), timeout=10)
        info = await envmgr.js.consumer_info("ENV", "envmgr-env-create")
        for _ in range(50):  # the ack is asynchronous: give the server a moment to record it
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
            info = await envmgr.js.consumer_info("ENV", "envmgr-env-create")
        assert seen == [1, 2]
        assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
        assert info.ack_floor.stream_seq == 1
        assert not [r for r in caplog.records if "could not settle" in r.getMessage()]
        assert broker.violations("envmgr") == [] and broker.violations("gateway") == []
    finally:
        await gateway.close()
        await envmgr.close()
