"""Fixtures of the gateway tests (see gateway_helpers for how the gateway under test runs)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_helpers import TOKEN_SECRET, Accounts, Collector, ServerThread, make_settings

from libs.common.auth import new_nonce
from libs.common.bus import Bus
from libs.common.db import Store
from libs.common.settings import CommonSettings
from libs.devstack.procs import Proc
from services.gateway.accounts import set_service_token


@pytest.fixture
def common(nats_server: Proc, mongo_url: str, db_name: str) -> CommonSettings:
    return CommonSettings(nats_url=nats_server.url, mongodb_url=mongo_url, mongodb_db=db_name,  # type: ignore[attr-defined]
                          token_secret=TOKEN_SECRET, dev_mode=False)


@pytest.fixture
async def gateway(common: CommonSettings, store: Store) -> AsyncIterator[ServerThread]:
    """The running gateway; ids start at a random offset so that NATS message ids never repeat across tests."""
    base = random.randrange(10_000, 10_000_000)
    await store["counters"].insert_many([{"_id": "envid", "seq": base}, {"_id": "jobid", "seq": base * 2}])
    server = ServerThread(common, make_settings()).start()
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture
async def accounts(store: Store) -> Accounts:
    acc = Accounts(a="crn_alpha-" + new_nonce(), b="crn_beta-" + new_nonce())
    await set_service_token(store, acc.service_a, acc.a)
    await set_service_token(store, acc.service_b, acc.b)
    return acc


@pytest.fixture
async def client(gateway: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        yield http


@pytest.fixture
async def collector(bus: Bus) -> AsyncIterator[Collector]:
    col = Collector(bus)
    yield col
    await col.close()


