"""The store's id sequences on the real MongoDB-wire server (or MONGODB_URL)."""

from __future__ import annotations

import asyncio

from libs.common.db import Store


async def test_concurrent_first_allocations_of_a_sequence_all_get_distinct_ids(store: Store) -> None:
    # Six creates arriving together on a fresh database race to create the envid counter; every one gets an id.
    for sequence in ("race-a", "race-b", "race-c"):
        ids = await asyncio.gather(*(store.next_id(sequence) for _ in range(6)))
        assert len(set(ids)) == 6 and min(ids) >= 1, ids
        later = await store.next_id(sequence)
        assert later > max(ids), "never reused"
