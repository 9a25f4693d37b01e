"""Wake-ups for masters' long polls: one shared subscription to the environments' progress events.

A master holds `GET /guest/v1/notifications?wait=N` open until envmgr appends an add/delete for it. envmgr says so
in the environment's progress event (`events.env.<envid>`, field `notify_seq`). Subscribing per request would cost a
subscribe and an unsubscribe per poll, and — since an event may be published between the request's read of the
environment and its subscription — a second read of MongoDB per poll to close that gap. Instead the gateway keeps a
single `events.env.*` subscription for its lifetime and remembers the latest `notify_seq` seen per environment: a
poll registers itself, then compares what it read with what was seen, so an event that slipped in before the
registration is still noticed, without reading MongoDB again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger("carina.gateway.notify")

REMEMBERED_ENVS = 100_000  # latest notify_seq per environment, least recently changed forgotten first


class NotifyWatch:
    def __init__(self) -> None:
        self._latest: OrderedDict[int, int] = OrderedDict()
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._subscription: Any = None
        self._starting = asyncio.Lock()

    async def ensure_started(self, nc: Any) -> None:
        """Subscribe once (the client re-subscribes by itself after a reconnect)."""
        if self._subscription is not None:
            return
        async with self._starting:
            if self._subscription is None:
                self._subscription = await nc.subscribe("events.env.*", cb=self._on_event)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_event(self, msg: Any) -> None:
        try:
            envid = int(msg.subject.rsplit(".", 1)[1])
            seq = json.loads(msg.data).get("notify_seq")
        except (ValueError, TypeError, AttributeError, IndexError):
            return
        if not isinstance(seq, int) or self._latest.get(envid) == seq:
            return  # most progress events do not touch the notifications
        self._latest[envid] = seq
        self._latest.move_to_end(envid)
        if len(self._latest) > REMEMBERED_ENVS:
            self._latest.popitem(last=False)
        for waiter in self._waiters.get(envid, ()):
            waiter.set()

    def wake_all(self) -> None:
        """End every wait now (the gateway is stopping: held polls are answered instead of cut off)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def seen_after(self, envid: int, known_seq: int) -> bool:
        """Whether an event newer than what the caller read has been seen (numbers only grow for one master)."""
        latest = self._latest.get(envid)
        return latest is not None and latest > known_seq

    @contextlib.contextmanager
    def waiter(self, envid: int) -> Any:
        """An event set whenever `envid`'s notify_seq changes, for the duration of the block."""
        event = asyncio.Event()
        self._waiters.setdefault(envid, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(envid)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[envid]
