"""The examples directory: templates, README coverage, and the sample context scripts speaking the guest protocol.

The scripts run for real (bash, curl or wget) against a local HTTP server that records what a guest sends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TEMPLATES = EXAMPLES / "templates"
CONTEXT = EXAMPLES / "context"

# Carina's placeholders (reference §1.2); the provisioner substitutes these and nothing else.
PLACEHOLDERS = {
    "NAME",
    "CPU",
    "MEMORY",
    "IMAGE_ID",
    "NETWORK_ID",
    "ENVID",
    "SERVICE_NAME",
    "CARINA_IP",
    "APP_CONTEXT_SCRIPT",
    "APP_CONTEXT_VAR",
    "MASTER_SERVICE_PORT",
    "ADMIN_USER",
    "MASTER",
    "APP_PACKAGE",
}


# --- templates -------------------------------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", ["example.vm", "cassandra.vm", "openvz.vm", "hybrid-ec2.vm"])
def test_templates_are_well_formed_and_use_only_known_placeholders(name: str) -> None:
    body = _strip_comments((TEMPLATES / name).read_text())
    used = set(re.findall(r"%([A-Z_]+)%", body))
    assert used <= PLACEHOLDERS, used - PLACEHOLDERS
    assert {"NAME", "IMAGE_ID", "NETWORK_ID", "APP_CONTEXT_VAR"} <= used
    outside_strings = re.sub(r'"[^"]*"', '""', body)
    assert body.count('"') % 2 == 0
    assert outside_strings.count("[") == outside_strings.count("]")
    assert re.search(r"^CONTEXT\s*=\s*\[", body, re.MULTILINE)
    assert re.search(r"^NIC\s*=\s*\[\s*NETWORK_ID\s*=\s*%NETWORK_ID%", body, re.MULTILINE)
    assert re.search(r"^DISK\s*=\s*\[\s*IMAGE_ID\s*=\s*%IMAGE_ID%", body, re.MULTILINE)


def test_hypervisor_specific_attributes_are_present() -> None:
    openvz = (TEMPLATES / "openvz.vm").read_text()
    for attribute in ("KMEMSIZE", "PRIVVMPAGES", "CPUUNITS", "CPULIMIT", "DISKSPACE", "DISKINODES", "ONBOOT"):
        assert attribute in openvz
    ec2 = (TEMPLATES / "hybrid-ec2.vm").read_text()
    assert re.search(r'^EC2\s*=\s*\[\s*AMI\s*=\s*"ami-', ec2, re.MULTILINE)
    assert "INSTANCETYPE" in ec2 and "KEYPAIR" in ec2


def test_configured_templates_and_scripts_exist() -> None:
    config = yaml.safe_load((EXAMPLES / "carina.yaml").read_text())
    for template in config["templates"].values():
        assert (TEMPLATES / template["file"]).is_file()
    for env in config["environments"].values():
        for key in ("master_context_script", "slave_context_script"):
            if env.get(key):
                assert (CONTEXT / env[key]).is_file(), env[key]


def test_readme_describes_every_example_file() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in sorted(EXAMPLES.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(EXAMPLES)) in readme, path


# --- context scripts -------------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str


@dataclass
class FakeCarina:
    """A stand-in for the gateway: records every request, serves notifications and files."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    notifications: list[dict[str, object]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def named(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
def carina() -> Iterator[FakeCarina]:
    state = FakeCarina()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
            headers = {key.lower(): value for key, value in self.headers.items()}
            state.requests.append(Recorded(self.command, parts.path, query, headers, body))
            payload = b""
            if parts.path == "/guest/v1/notifications":
                payload = json.dumps({"notifications": state.notifications}).encode()
            elif parts.path in state.files:
                payload = state.files[parts.path]
            elif parts.path.startswith("/repo/"):
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


needs_http_client = pytest.mark.skipif(
    shutil.which("curl") is None and shutil.which("wget") is None, reason="neither curl nor wget installed"
)


def path_without(tool: str, tmp_path: Path) -> str:
    """A PATH with every command of the current PATH except `tool` (to exercise the wget branch)."""
    shadow = tmp_path / f"bin-without-{tool}"
    shadow.mkdir(exist_ok=True)
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = shadow / entry.name
            if entry.name != tool and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(shadow)


def run_script(
    script: str, args: list[str], context: dict[str, str], tmp_path: Path, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    context_file = tmp_path / "context.sh"
    context_file.write_text("".join(f"{key}='{value}'\n" for key, value in context.items()))
    env = {
        "PATH": path or os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CARINA_CONTEXT_FILE": str(context_file),
        "CARINA_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        ["bash", str(CONTEXT / script), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def guest_context(carina: FakeCarina, **extra: str) -> dict[str, str]:
    return {
        "CARINA_URL": carina.url,
        "ONEGATE_ENDPOINT": carina.url,
        "CARINA_TOKEN": "tok en/with+chars",
        "VMID": "42",
        "ENVID": "7",
        "SERVICE_NAME": "demo",
        "IP": "10.0.0.2",
        "CARINA_NOTIFY": "ssh",
        **extra,
    }


@pytest.mark.parametrize("script", ["balance.sh", "tomcat.sh"])
def test_scripts_are_valid_bash(script: str) -> None:
    subprocess.run(["bash", "-n", str(CONTEXT / script)], check=True, timeout=30)


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_balance_init_reports_network_then_master_init_done(carina: FakeCarina, tmp_path: Path, client: str) -> None:
    if shutil.which(client) is None:
        pytest.skip(f"{client} not installed")
    path = path_without("curl", tmp_path) if client == "wget" else None
    result = run_script("balance.sh", ["init"], guest_context(carina, BALANCE_PORT="8080"), tmp_path, path)
    assert result.returncode == 0, result.stderr
    assert [r.path for r in carina.requests] == ["/cgi-bin/updatevmstatus.sh", "/cgi-bin/updateappstatus.sh"]
    network, status = carina.requests
    assert network.query["newip"] == "10.0.0.2"
    assert (network.query["vmid"], network.query["envid"], network.query["service"]) == ("42", "7", "demo")
    assert status.query["status"] == "MASTER_INIT_DONE"
    assert client in network.headers["user-agent"].lower()  # the branch under test really ran
    for request in carina.requests:
        assert request.query["token"] == "tok en/with+chars"
        assert request.headers["x-carina-token"] == "tok en/with+chars"


@needs_http_client
def test_balance_init_fails_loudly_without_a_port(carina: FakeCarina, tmp_path: Path) -> None:
    result = run_script("balance.sh", ["init"], guest_context(carina), tmp_path)
    assert result.returncode != 0
    assert carina.named("/cgi-bin/updateappstatus.sh")[-1].query["status"] == "MASTER_INIT_FAIL:BALANCE_PORT_MISSING"


@needs_http_client
def test_balance_add_delete_show_as_called_over_ssh(carina: FakeCarina, tmp_path: Path) -> None:
    context = guest_context(carina, BALANCE_PORT="8080")
    assert run_script("balance.sh", ["init"], context, tmp_path).returncode == 0
    for args in (["add", "10.0.0.5", "8080"], ["add", "10.0.0.6", "9090"], ["add", "10.0.0.5", "8081"]):
        assert run_script("balance.sh", args, context, tmp_path).returncode == 0
    assert run_script("balance.sh", ["delete", "10.0.0.6"], context, tmp_path).returncode == 0
    assert run_script("balance.sh", ["delete", "10.0.0.99"], context, tmp_path).returncode == 0  # idempotent
    shown = run_script("balance.sh", ["show"], context, tmp_path)
    assert shown.stdout.split("\n") == ["10.0.0.5 8081", ""]
    bad = run_script("balance.sh", ["add", "10.0.0.7;rm -rf /", "80"], context, tmp_path)
    assert bad.returncode == 2


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_balance_pull_mode_applies_notifications_in_order_and_acks(
    carina: FakeCarina, tmp_path: Path, client: str
) -> None:
    if shutil.which(client) is None:
        pytest.skip(f"{client} not installed")
    path = path_without("curl", tmp_path) if client == "wget" else None
    context = guest_context(carina, BALANCE_PORT="8080")
    assert run_script("balance.sh", ["init"], context, tmp_path, path).returncode == 0
    carina.notifications = [
        {"seq": 3, "op": "delete", "ip": "10.0.0.5", "data": ""},
        {"seq": 1, "op": "add", "ip": "10.0.0.5", "data": "8080"},
        {"seq": 2, "op": "add", "ip": "10.0.0.6", "data": "8080"},
    ]
    result = run_script("balance.sh", ["poll-once"], context, tmp_path, path)
    assert result.returncode == 0, result.stderr
    poll = carina.named("/guest/v1/notifications")[-1]
    assert (poll.headers["x-onegate-token"], poll.headers["x-onegate-vmid"]) == ("tok en/with+chars", "42")
    ack = carina.named("/guest/v1/notifications/ack")[-1]
    assert ack.method == "POST"
    assert json.loads(ack.body) == {"seq": 3}
    assert run_script("balance.sh", ["show"], context, tmp_path).stdout == "10.0.0.6 8080\n"


@needs_http_client
def test_balance_poll_loop_long_polls_and_never_reapplies(carina: FakeCarina, tmp_path: Path) -> None:
    # The fake answers at once and, unlike Carina, keeps sending acknowledged notifications: the loop applies the
    # news, asks again at once, skips what it already applied, and pauses when an answer brought nothing.
    context = guest_context(carina, BALANCE_PORT="8080")
    assert run_script("balance.sh", ["init"], context, tmp_path).returncode == 0
    carina.notifications = [{"seq": 1, "op": "add", "ip": "10.0.0.5", "data": "8080"}]
    context_file = tmp_path / "context.sh"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "CARINA_CONTEXT_FILE": str(context_file), "CARINA_STATE_DIR": str(tmp_path / "state"),
           "CARINA_POLL_WAIT": "7", "CARINA_POLL_INTERVAL": "30"}
    loop = subprocess.Popen(["bash", str(CONTEXT / "balance.sh"), "poll"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(carina.named("/guest/v1/notifications")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # long enough for a third poll, were it not pausing
    finally:
        os.killpg(loop.pid, signal.SIGKILL)
        loop.wait(timeout=10)
    polls = carina.named("/guest/v1/notifications")
    assert [p.query.get("wait") for p in polls] == ["7", "7"]
    assert [json.loads(a.body) for a in carina.named("/guest/v1/notifications/ack")] == [{"seq": 1}]
    assert run_script("balance.sh", ["show"], context, tmp_path).stdout == "10.0.0.5 8080\n"


@needs_http_client
def test_tomcat_init_deploys_the_package_and_reports_its_index(carina: FakeCarina, tmp_path: Path) -> None:
    catalina = tmp_path / "tomcat"
    (catalina / "bin").mkdir(parents=True)
    started = tmp_path / "started"
    startup = catalina / "bin" / "startup.sh"
    startup.write_text(f"#!/bin/bash\ntouch {started}\n")
    startup.chmod(0o755)
    carina.files["/repo/gwt-petstore.war"] = b"fake war"
    context = guest_context(
        carina,
        SLAVE_INDEX="1",
        APP_PACKAGE="gwt-petstore.war",
        APP_REPO_URL=f"{carina.url}/repo",
        HBASE_URL="http://10.0.0.9:60010",
        CATALINA_HOME=str(catalina),
        TOMCAT_START_TIMEOUT="0",
    )
    result = run_script("tomcat.sh", ["init"], context, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (catalina / "webapps" / "gwt-petstore.war").read_bytes() == b"fake war"
    assert started.exists()
    setenv = (catalina / "bin" / "setenv.sh").read_text()
    assert "export HBASE_URL=http://10.0.0.9:60010" in setenv
    assert "CARINA_URL" not in setenv
    assert carina.named("/cgi-bin/updatevmstatus.sh")
    assert carina.named("/cgi-bin/updateappstatus.sh")[-1].query["status"] == "SLAVE_1_INIT_DONE"


@needs_http_client
def test_tomcat_reports_failure_with_a_reason(carina: FakeCarina, tmp_path: Path) -> None:
    catalina = tmp_path / "tomcat"
    (catalina / "bin").mkdir(parents=True)
    context = guest_context(
        carina,
        SLAVE_ID="0",  # Carina's examples pass the index as SLAVE_ID=%SLAVE_INDEX%
        APP_PACKAGE="missing.war",
        APP_REPO_URL=f"{carina.url}/repo",
        CATALINA_HOME=str(catalina),
        TOMCAT_START_TIMEOUT="0",
    )
    result = run_script("tomcat.sh", ["init"], context, tmp_path)
    assert result.returncode != 0
    assert carina.named("/cgi-bin/updateappstatus.sh")[-1].query["status"] == "SLAVE_0_INIT_FAIL:APP_PACKAGE"


@needs_http_client
def test_tomcat_without_an_index_sends_no_status(carina: FakeCarina, tmp_path: Path) -> None:
    result = run_script("tomcat.sh", ["init"], guest_context(carina), tmp_path)
    assert result.returncode != 0
    assert not carina.named("/cgi-bin/updateappstatus.sh")  # never the seed's "SLAVE__INIT_DONE"


@needs_http_client
def test_tomcat_metrics_push_onegate_style(carina: FakeCarina, tmp_path: Path) -> None:
    result = run_script("tomcat.sh", ["metrics"], guest_context(carina), tmp_path)
    assert result.returncode == 0, result.stderr
    push = carina.named("/vm")[-1]
    assert push.method == "PUT"
    assert (push.headers["x-onegate-token"], push.headers["x-onegate-vmid"]) == ("tok en/with+chars", "42")
    assert re.fullmatch(r"CPU_LOAD = \d+(\.\d+)?", push.body.strip())
