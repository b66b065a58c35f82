"""Host prerequisites: each a check and an idempotent fix (``sandbox doctor [--fix]``).

Installs the Docker engine, gVisor's ``runsc`` (the 2024 build from Debian trixie: bookworm's
2022 build crashes when programs fork), Redis and debootstrap; registers ``runsc`` in the
daemon's configuration without clobbering other settings; starts dockerd and redis-server when
they are not running and waits until they answer. Commands are argument lists, never shell strings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Step", "steps", "run_doctor"]

DAEMON_JSON = Path("/etc/docker/daemon.json")
TRIXIE_SOURCES = Path("/etc/apt/sources.list.d/sandbox-trixie.sources")
TRIXIE_PIN = Path("/etc/apt/preferences.d/sandbox-trixie")
DOCKERD_LOG = Path("/var/log/sandbox-dockerd.log")
MIN_RUNSC_DATE = 20240101
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Step:
    name: str
    check: Callable[[], str | None]  # None when fine, otherwise what is wrong
    fix: Callable[[], None]
    hint: str


def _run(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=APT_ENV)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-1500:]}")
    return result


def _apt_install(packages: list[str], release: str | None = None) -> None:
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", *(["-t", release] if release else []), *packages])


# -- packages ------------------------------------------------------------------------------------
def _check_packages() -> str | None:
    missing = [tool for tool in ("dockerd", "redis-server", "debootstrap") if shutil.which(tool) is None]
    return f"missing: {', '.join(missing)}" if missing else None


def _fix_packages() -> None:
    _apt_install(["docker.io", "redis-server", "debootstrap"])


# -- gVisor --------------------------------------------------------------------------------------
def runsc_date() -> int | None:
    """The build date of the installed runsc (``0.0~20240729`` gives 20240729)."""
    if shutil.which("runsc") is None:
        return None
    output = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout
    for token in output.replace("~", " ").replace(".", " ").split():
        if token.isdigit() and len(token) == 8:
            return int(token)
    return None


def _check_runsc() -> str | None:
    date = runsc_date()
    if date is None:
        return "runsc is not installed"
    if date < MIN_RUNSC_DATE:
        return f"runsc build {date} is too old (it crashes when programs fork); need {MIN_RUNSC_DATE} or later"
    return None


def _fix_runsc() -> None:
    from sandbox.images import debian_mirror  # the mirror the machine already uses, never a literal

    mirror = debian_mirror("bookworm")
    TRIXIE_SOURCES.write_text(f"Types: deb\nURIs: {mirror}\nSuites: trixie\nComponents: main\n"
                              "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    # Priority 100: nothing else is ever upgraded from trixie; only what we ask for with -t trixie.
    TRIXIE_PIN.write_text("Package: *\nPin: release n=trixie\nPin-Priority: 100\n")
    _apt_install(["runsc"], release="trixie")


# -- docker daemon configuration -----------------------------------------------------------------
WANTED_RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}


def _daemon_config() -> dict[str, Any]:
    return json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.exists() else {}


def _check_daemon_json() -> str | None:
    config = _daemon_config()
    runtimes = config.get("runtimes")
    runsc = runtimes.get("runsc") if isinstance(runtimes, dict) else None
    if runsc != WANTED_RUNSC:
        return f"runsc is not registered as wanted in {DAEMON_JSON}"
    return None


def _fix_daemon_json() -> None:
    config = _daemon_config()
    runtimes = dict(config.get("runtimes") or {})
    runtimes["runsc"] = WANTED_RUNSC
    config["runtimes"] = runtimes
    config.setdefault("bridge", "none")      # sandboxes need no network; keep the host's ranges untouched
    config.setdefault("iptables", False)
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps(config, indent=2) + "\n")
    pid = _dockerd_pid()
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # reloads the runtimes
        time.sleep(1)


# -- dockerd -------------------------------------------------------------------------------------
def _docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def _dockerd_pid() -> int | None:
    pidfile = Path("/var/run/docker.pid")
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (ValueError, ProcessLookupError):
        return None


def _check_dockerd() -> str | None:
    if not _docker_answers():
        return "the Docker engine does not answer"
    info = json.loads(subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True,
                                     text=True).stdout or "{}")
    return None if "runsc" in info else "the Docker engine does not list the runsc runtime"


def _fix_dockerd() -> None:
    if _docker_answers():
        pid = _dockerd_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
        time.sleep(1)
        return
    if _dockerd_pid() is None:
        Path("/var/run/docker.pid").unlink(missing_ok=True)  # stale, from a daemon that was killed
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    _wait_for(_docker_answers, 60, "dockerd did not answer within 60 s; see " + str(DOCKERD_LOG))


# -- redis ---------------------------------------------------------------------------------------
def _redis_answers() -> bool:
    result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, text=True, timeout=10)
    return result.stdout.strip() == "PONG"


def _check_redis() -> str | None:
    return None if shutil.which("redis-cli") and _redis_answers() else "Redis does not answer on 127.0.0.1:6379"


def _fix_redis() -> None:
    data = Path("/var/lib/sandbox-redis")
    data.mkdir(parents=True, exist_ok=True)
    _run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--dir", str(data),
          "--appendonly", "yes", "--save", ""])
    _wait_for(_redis_answers, 30, "redis-server did not answer within 30 s")


def _wait_for(ready: Callable[[], bool], seconds: float, message: str) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(message)


def steps() -> list[Step]:
    return [
        Step("packages", _check_packages, _fix_packages, "apt-get install docker.io redis-server debootstrap"),
        Step("gvisor", _check_runsc, _fix_runsc, "install runsc from Debian trixie (see sandbox/host.py)"),
        Step("daemon.json", _check_daemon_json, _fix_daemon_json, f"register runsc in {DAEMON_JSON}"),
        Step("dockerd", _check_dockerd, _fix_dockerd, "start dockerd and wait for `docker info`"),
        Step("redis", _check_redis, _fix_redis, "redis-server --daemonize yes --bind 127.0.0.1"),
    ]


def run_doctor(fix: bool, say: Callable[[str], None] = print) -> bool:
    """Check (and with ``fix``, repair) every step in order; True when all are fine."""
    healthy = True
    for step in steps():
        problem = step.check()
        if problem and fix:
            say(f"[fixing] {step.name}: {problem}")
            step.fix()
            problem = step.check()
        if problem:
            healthy = False
            say(f"[FAIL] {step.name}: {problem}\n       fix: {step.hint}  (or run `sandbox doctor --fix`)")
        else:
            say(f"[ok]   {step.name}")
    return healthy
