"""A tiny simulated world for driving the policy engine tick by tick: decisions are applied to the views."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from services.policy.engine import (
    Decision,
    EnvironmentPolicy,
    EnvironmentView,
    PolicyState,
    decide,
)


class World:
    """Environments that do exactly what the engine decides, immediately (one tick = one call)."""

    def __init__(self) -> None:
        self.views: dict[int, EnvironmentView] = {}
        self.policies: dict[int, EnvironmentPolicy] = {}
        self.states: dict[int, PolicyState] = {}
        self.log: list[Decision] = []

    def add(self, view: EnvironmentView, policy: EnvironmentPolicy) -> None:
        self.views[view.envid] = view
        self.policies[view.envid] = policy
        self.states[view.envid] = PolicyState()

    def tick(self, now: datetime, envids: Iterable[int] | None = None) -> list[Decision]:
        decided: list[Decision] = []
        for envid in list(envids if envids is not None else self.views):
            decisions, state = decide(self.views[envid], self.policies[envid], self.states[envid], now)
            # The state goes through its stored form, as it does through MongoDB.
            self.states[envid] = PolicyState.from_dict(state.to_dict())
            for decision in decisions:
                self.apply(decision)
            decided.extend(decisions)
        self.log.extend(decided)
        return decided

    def apply(self, decision: Decision) -> None:
        view = self.views[decision.envid]
        if decision.action == "scaleup":
            view = dataclasses.replace(view, num_vms=view.num_vms + decision.count)
        elif decision.action == "scaledown":
            view = dataclasses.replace(view, num_vms=view.num_vms - decision.count)
        elif decision.action == "recreate":
            assert decision.vm is not None
            remaining = tuple(vm for vm in view.unhealthy if vm != decision.vm)
            counts = {"MISSING": "nummissing", "UNKNOWN": "numunknown", "FAILED": "numfailed"}
            changes = {}
            if decision.vm.state in counts:
                name = counts[decision.vm.state]
                changes[name] = getattr(view, name) - 1
            view = dataclasses.replace(view, unhealthy=remaining, **changes)
        self.views[decision.envid] = view
        for envid, status in decision.status_changes.items():
            target = self.views[envid]
            self.views[envid] = dataclasses.replace(target, policy_status=status)
            for other in self.views.values():
                partners = tuple(
                    dataclasses.replace(p, policy_status=status) if p.envid == envid else p for p in other.partners
                )
                self.views[other.envid] = dataclasses.replace(self.views[other.envid], partners=partners)

    def set(self, envid: int, **changes: object) -> None:
        self.views[envid] = dataclasses.replace(self.views[envid], **changes)  # type: ignore[arg-type]

