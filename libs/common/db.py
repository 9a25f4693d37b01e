"""The document store: PyMongo's async client, the collections, their indexes, ids and compare-and-set.

MongoDB is the source of truth (DESIGN.md §2); each collection has one owning service that writes it:

| collection   | owner                | what                                                              |
|--------------|----------------------|-------------------------------------------------------------------|
| counters     | any (atomic $inc)    | integer id sequences: envid, jobid, reqid                         |
| configs      | gateway              | uploaded service configurations (versioned) and `.vm` templates   |
| accounts     | gateway              | API accounts (token hashes), one per service, plus the admin      |
| envs         | envmgr (gateway inserts the accepted request) | environments: spec, status, current operation |
| slots        | envmgr (callback sets `guest.*`) | one document per VM slot incarnation                  |
| jobs         | envmgr               | the record of each operation                                      |
| requests     | scheduler            | the capacity ledger                                               |
| policy_state | policy               | counters and last evaluations per environment                     |
| decisions    | policy               | the audit of policy decisions                                     |
| metrics      | callback             | latest guest-pushed metrics per VM                                |
| provision_claims | provisioner      | who is creating a slot's VM right now (expires on its own)        |

Writes of shared documents use compare-and-set on a `version` field (`cas_update`): a writer that lost the race
reloads and retries, so concurrent replicas never overwrite each other's progress. We never rely on multi-document
transactions for correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent
from pymongo.write_concern import WriteConcern

from libs.common import metrics
from libs.common.errors import ConflictError, NotFoundError, StartupError, TransientError

log = logging.getLogger("carina.db")

Doc = dict[str, Any]

def slot_ip(slot: Doc) -> str | None:
    """A VM slot's address as Carina uses it: what the guest reported, else what the zone showed."""
    guest = slot.get("guest") or {}
    return guest.get("ip") or slot.get("ip")


INDEXES: dict[str, list[IndexModel]] = {
    "configs": [IndexModel([("service", ASCENDING), ("kind", ASCENDING), ("name", ASCENDING)], unique=True)],
    "accounts": [IndexModel([("token_hash", ASCENDING)], unique=True), IndexModel([("service", ASCENDING)])],
    "envs": [
        IndexModel([("service", ASCENDING), ("name", ASCENDING)]),
        IndexModel([("service", ASCENDING), ("request_id", ASCENDING)], unique=True,
                   partialFilterExpression={"request_id": {"$type": "string"}}),
        IndexModel([("active", ASCENDING)]),
        IndexModel([("groupid", ASCENDING)]),
        # envmgr's resync: operations in flight and environments just READY, without reading the removed ones.
        IndexModel([("op.type", ASCENDING)]),
        IndexModel([("policy_status", ASCENDING)]),
    ],
    "slots": [
        IndexModel([("envid", ASCENDING), ("role", ASCENDING), ("index", ASCENDING), ("incarnation", ASCENDING)],
                   unique=True),
        IndexModel([("zone", ASCENDING), ("one_id", ASCENDING)]),
        IndexModel([("service", ASCENDING)]),
        IndexModel([("live", ASCENDING)]),
        # The hot queries name their most selective field first (the embedded wire server plans by the first
        # indexed field; MongoDB itself does not care): a guest's VM id, a booting or terminating VM. None of them
        # filters on `gone`, which would read the whole history of removed VMs.
        IndexModel([("one_id", ASCENDING)]),
        IndexModel([("lifecycle", ASCENDING)]),
        IndexModel([("terminating", ASCENDING)]),
    ],
    "jobs": [IndexModel([("envid", ASCENDING)]), IndexModel([("service", ASCENDING), ("_id", DESCENDING)])],
    "requests": [IndexModel([("service", ASCENDING), ("envid", ASCENDING)]), IndexModel([("status", ASCENDING)])],
    "policy_state": [],
    "decisions": [IndexModel([("envid", ASCENDING), ("at", DESCENDING)])],
    "metrics": [IndexModel([("envid", ASCENDING)])],
    # A claim whose holder died before releasing it is removed by MongoDB's TTL monitor once expired.
    "provision_claims": [IndexModel([("until", ASCENDING)], expireAfterSeconds=0)],
}


class _CommandCounter(CommandListener):
    """Counts round trips per collection and command: the machine-independent cost of an operation."""

    def started(self, event: CommandStartedEvent) -> None:
        target = event.command.get("collection" if event.command_name == "getMore" else event.command_name)
        collection = target if isinstance(target, str) else "-"
        metrics.DB_COMMANDS_TOTAL.labels(collection=collection, command=event.command_name).inc()

    def succeeded(self, event: CommandSucceededEvent) -> None:
        metrics.DB_COMMAND_SECONDS.labels(command=event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: CommandFailedEvent) -> None:
        metrics.DB_COMMAND_SECONDS.labels(command=event.command_name).observe(event.duration_micros / 1e6)


class Store:
    """Access to Carina's MongoDB database.

    Args:
        url: MongoDB connection string (a real MongoDB, or the MongoDB-wire server of the dev stack).
        db_name: database name.
    """

    def __init__(self, url: str, db_name: str = "carina") -> None:
        self.url = url
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000,
            retryWrites=True,
            tz_aware=True,
            event_listeners=[_CommandCounter()],
        )
        # Majority + journal: an acknowledged write survives a primary failover (RELIABILITY.md B2).
        self.db: AsyncDatabase[Doc] = self.client.get_database(
            db_name, write_concern=WriteConcern(w="majority", j=True, wtimeout=10000)
        )

    def __getitem__(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    @property
    def envs(self) -> AsyncCollection[Doc]:
        return self.db["envs"]

    @property
    def slots(self) -> AsyncCollection[Doc]:
        return self.db["slots"]

    @property
    def jobs(self) -> AsyncCollection[Doc]:
        return self.db["jobs"]

    @property
    def configs(self) -> AsyncCollection[Doc]:
        return self.db["configs"]

    async def connect(self, timeout: float = 30.0) -> None:
        """Ping until MongoDB answers or `timeout` passes (then `StartupError` with a clear message)."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.client.admin.command("ping")
                log.info("connected to MongoDB", extra={"attempts": attempt})
                return
            except PyMongoError as exc:
                if time.monotonic() >= deadline:
                    where = self.url.split("@")[-1]  # the URL may carry credentials
                    raise StartupError(
                        f"cannot reach MongoDB at {where} after {attempt} attempts in {timeout:.0f} s "
                        f"({type(exc).__name__})"
                    ) from None
                await asyncio.sleep(0.5)

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout=2)
            return True
        except Exception:  # noqa: BLE001 - readiness only needs yes or no
            return False

    async def ensure_indexes(self) -> None:
        """Create the indexes every service relies on, and fill in fields older documents lack (idempotent)."""
        for name, models in INDEXES.items():
            if models:
                await self.db[name].create_indexes(models)
        # Slots retired before `terminating` existed: still being terminated, so still watched.
        await self.slots.update_many({"live": False, "gone": {"$ne": True}, "terminating": {"$exists": False}},
                                     {"$set": {"terminating": True}})

    async def next_id(self, sequence: str) -> int:
        """Allocate the next integer of a sequence (envid, jobid, reqid): atomic, never reused (gaps are possible).

        The first allocations of a sequence may race to create its counter: the loser gets a duplicate-key error
        (MongoDB) or no document (the embedded wire server) and simply allocates again.
        """
        for _ in range(5):
            try:
                doc = await self.db["counters"].find_one_and_update(
                    {"_id": sequence}, {"$inc": {"seq": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                continue
            if doc is not None:
                return int(doc["seq"])
        raise TransientError(f"could not allocate the next {sequence}; try again")

    async def cas_update(
        self,
        collection: str,
        doc_id: Any,
        version: int,
        set_fields: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Apply `$set` (and `extra` operators) only if the document is still at `version`; bump the version.

        Returns:
            True if applied, False if another writer got there first (reload and retry).
        """
        update: dict[str, Any] = {"$set": dict(set_fields), "$inc": {"version": 1}}
        for op, fields in (extra or {}).items():
            if op == "$inc":
                update["$inc"].update(fields)
            else:
                update[op] = fields
        result = await self.db[collection].update_one({"_id": doc_id, "version": version}, update)
        return result.matched_count == 1

    async def mutate(
        self,
        collection: str,
        doc_id: Any,
        change: Callable[[Doc], Mapping[str, Any] | None | Awaitable[Mapping[str, Any] | None]],
        attempts: int = 20,
    ) -> Doc:
        """Load, compute a change, compare-and-set; on conflict reload and recompute.

        Args:
            collection: collection name.
            doc_id: the document's `_id`.
            change: given the current document, returns the fields to `$set` (None: nothing to do).
            attempts: conflicts tolerated before giving up with `ConflictError` (redelivery retries later).

        Returns:
            The document as written (or as found, if there was nothing to change).
        """
        for _ in range(attempts):
            doc = await self.db[collection].find_one({"_id": doc_id})
            if doc is None:
                raise NotFoundError(f"{collection} {doc_id} does not exist")
            fields = change(doc)
            if asyncio.iscoroutine(fields) or isinstance(fields, Awaitable):
                fields = await fields
            if not fields:
                return doc
            if await self.cas_update(collection, doc_id, int(doc.get("version", 0)), fields):
                doc.update(fields)
                doc["version"] = int(doc.get("version", 0)) + 1
                return doc
        raise ConflictError(f"{collection} {doc_id}: too many concurrent updates")

    async def close(self) -> None:
        await self.client.close()
