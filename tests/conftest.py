"""Shared fixtures. Integration tests need the real engine, gVisor and Redis: they fail, never skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.policy import Policy, load_all_policies
from sandbox.settings import REPO_ROOT


@pytest.fixture(scope="session")
def policies() -> dict[str, Policy]:
    return load_all_policies(REPO_ROOT / "policies")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
