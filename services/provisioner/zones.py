"""Zone clients per (service, endpoint), built from the service's stored configuration and its credentials.

Credentials never travel in messages: the provisioner reads them from the service's configuration document when
it needs a client, and rebuilds the client when that configuration's revision changes. A client is re-checked
against the stored revision at most every `REVALIDATE_AFTER` seconds, not at every call: every provisioning and
every monitoring poll asked MongoDB, and a changed endpoint or credential still takes effect within seconds.
"""

from __future__ import annotations

import time

from libs.common.db import Store
from libs.common.errors import PermanentError
from libs.common.operations import CONFIG_ID
from services.provisioner.one_client import ZoneClient

REVALIDATE_AFTER = 5.0  # seconds a zone client is used before its configuration revision is checked again


class ZoneRegistry:
    def __init__(self, store: Store, concurrency: int, timeout: float) -> None:
        self.store = store
        self.concurrency = concurrency
        self.timeout = timeout
        self._clients: dict[tuple[str, str], tuple[int, str, ZoneClient]] = {}
        self._checked_at: dict[tuple[str, str], float] = {}

    async def client(self, service: str, endpoint: str) -> ZoneClient:
        """The client of `endpoint` as `service` configured it."""
        key = (service, endpoint)
        cached = self._clients.get(key)
        if cached is not None and time.monotonic() - self._checked_at.get(key, 0.0) < REVALIDATE_AFTER:
            return cached[2]
        doc = await self.store.configs.find_one({"_id": CONFIG_ID.format(service=service)},
                                                {"revision": 1, f"doc.endpoints.{endpoint}": 1})
        ep = ((doc or {}).get("doc") or {}).get("endpoints", {}).get(endpoint)
        if doc is None or ep is None:
            raise PermanentError(f"service '{service}' has no endpoint '{endpoint}' in its configuration")
        revision = int(doc.get("revision", 0))
        self._checked_at[key] = time.monotonic()
        if cached is not None and cached[0] == revision and cached[1] == ep["url"]:
            return cached[2]
        if cached is not None:
            cached[2].close()
        client = ZoneClient(ep["url"], ep["credentials"], self.concurrency, self.timeout)
        self._clients[key] = (revision, ep["url"], client)
        return client

    def close(self) -> None:
        for _, _, client in self._clients.values():
            client.close()
        self._clients.clear()
