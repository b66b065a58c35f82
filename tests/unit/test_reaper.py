"""The orphan sweep tolerates other workers sweeping at the same time (pure logic, a stand-in engine)."""

from __future__ import annotations

from typing import Any

import docker.errors
import requests

from sandbox.container import OWNER_LABEL
from sandbox.reaper import reap_orphans


class FakeContainer:
    def __init__(self, cid: str, error: Exception | None) -> None:
        self.id, self.short_id, self.error = cid, cid[:12], error
        self.attrs = {"Labels": {OWNER_LABEL: "elsewhere:1"}}
        self.removed = False

    def remove(self, force: bool) -> None:
        if self.error is not None:
            raise self.error
        self.removed = True


class FakeEngine:
    def __init__(self, containers: list[FakeContainer]) -> None:
        self.containers = self
        self._containers = containers

    def list(self, **_: Any) -> list[FakeContainer]:
        return self._containers


def api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response)


def test_containers_another_worker_is_removing_are_skipped_not_fatal() -> None:
    containers = [FakeContainer("a" * 64, api_error(409)), FakeContainer("b" * 64, docker.errors.NotFound("gone")),
                  FakeContainer("c" * 64, api_error(500)), FakeContainer("d" * 64, None)]
    removed = reap_orphans(FakeEngine(containers), lambda owner: False)  # type: ignore[arg-type]
    assert removed == ["d" * 64]  # 409 and 404: someone else's; 500: left for the next sweep; no exception


def test_live_owners_keep_their_sandboxes() -> None:
    containers = [FakeContainer("e" * 64, None)]
    assert reap_orphans(FakeEngine(containers), lambda owner: True) == []  # type: ignore[arg-type]
    assert not containers[0].removed
