"""The container image's recipe (no docker engine here, so its shape is checked, not built).

One slim image, non-root, the package installed without the dev/test/lint extras (secantusdb is GPL and dev-only),
an entrypoint that picks the service by name, no HEALTHCHECK (Kubernetes probes do that), and a .dockerignore
that keeps the build context to what the image needs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def stages() -> list[list[str]]:
    out: list[list[str]] = []
    for line in INSTRUCTIONS:
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_multi_stage_from_python_311_slim() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in INSTRUCTIONS
    froms = [line for line in INSTRUCTIONS if line.upper().startswith("FROM ")]
    assert len(froms) >= 2 and all("${PYTHON_IMAGE}" in line for line in froms)


def test_runs_as_an_unprivileged_user() -> None:
    final = stages()[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert user.isdigit() and int(user) >= 1000  # numeric, so Kubernetes runAsNonRoot can verify it


def test_installs_the_package_without_dev_extras() -> None:
    installs = [cmd.strip() for line in INSTRUCTIONS for cmd in line.split("&&") if "pip install" in cmd]
    assert any(re.fullmatch(r"\S*pip install \.", cmd) for cmd in installs), installs
    for cmd in installs:
        args = cmd.split("pip install", 1)[1]
        assert "[" not in args, f"extras installed: {cmd}"
        for forbidden in ("secantusdb", "dev", "test", "lint", "-e", "--editable"):
            assert forbidden not in args.split(), cmd
    assert "secantusdb" in DOCKERFILE  # the build fails if it ever arrives as a runtime dependency
    assert "pip show secantusdb" in DOCKERFILE


def test_entrypoint_selects_the_service_and_no_healthcheck() -> None:
    assert not any(line.upper().startswith("HEALTHCHECK") for line in INSTRUCTIONS)
    assert 'ENTRYPOINT ["/usr/local/bin/carina-entrypoint"]' in INSTRUCTIONS
    entrypoint = REPO / "deploy/docker/entrypoint.sh"
    for service in ("envmgr", "scheduler", "provisioner", "policy", "gateway", "callback"):
        assert service in entrypoint.read_text()
    result = subprocess.run(["sh", str(entrypoint), "billing"], capture_output=True, text=True, timeout=10,
                            check=False)
    assert result.returncode == 2 and "unknown service 'billing'" in result.stderr
    result = subprocess.run(["sh", "-n", str(entrypoint)], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"  # ignore everything, then allow what the image needs
    for needed in ("!pyproject.toml", "!libs/", "!services/", "!deploy/docker/entrypoint.sh"):
        assert needed in lines
    assert "libs/devstack/" in lines  # the dev stack (and its GPL MongoDB-wire server) stays out
