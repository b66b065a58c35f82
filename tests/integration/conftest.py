from __future__ import annotations

from pathlib import Path
from typing import Iterator

import docker
import pytest

from sandbox.container import SERVICE_LABEL, docker_client, owner_id
from sandbox.imagedef import load_definition
from sandbox.images import build_image
from sandbox.models import JobSpec
from sandbox.plan import Planner
from sandbox.policy import Policy
from sandbox.pool import SandboxPool
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT
from tests.integration.services import RedisServer

TEST_OWNER = owner_id()  # host:pid, so that a worker on this engine sees a live owner, not an orphan


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    return docker_client()  # raises (fails the test) when the engine is missing: never a silent skip


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> str:
    return build_image(client, load_definition(REPO_ROOT / "images"), say=lambda _: None)


@pytest.fixture(scope="module")
def runner(client: docker.DockerClient, image: str, policies: dict[str, Policy]) -> Iterator[Runner]:
    pool = SandboxPool(client, TEST_OWNER, warm=True)
    yield Runner(pool, Planner(policies, REPO_ROOT / "images"), backoff_s=0.1)
    pool.close()
    leftovers = client.containers.list(all=True, filters={"label": [SERVICE_LABEL, f"io.sandbox-exec.owner={TEST_OWNER}"]})
    for container in leftovers:
        container.remove(force=True)
    assert not leftovers, f"sandboxes left behind: {[c.short_id for c in leftovers]}"


ADD_CHECK = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(2, 2) == 4
    assert candidate(-1, 1) == 0
"""


def job(program: str, check: str, entry_point: str = "f", policy: str = "humaneval", **fields: object) -> JobSpec:
    return JobSpec(program=program, check=check, entry_point=entry_point, policy=policy, **fields)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis on loopback for one test."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


LANGUAGE_IMAGES = ("gcc", "java", "node", "go", "rust")


@pytest.fixture(scope="session")
def language_images(client: docker.DockerClient, image: str) -> dict[str, str]:
    """Every language's image, built side by side (debootstrap waits on the network more than the CPU);
    each is rebuilt only when its definition or the harness changed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(LANGUAGE_IMAGES)) as builders:
        futures = {name: builders.submit(build_image, client, load_definition(REPO_ROOT / "images", name), lambda _: None)
                   for name in LANGUAGE_IMAGES}
        return {name: future.result() for name, future in futures.items()}
