"""One sandbox container: the docker SDK boundary (create, attach, start, talk, remove).

``container_settings`` is the single, pure translation of a policy into container settings. A
``Sandbox`` starts the in-container supervisor and exchanges authenticated frames with it over
the attach socket. Every docker, socket and protocol failure leaves this module as a
``SandboxError`` subclass (``raise ... from``), so callers never see a third-party exception.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
import time
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Ulimit

from pydantic import TypeAdapter, ValidationError

from sandbox.errors import (ImageMissing, InfrastructureError, RuntimeUnavailable, SandboxCrashed, SandboxRefused,
                            SandboxTimeout)
from sandbox.harness import protocol
from sandbox.harness.messages import BatchReply, BatchRequest, Failure, Hello, Ready, Refused, to_dict
from sandbox.plan import limits_for
from sandbox.policy import Policy

__all__ = ["container_settings", "cgroup_cpu_s", "Sandbox", "docker_client", "require_runtimes", "owner_id", "SERVICE_LABEL",
           "OWNER_LABEL", "SANDBOX_USER", "SENTRY_MEMORY_MIB"]

log = logging.getLogger(__name__)

SERVICE_LABEL = "io.sandbox-exec.service"
OWNER_LABEL = "io.sandbox-exec.owner"
POLICY_LABEL = "io.sandbox-exec.policy"
# The supervisor and the zygote run as root inside gVisor with only the capabilities that putting
# each sample under a uid of its own needs: SETUID/SETGID (switch), KILL (end a sample's processes),
# CHOWN (hand a scratch directory to a sample and take it back). Every other process drops them.
SANDBOX_USER = "0:0"
TRUSTED_CAPABILITIES = ["SETUID", "SETGID", "KILL", "CHOWN"]
# Charged to the container besides the program: gVisor's own kernel (the Sentry), the supervisor,
# the zygote and the test driver. Each process is held to memory_mib by RLIMIT_AS inside.
SENTRY_MEMORY_MIB = 512
SUPERVISOR = ["python3", "-I", "/opt/harness/supervisor.py"]
SLOTS = 1  # samples one sandbox runs at once
EXEC_SCRATCH_LABEL = "io.sandbox-exec.exec-scratch"
_STREAM_HEADER = struct.Struct(">BxxxI")
_REPLY: TypeAdapter[BatchReply | Failure | Refused] = TypeAdapter(BatchReply | Failure | Refused)
_READY: TypeAdapter[Ready | Failure] = TypeAdapter(Ready | Failure)
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_cpu_s(container_id: str, root: str = CGROUP_ROOT) -> float | None:
    """CPU the host has given a container so far, by its cgroup (v1 ``cpuacct.usage``, v2 ``cpu.stat``
    ``usage_usec``; docker's cgroupfs or systemd layout), or None where this host does not show it (a worker
    in a container of its own). This counts what the host's CPUs ran, where gVisor's figures inside count
    runnable time (see ``sandbox/harness/accounting.py``)."""
    if not container_id:
        return None
    v1 = (f"{root}/cpuacct/docker/{container_id}/cpuacct.usage",
          f"{root}/cpuacct/system.slice/docker-{container_id}.scope/cpuacct.usage",
          f"{root}/cpu,cpuacct/docker/{container_id}/cpuacct.usage",
          f"{root}/cpu,cpuacct/system.slice/docker-{container_id}.scope/cpuacct.usage")
    v2 = (f"{root}/docker/{container_id}/cpu.stat", f"{root}/system.slice/docker-{container_id}.scope/cpu.stat")
    for path in v1:
        try:
            with open(path) as handle:
                return int(handle.read().strip()) / 1e9
        except (OSError, ValueError):
            continue
    for path in v2:
        try:
            with open(path) as handle:
                return next(int(line.split()[1]) for line in handle if line.startswith("usage_usec ")) / 1e6
        except (OSError, ValueError, StopIteration, IndexError):
            continue
    return None


def container_settings(policy: Policy, image: str, labels: dict[str, str], exec_scratch: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: isolation and limits, nothing else. ``exec_scratch``: the
    image's programs are binaries a compile step built, run from the case's own scratch (C, C++, Go, Rust)."""
    memory = f"{policy.memory_mib * SLOTS * 2 + SENTRY_MEMORY_MIB}m"  # each slot: its sample and its driver
    scratch_exec = "exec" if exec_scratch else "noexec"
    scratch = {f"/scratch/{slot}": f"rw,nosuid,nodev,{scratch_exec},size={policy.scratch_mib}m,mode=0711"
               for slot in range(SLOTS)}
    return {
        "image": image,
        "command": SUPERVISOR,
        "runtime": policy.runtime,
        "network_mode": "none",
        "read_only": True,
        "user": SANDBOX_USER,
        "cap_drop": ["ALL"],
        "cap_add": TRUSTED_CAPABILITIES,
        "security_opt": ["no-new-privileges"],
        "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=1m,mode=0700", **scratch},
        "shm_size": f"{policy.shm_mib}m",
        "log_config": {"type": "none"},  # output reaches the host only through the capped attach stream
        "mem_limit": memory,
        "memswap_limit": memory,  # equal to mem_limit: no swap
        "nano_cpus": int(policy.cpus * 1e9),
        "pids_limit": 512 + policy.processes,  # host-side threads of gVisor; programs get RLIMIT_NPROC inside
        "ulimits": [Ulimit(name="nofile", soft=policy.open_files, hard=policy.open_files),
                    Ulimit(name="fsize", soft=policy.file_size_mib << 20, hard=policy.file_size_mib << 20),
                    Ulimit(name="core", soft=0, hard=0)],
        "environment": {},
        "working_dir": "/tmp",
        "hostname": "sandbox",
        "labels": {SERVICE_LABEL: "1", POLICY_LABEL: policy.name, **labels},
        "stdin_open": True,
        "detach": True,
        "auto_remove": False,
    }


_RUNS_BINARIES: dict[str, bool] = {}


def _runs_binaries(client: docker.DockerClient, image: str) -> bool:
    """Whether the image says (label, from its image.toml) that its programs run as built binaries."""
    known = _RUNS_BINARIES.get(image)
    if known is None:
        try:
            labels = client.images.get(image).labels or {}
        except docker.errors.DockerException:
            return False  # creating the container reports the missing image
        known = _RUNS_BINARIES[image] = labels.get(EXEC_SCRATCH_LABEL) == "1"
    return known


class Sandbox:
    """A running sandbox container and its supervisor. Use as a context manager; always removed."""

    def __init__(self, client: docker.DockerClient, policy: Policy, image: str, owner: str) -> None:
        self.policy = policy
        self.image = image
        self.runs = 0
        self._client = client
        self._key = secrets.token_bytes(32)
        self._stderr = bytearray()
        self._pending = bytearray()
        self._container: Any = None
        self._socket: socket.socket | None = None
        self._attach: Any = None
        self.runtime = ""
        self.kernel = ""
        self.batch_cpu_s: float | None = None  # what the host gave the container over the last batch (its cgroup)
        self._start(image, owner)

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self, image: str, owner: str) -> None:
        settings = container_settings(self.policy, image, {OWNER_LABEL: owner}, exec_scratch=_runs_binaries(self._client, image))
        try:
            self._container = self._client.containers.create(**settings)
            raw = self._client.api.attach_socket(self._container.id, params={
                "stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._attach = raw  # keeps docker's wrapper alive; closed together with the socket
            self._socket = raw._sock
            self._container.start()
        except docker.errors.ImageNotFound as exc:
            self.close()
            raise ImageMissing(f"sandbox image {image!r} is not built: run `sandbox images build` (with --language NAME "
                               "for a language other than Python)") from exc
        except docker.errors.APIError as exc:
            self.close()
            if "runtime" in str(exc).lower():
                raise RuntimeUnavailable(f"runtime {self.policy.runtime!r} is not usable: {exc.explanation}"
                                         " (run `sandbox doctor`)") from exc
            raise InfrastructureError(f"docker could not start a sandbox: {exc.explanation or exc}") from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            self.close()
            raise InfrastructureError(f"docker engine unreachable: {exc}") from exc
        except BaseException:  # interrupted (SIGTERM of `sandbox run`): the container must not outlive us
            self.close()
            raise
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        self._send(to_dict(Hello(op="hello", key=self._key.hex(), limits=limits_for(self.policy), slots=SLOTS)))
        ready = self._receive(_READY, deadline=time.monotonic() + 60, max_bytes=1 << 16)
        if not isinstance(ready, Ready):
            raise SandboxCrashed(f"supervisor did not say ready: {ready.message}")
        self.kernel = ready.kernel
        self._container.reload()
        self.runtime = self._container.attrs["HostConfig"].get("Runtime") or "runc"
        if self.runtime != self.policy.runtime:
            raise RuntimeUnavailable(f"sandbox runs under {self.runtime!r}, policy requires {self.policy.runtime!r}")

    def close(self) -> None:
        """Kill and remove the container; safe to call more than once."""
        for stream in (self._socket, self._attach):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._socket = self._attach = None
        if self._container is not None:
            try:
                self._container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                log.warning("could not remove sandbox %s (the reaper will): %s", self._container.short_id, exc)
            self._container = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def id(self) -> str:
        return self._container.id if self._container is not None else ""

    # -- protocol ----------------------------------------------------------------------------
    def run(self, batch: BatchRequest, timeout_s: float, max_reply_bytes: int) -> BatchReply:
        """Send one batch and wait for its result; past ``timeout_s`` the container is killed."""
        self.runs += 1
        before = cgroup_cpu_s(self.id)
        self.batch_cpu_s = None
        self._send(to_dict(batch))
        reply = self._receive(_REPLY, deadline=time.monotonic() + timeout_s, max_bytes=max_reply_bytes)
        after = cgroup_cpu_s(self.id)
        if before is not None and after is not None:
            self.batch_cpu_s = max(0.0, after - before)
        if isinstance(reply, Refused):
            raise SandboxRefused(f"the sandbox refused the request before running any of it: {reply.message}")
        if isinstance(reply, Failure):
            raise self._crashed(f"the supervisor reported: {reply.message}")
        return reply

    def _send(self, message: dict[str, Any]) -> None:
        assert self._socket is not None
        data = protocol.pack(message)
        if len(data) - protocol.HEADER.size > protocol.MAX_FRAME_BYTES:  # the supervisor could not read it
            raise SandboxRefused(f"request refused: {len(data)} bytes is more than the {protocol.MAX_FRAME_BYTES} a "
                                 "frame may carry; nothing was sent, no program ran")
        try:
            self._socket.sendall(data)
        except OSError as exc:
            raise self._crashed(f"could not write to the sandbox: {exc}") from exc

    def _receive(self, model: TypeAdapter[Any], deadline: float, max_bytes: int) -> Any:
        """One authenticated frame from the supervisor, bounded and validated against ``model``."""
        header = self._read_stdout(protocol.HEADER.size, deadline)
        try:
            length = protocol.frame_length(header)
            if length > max_bytes:
                raise protocol.FrameError(f"a reply of {length} bytes exceeds the {max_bytes} this batch allows")
            body = protocol.authenticated(self._read_stdout(length, deadline), self._key)
            return model.validate_json(body, strict=True)
        except (protocol.FrameError, ValidationError) as exc:
            raise self._crashed(f"sandbox broke protocol: {str(exc)[:500]}") from exc

    def _read_stdout(self, size: int, deadline: float) -> bytes:
        """Demultiplex docker's attach stream until ``size`` bytes of stdout are buffered."""
        while len(self._pending) < size:
            kind, payload = self._read_stream_frame(deadline)
            if kind == 1:
                self._pending += payload
            else:
                self._stderr = (self._stderr + payload)[-8192:]
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def _read_stream_frame(self, deadline: float) -> tuple[int, bytes]:
        header = self._recv_exact(_STREAM_HEADER.size, deadline)
        kind, length = _STREAM_HEADER.unpack(header)
        return kind, self._recv_exact(length, deadline)

    def _recv_exact(self, size: int, deadline: float) -> bytes:
        assert self._socket is not None
        chunks, remaining = [], size
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxTimeout("sandbox did not answer before the host's deadline")
            self._socket.settimeout(left)
            try:
                chunk = self._socket.recv(min(remaining, 1 << 20))
            except socket.timeout:
                continue
            except OSError as exc:
                raise self._crashed(f"lost the sandbox connection: {exc}") from exc
            if not chunk:
                raise self._crashed("sandbox exited")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _crashed(self, message: str) -> SandboxCrashed:
        state: dict[str, Any] = {}
        try:
            self._container.reload()
            for _ in range(20):  # the exit may not be recorded yet
                state = self._container.attrs.get("State", {})
                if not state.get("Running"):
                    break
                time.sleep(0.05)
                self._container.reload()
        except (docker.errors.APIError, requests.exceptions.RequestException, AttributeError):
            pass
        oom = bool(state.get("OOMKilled"))
        stderr = self._stderr.decode("utf-8", "replace")[-600:]
        detail = f"{message} (exit code {state.get('ExitCode')}, oom_killed={oom})"
        if stderr.strip():
            detail += f"; supervisor stderr: {stderr.strip()}"
        return SandboxCrashed(detail, oom_killed=oom, exit_code=state.get("ExitCode"))


def docker_client() -> docker.DockerClient:
    """A client for the local engine; an unreachable engine is an ``InfrastructureError``."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise InfrastructureError(f"the Docker engine is not reachable ({exc}); run `sandbox doctor --fix`") from exc


def require_runtimes(client: docker.DockerClient, runtimes: set[str]) -> None:
    """Fail with one clear line if the engine does not know a runtime the policies use (gVisor's ``runsc``)."""
    try:
        known = set((client.info().get("Runtimes") or {}).keys()) | {"runc"}
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        raise InfrastructureError(f"the Docker engine did not answer `info` ({exc}); run `sandbox doctor --fix`") from exc
    missing = sorted(runtimes - known)
    if missing:
        raise RuntimeUnavailable(f"the Docker engine has no runtime {', '.join(missing)} (gVisor is not registered): "
                                 "run `sandbox doctor --fix`")


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
