"""The whole Carina stack on one machine: `make run`, and the end-to-end tests.

Starts, as child processes with their output prefixed by name: nats-server with JetStream (data under
`var/nats`), the MongoDB-wire server (data under `var/mongo`) unless `MONGODB_URL` names a real MongoDB, two
simulated OpenNebula zones (`zone1`, `zone2`, state kept under `var/zones`), the six services, and the gateway on
http://127.0.0.1:8080. Development secrets are generated once into `var/dev-secrets.json`, so a second `make run`
reuses `var/` and everything in it survives restarts. Once the gateway answers, the example configuration is loaded
for the development service `demo`, and the CLI's credentials are written to `~/.config/carina/cli.json`, so that
`oneenv create tomcat --watch` works at once. Ctrl-C (or SIGTERM) stops every child, services first.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from libs.common.natsauth import OPERATOR, generate_passwords, render_server_config, service_credentials
from libs.devstack.procs import Proc, free_port, mongo_proc, nats_proc

SERVICES = ("envmgr", "scheduler", "provisioner", "policy", "callback", "gateway")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class StackConfig:
    """Ports, directories and timings of one stack (defaults: `make run`)."""

    var: Path = REPO / "var"
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    mongo_port: int = 27017
    mongodb_url: str | None = None
    gateway_port: int = 8080
    zone_ports: tuple[int, ...] = (2633, 2634)
    probe_base: int = 9100
    echo: bool = True
    service_name: str = "demo"
    zone_args: list[str] = field(default_factory=lambda: ["--boot-seconds", "2", "--guest-seconds", "1",
                                                          "--guest-poll-seconds", "0.5", "--monitor-seconds", "5"])
    service_env: dict[str, str] = field(default_factory=dict)
    load_examples: bool = True
    write_cli_config: bool = True
    zone_credentials: str = "oneadmin:onesim"

    @classmethod
    def for_tests(cls, var: Path, **overrides: Any) -> StackConfig:
        """Free ports, quiet output, fast simulated zones."""
        config = cls(var=var, nats_port=free_port(), nats_monitor_port=free_port(), mongo_port=free_port(),
                     mongodb_url=os.environ.get("MONGODB_URL") or None, gateway_port=free_port(),
                     zone_ports=(free_port(), free_port()), probe_base=0, echo=False, load_examples=False,
                     write_cli_config=False,
                     zone_args=["--boot-seconds", "0.3", "--guest-seconds", "0.2", "--guest-poll-seconds", "0.1",
                                "--monitor-seconds", "1", "--shutdown-seconds", "0.2", "--sched-seconds", "0",
                                "--host-cpu", "6400", "--host-memory", "262144"])
        for key, value in overrides.items():
            setattr(config, key, value)
        return config


class DevStack:
    """Start, supervise and stop the processes of one stack."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: dict[str, Proc] = {}
        # Start, restart and "start if dead" of one service must not interleave: a test's watchdog thread that
        # revived a service while the test restarted it left a process nobody would ever stop.
        self._service_lock = threading.RLock()
        self.secrets: dict[str, Any] = self._secrets()
        self.mongodb_url = config.mongodb_url or f"mongodb://127.0.0.1:{config.mongo_port}/"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    @property
    def nats_url(self) -> str:
        """The broker's URL (each service adds its own NATS user and password)."""
        return f"nats://127.0.0.1:{self.config.nats_port}"

    @property
    def operator_nats_url(self) -> str:
        """The broker as the `operator` user, who may publish and subscribe anything (debugging, tests)."""
        return f"nats://{OPERATOR}:{self.secrets['nats_passwords'][OPERATOR]}@127.0.0.1:{self.config.nats_port}"

    def zone_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.config.zone_ports[index]}/RPC2"

    def _secrets(self) -> dict[str, str]:
        path = self.config.var / "dev-secrets.json"
        self.config.var.mkdir(parents=True, exist_ok=True)
        values: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        fresh = {"token_secret": secrets.token_urlsafe(32), "admin_token": "crn_admin_" + secrets.token_urlsafe(24),
                 "dev_token": "crn_dev_" + secrets.token_urlsafe(24), "nats_passwords": generate_passwords()}
        if set(fresh) - set(values):
            values = {**fresh, **values}
            path.write_text(json.dumps(values, indent=2))
            path.chmod(0o600)
        return values

    def service_env(self, name: str, index: int) -> dict[str, str]:
        cfg = self.config
        env = {
            "CARINA_NATS_URL": self.nats_url,
            "CARINA_MONGODB_URL": self.mongodb_url,
            "CARINA_MONGODB_DB": "carina",
            "CARINA_LOG_FORMAT": "text" if cfg.echo else "json",
            "CARINA_DEV_MODE": "true",
            "CARINA_TOKEN_SECRET": self.secrets["token_secret"],
            f"CARINA_{name.upper()}_PROBE_PORT": str(cfg.probe_base + index if cfg.probe_base else 0),
            "CARINA_GATEWAY_PORT": str(cfg.gateway_port),
            "CARINA_GATEWAY_PUBLIC_URL": self.gateway_url,
            "CARINA_GATEWAY_ADMIN_TOKEN": self.secrets["admin_token"],
            "CARINA_GATEWAY_DEV_SERVICE": cfg.service_name,
            "CARINA_GATEWAY_DEV_TOKEN": self.secrets["dev_token"],
            "CARINA_PROVISIONER_PUBLIC_URL": self.gateway_url,
            "PYTHONUNBUFFERED": "1",
            # Each service is its own NATS user, allowed only its own subjects (libs/common/natsauth.py).
            **service_credentials(name, self.secrets["nats_passwords"][name]),
        }
        env.update(cfg.service_env)
        return env

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        try:
            conf = cfg.var / "nats.conf"
            conf.write_text(render_server_config(self.secrets["nats_passwords"], cfg.nats_port, str(cfg.var / "nats")))
            conf.chmod(0o600)
            nats = nats_proc(cfg.nats_port, str(cfg.var / "nats"), config=str(conf), monitor_port=cfg.nats_monitor_port,
                             echo=cfg.echo)
            self.procs["nats"] = nats.start()
            if cfg.mongodb_url is None:
                self.procs["mongo"] = mongo_proc(cfg.mongo_port, str(cfg.var / "mongo"), echo=cfg.echo).start()
            for index, port in enumerate(cfg.zone_ports):
                name = f"zone{index + 1}"
                (cfg.var / "zones").mkdir(parents=True, exist_ok=True)
                argv = [sys.executable, "-m", "libs.onesim", "--name", name, "--port", str(port), "--hosts", "4",
                        "--user", cfg.zone_credentials, "--network", f"public:10.{index + 1}.0.0/16",
                        "--state-file", str(cfg.var / "zones" / f"{name}.json"), *cfg.zone_args]
                self.procs[name] = Proc(name, argv, ready_pattern=r"listening on", echo=cfg.echo).start()
            for index, service in enumerate(SERVICES):
                self.start_service(service, index)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def start_service(self, service: str, index: int | None = None) -> Proc:
        """Start `service` (stopping first a process of it that is still running: never two, never a stray one)."""
        with self._service_lock:
            index = SERVICES.index(service) if index is None else index
            previous = self.procs.get(service)
            if previous is not None and previous.running:
                previous.stop(grace=5)
            proc = Proc(service, [sys.executable, "-m", f"services.{service}"], env=self.service_env(service, index),
                        ready_pattern=r"service ready", echo=self.config.echo, cwd=str(REPO))
            self.procs[service] = proc
            return proc.start(timeout=60)

    def start_if_dead(self, service: str) -> bool:
        """Start `service` again if its process has exited (a crash test's reviver). Whether it did."""
        with self._service_lock:
            if self.procs[service].running:
                return False
            self.start_service(service)
            return True

    def kill_service(self, service: str) -> None:
        """SIGKILL one service, as a crash would."""
        self.procs[service].kill()

    def restart_service(self, service: str) -> Proc:
        with self._service_lock:
            self.procs[service].stop(grace=5)
            return self.start_service(service)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.gateway_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not answering at {self.gateway_url} after {timeout} s")

    def stop(self) -> None:
        order = [*reversed(SERVICES), "zone2", "zone1", "mongo", "nats"]
        threads = []
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and name in SERVICES:
                thread = threading.Thread(target=proc.stop, kwargs={"grace": 10})
                thread.start()
                threads.append(thread)
        for thread in threads:
            thread.join()
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and name not in SERVICES:
                proc.stop(grace=10)

    # --- developer conveniences -----------------------------------------------------------------------------------

    def load_examples(self) -> list[str]:
        """Upload examples/ for the development service: templates, configuration, global scheduler config."""
        examples = REPO / "examples"
        headers = {"Authorization": f"Bearer {self.secrets['dev_token']}"}
        loaded = []
        with httpx.Client(base_url=self.gateway_url, headers=headers, timeout=30) as client:
            for vm in sorted((examples / "templates").glob("*.vm")):
                client.put(f"/api/v1/templates/{vm.name}", content=vm.read_bytes(),
                           headers={"Content-Type": "text/plain"}).raise_for_status()
                loaded.append(vm.name)
            config = examples / "carina.yaml"
            if config.exists():
                answer = client.put("/api/v1/config", content=config.read_bytes(),
                                    headers={"Content-Type": "application/yaml"})
                if answer.status_code >= 400:
                    raise RuntimeError(f"examples/carina.yaml refused: {answer.text}")
                loaded.append(config.name)
            global_config = examples / "global.yaml"
            if global_config.exists():
                admin = {"Authorization": f"Bearer {self.secrets['admin_token']}",
                         "Content-Type": "application/yaml"}
                answer = client.put("/api/v1/scheduler/config", content=global_config.read_bytes(), headers=admin)
                if answer.status_code < 400:
                    loaded.append(global_config.name)
        return loaded

    def write_cli_config(self) -> Path:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "carina"
        base.mkdir(parents=True, exist_ok=True)
        path = base / "cli.json"
        path.write_text(json.dumps({"url": self.gateway_url, "token": self.secrets["dev_token"]}, indent=2))
        path.chmod(0o600)
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole Carina stack locally (make run)")
    parser.add_argument("--var", default=str(REPO / "var"), help="state directory (kept across runs)")
    parser.add_argument("--no-examples", action="store_true", help="don't load examples/")
    parser.add_argument("--test-ports", action="store_true", help="free ports instead of the defaults (tests)")
    args = parser.parse_args(argv)
    config = StackConfig(var=Path(args.var), mongodb_url=os.environ.get("MONGODB_URL") or None)
    if args.test_ports:
        config = StackConfig.for_tests(Path(args.var), echo=True, load_examples=True, write_cli_config=True)
    stack = DevStack(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    try:
        stack.start()
        loaded = [] if args.no_examples else stack.load_examples()
        cli = stack.write_cli_config()
        elapsed = time.monotonic() - started
        banner = [
            "",
            f"Carina is up in {elapsed:.1f} s.",
            f"  gateway:        {stack.gateway_url}   (OpenAPI: {stack.gateway_url}/docs)",
            f"  service:        {config.service_name}   token: {stack.secrets['dev_token']}",
            f"  admin token:    {stack.secrets['admin_token']}",
            f"  zones:          zone1 {stack.zone_url(0)}, zone2 {stack.zone_url(1)}",
            f"  NATS:           {stack.nats_url} as user operator (password in {config.var}/dev-secrets.json; "
            f"monitoring http://127.0.0.1:{config.nats_monitor_port}/jsz)",
            f"  MongoDB:        {stack.mongodb_url.split('@')[-1]}",
            f"  examples:       {', '.join(loaded) or 'not loaded'}",
            f"  CLI settings:   {cli}",
            "Try:  .venv/bin/oneenv create tomcat --watch      (Ctrl-C here stops everything)",
            "",
        ]
        sys.stdout.write("\n".join(banner) + "\n")
        sys.stdout.flush()
        while not stop.wait(1.0):
            dead = [name for name, proc in stack.procs.items() if not proc.running]
            if dead:
                sys.stdout.write(f"stack: {', '.join(dead)} exited; stopping\n")
                return 1
        return 0
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
        sys.stderr.write(f"stack: {exc}\n")
        return 1
    finally:
        sys.stdout.write("stack: stopping…\n")
        stack.stop()
        sys.stdout.write("stack: stopped\n")


if __name__ == "__main__":
    raise SystemExit(main())
