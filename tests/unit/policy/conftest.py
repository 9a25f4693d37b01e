"""Fixtures for the policy engine tests."""

from __future__ import annotations

import pytest
from policy_world import World


@pytest.fixture
def world() -> World:
    """A fresh simulated world of environments that do what the engine decides."""
    return World()
