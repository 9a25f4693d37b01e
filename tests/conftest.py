"""Fixtures shared by the whole suite: real servers on free ports in temporary directories.

Integration tests get a real nats-server with JetStream and a real MongoDB wire-protocol server (or the MongoDB
named by `MONGODB_URL`), each started as a subprocess and stopped — SIGTERM, then SIGKILL — at the end, so no
process is left behind. Servers are session-scoped for speed; each test gets its own database name so tests do not
see each other's documents. Streams are shared; tests use distinct ids.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from libs.common.bus import Bus
from libs.common.db import Store
from libs.devstack.procs import Proc, free_port, mongo_proc, nats_proc


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A nats-server with JetStream; `.url` is set on the Proc."""
    port = free_port()
    proc = nats_proc(port, str(tmp_path_factory.mktemp("nats")))
    proc.start()
    proc.url = f"nats://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URL: `MONGODB_URL` if set, else an embedded MongoDB-wire server."""
    if os.environ.get("MONGODB_URL"):
        yield os.environ["MONGODB_URL"]
        return
    port = free_port()
    proc = mongo_proc(port, str(tmp_path_factory.mktemp("mongo")))
    proc.start()
    yield f"mongodb://127.0.0.1:{port}/"
    proc.stop()


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(mongo_url: str, db_name: str) -> AsyncIterator[Store]:
    st = Store(mongo_url, db_name)
    await st.connect(timeout=10)
    await st.ensure_indexes()
    yield st
    await st.client.drop_database(db_name)
    await st.close()


@pytest.fixture
async def bus(nats_server: Proc) -> AsyncIterator[Bus]:
    b = Bus(nats_server.url, name="test")  # type: ignore[attr-defined]
    await b.connect(timeout=10)
    await b.declare_streams()
    yield b
    await b.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
