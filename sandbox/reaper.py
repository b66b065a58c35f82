"""Remove sandbox containers whose owner is gone (a worker killed with SIGKILL runs no ``finally``).

Only containers carrying this service's label are ever touched. An owner is ``host:pid``: on
this host the pid must still be a live process; elsewhere its worker heartbeat must be fresh.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable

import docker
import docker.errors
import psutil

from sandbox.container import OWNER_LABEL, SERVICE_LABEL

__all__ = ["orphans", "reap_orphans", "owner_alive_locally", "remove_own"]

log = logging.getLogger(__name__)


def owner_alive_locally(owner: str) -> bool | None:
    """True/False for an owner on this host; None when the owner lives on another host."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return psutil.pid_exists(int(pid))


def orphans(client: docker.DockerClient, heartbeat_alive: Callable[[str], bool]) -> list[tuple[Any, str]]:
    """Labelled containers whose owner is dead, with that owner."""
    found = []
    for container in client.containers.list(all=True, sparse=True, filters={"label": SERVICE_LABEL}):
        owner = (container.attrs.get("Labels") or {}).get(OWNER_LABEL, "")  # sparse listing: no inspect race
        local = owner_alive_locally(owner)
        if not (local if local is not None else heartbeat_alive(owner)):
            found.append((container, owner))
    return found


def reap_orphans(client: docker.DockerClient, heartbeat_alive: Callable[[str], bool]) -> list[str]:
    """Force-remove labelled containers whose owner is dead; returns their ids.

    Several workers (on one host or many) may reap at once: a container another one is already
    removing (409 Conflict) or has removed (404) is simply skipped, and any other engine error on
    one container is logged and left for the next sweep, never raised."""
    removed = []
    for container, owner in orphans(client, heartbeat_alive):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                log.warning("could not remove orphaned sandbox %s (will retry): %s", container.short_id, exc)
            continue
        removed.append(container.id)
        log.warning("removed sandbox %s left by %s", container.short_id, owner or "an unknown owner")
    return removed


def remove_own(client: docker.DockerClient, owner: str) -> list[str]:
    """Force-remove every labelled container of ``owner`` (a worker leaving: whatever its pool's bookkeeping
    missed, such as a sandbox a background start finished after the pool closed); returns their ids."""
    removed = []
    for container in client.containers.list(all=True, sparse=True, filters={"label": [SERVICE_LABEL,
                                                                                        f"{OWNER_LABEL}={owner}"]}):
        try:
            container.remove(force=True)
        except docker.errors.APIError as exc:  # NotFound included: gone meanwhile
            if getattr(exc, "status_code", None) not in (404, 409):
                log.warning("could not remove sandbox %s at exit: %s", container.short_id, exc)
            continue
        removed.append(container.id)
        log.warning("removed sandbox %s the pool had lost track of", container.short_id)
    return removed
