"""Property-based test of the whole REST API from its own OpenAPI document (Schemathesis, live server).

Every operation is called with generated valid and invalid inputs; the gateway must never answer 5xx, never answer
a status code its OpenAPI document does not declare, and its answers must match the declared schemas and content
types. The event stream is left out: it is long-lived by design and has its own tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from gateway_helpers import ADMIN_TOKEN, CONFIG_YAML, TEMPLATE_VM, ServerThread, make_settings
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pymongo import MongoClient
from schemathesis import GenerationMode, checks

from libs.common.settings import CommonSettings
from libs.devstack.procs import Proc

GLOBAL_YAML = ("pools:\n  zone1: {zone: zone1, vcpus: 16, memory: 32768, class: gold}\n"
               "services:\n  alpha: {class: gold, max_vcpus: 12, max_memory: 24576}\n")
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(nats_server: Proc, mongo_url: str) -> Iterator[dict[str, Any]]:
    """A gateway with one service, its configuration and one environment (so some calls reach 200)."""
    db_name = f"t_schema_{uuid.uuid4().hex[:8]}"
    common = CommonSettings(nats_url=nats_server.url, mongodb_url=mongo_url, mongodb_db=db_name,  # type: ignore[attr-defined]
                            token_secret="schemathesis-token-secret-0123")
    server = ServerThread(common, make_settings(guest_burst=1000)).start()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=15) as http:
        token = http.post("/api/v1/services/alpha/token", headers=admin).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        http.put("/api/v1/templates/small.vm", content=TEMPLATE_VM, headers={**auth, "Content-Type": "text/plain"})
        assert http.put("/api/v1/config", content=CONFIG_YAML,
                        headers={**auth, "Content-Type": "application/yaml"}).status_code == 200
        created = http.post("/api/v1/environments", json={"config": "tomcat"}, headers=auth)
        assert created.status_code == 202
        assert http.put("/api/v1/scheduler/config", content=GLOBAL_YAML,
                        headers={**admin, "Content-Type": "application/yaml"}).status_code == 200
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo_url) as client:  # a ledger entry, so the scheduler's listings have something to show
        client[db_name]["requests"].insert_one({
            "_id": 1, "reqid": 1, "service": "alpha", "envid": created.json()["envid"], "vcpus": 1, "memory": 512,
            "zone": "zone1", "target_pool": "zone1", "kind": "scaleup", "status": "ALLOCATED", "pool": "zone1",
            "submitted_at": 1714555800.0})
    yield {"url": server.url, "auth": auth}
    server.stop()
    with MongoClient(mongo_url) as client:
        client.drop_database(db_name)


def test_api_conforms_to_its_openapi_document(live_api: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api['url']}/openapi.json").exclude(path_regex=r".*/events$")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation fails the test here
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None, phases=[Phase.explicit, Phase.generate])
            def call(case: Any) -> None:
                case.call_and_validate(base_url=live_api["url"], headers=live_api["auth"], checks=CHECKS, timeout=15)

            try:
                call()
            except Unsatisfiable:
                continue  # no invalid input exists for this operation in this mode
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every operation's failure, report them together
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    assert operations >= 24
    assert not failures, "\n\n".join(failures)


def test_openapi_declares_every_route(live_api: dict[str, Any]) -> None:
    document = httpx.get(f"{live_api['url']}/openapi.json").json()
    paths = set(document["paths"])
    assert {"/api/v1/config", "/api/v1/environments", "/api/v1/environments/{envid}/scaleup",
            "/api/v1/groups/{groupid}", "/api/v1/jobs/{jobid}", "/api/v1/services/{service}/token",
            "/api/v1/scheduler/config", "/api/v1/scheduler/pools", "/api/v1/scheduler/services",
            "/api/v1/scheduler/requests", "/api/v1/environments/{envid}/policy"} <= paths
    # Carina's own routes are its API, not ours: tested by golden tests (test_gw_carina.py), not documented here.
    assert not any(p in paths for p in ("/configs", "/envs", "/jobs", "/vms", "/pools", "/services", "/requests"))
    assert not any(p.startswith(("/cgi-bin", "/guest", "/vm")) for p in paths)  # guest routes are not user API
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path not in ("/healthz", "/readyz"):
                assert {"401", "422"} <= set(operation["responses"]), (method, path)
