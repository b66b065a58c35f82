"""The sandbox's first process: takes batches from the host and runs each sample in a fresh process.

Runs as PID 1 of a gVisor container (so programs cannot kill it with a signal) and marks itself
non-dumpable (so programs of the same uid cannot read its memory or ptrace it). Fresh processes
come from the zygote (``zygote.py``), a warm fork server started at boot that never sees this
process's key. For each sample: a forked child runs ``candidate.run`` in a new session with
rlimits and an empty scratch directory; its output is pumped with size caps; it is killed at the
wall-clock backstop; then every process but the zygote is killed and the zygote's channels must
be quiet (nothing injected, nothing forged), or the sandbox reports an error and is discarded.
When every program of the batch is gone, a child runs ``checker.run`` to judge the records.
Replies to the host are authenticated frames on stdout.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import protocol  # noqa: E402
from hardening import make_unreachable  # noqa: E402

SCRATCH_ROOT = "/tmp"
SHM = "/dev/shm"
READ_CHUNK = 65536
EXIT_GRACE_S = 0.2


def child_env(scratch: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap, self.data, self.total = cap, bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class ZygoteBroken(Exception):
    """The fork server died, answered out of turn, or its channels carry bytes nobody should have sent."""


class Zygote:
    """The supervisor's end of the fork server: one request, one forked child, at a time."""

    def __init__(self) -> None:
        request_read, request_write = os.pipe()
        self._request_probe = os.dup(request_read)  # to see bytes waiting in the zygote's request pipe
        self.replies, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.join(HERE, "zygote.py"), str(request_read), str(theirs.fileno())],
            pass_fds=(request_read, theirs.fileno()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            cwd=SCRATCH_ROOT, env=child_env(SCRATCH_ROOT))
        os.close(request_read)
        theirs.close()
        self.requests = os.fdopen(request_write, "wb")
        self.pid = self.process.pid

    def run(self, kind: str, job: dict[str, Any], limits: dict[str, Any], cpu_time_s: float, wall_time_s: float,
            caps: tuple[int, int, int]) -> dict[str, Any]:
        """Fork one child for ``kind`` ("candidate" or "checker"); return its captured streams and fate."""
        scratch = fresh_scratch()
        nonce = secrets.token_hex(8)
        started_at = time.monotonic()
        try:
            self.requests.write(protocol.pack({"nonce": nonce, "kind": kind, "job": job, "limits": limits,
                                               "cpu_time_s": cpu_time_s, "scratch": scratch,
                                               "env": child_env(scratch)}))
            self.requests.flush()
        except OSError as exc:
            raise ZygoteBroken(f"cannot reach the zygote: {exc}") from exc
        started, fds = self._receive(nonce, "started", timeout_s=10)
        streams = {fd: Capture(cap) for fd, cap in zip(fds, caps)}
        try:
            killed, exited = self._pump(int(started["pid"]), nonce, streams, started_at + wall_time_s)
        finally:
            for fd in fds:
                os.close(fd)
        stdout, stderr, records = streams.values()
        return {"returncode": os.waitstatus_to_exitcode(int(exited["status"])), "killed_at_wall": killed,
                "cpu_s": float(exited["cpu_s"]), "max_rss_kib": int(exited["max_rss_kib"]),
                "wall_s": round(time.monotonic() - started_at, 4), "stdout": stdout, "stderr": stderr,
                "records": records, "scratch": scratch}

    def _receive(self, nonce: str, event: str, timeout_s: float) -> tuple[dict[str, Any], list[int]]:
        ready, _, _ = select.select([self.replies], [], [], timeout_s)
        if not ready:
            raise ZygoteBroken(f"no {event!r} from the zygote within {timeout_s} s")
        data, fds, _, _ = socket.recv_fds(self.replies, 65536, 3)
        try:
            message = json.loads(data) if data else None
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("nonce") != nonce or message.get("event") != event \
                or len(fds) != (3 if event == "started" else 0):
            for fd in fds:
                os.close(fd)
            raise ZygoteBroken(f"unexpected message from the zygote while waiting for {event!r}: {data[:200]!r}")
        return message, fds

    def _pump(self, pid: int, nonce: str, streams: dict[int, Capture], deadline: float) -> tuple[bool, dict[str, Any]]:
        """Drain the child's pipes until it has exited; kill its session at the deadline.

        Once the child has exited, descendants that still hold its pipes get a short grace
        period and are then left to the leftover sweep, so a daemon cannot stretch the sample.
        """
        open_fds = set(streams)
        killed, exited = False, None
        while exited is None or open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if exited is not None:
                    break
                if killed:
                    raise ZygoteBroken("the child did not exit within 5 s of SIGKILL")
                kill_session(pid)
                killed, deadline, remaining = True, time.monotonic() + 5, 0.05
            watched: list[Any] = sorted(open_fds) + ([self.replies] if exited is None else [])
            readable, _, _ = select.select(watched, [], [], min(remaining, 0.5))
            for ready in readable:
                if ready is self.replies:
                    exited, _ = self._receive(nonce, "exited", timeout_s=0)
                    deadline = min(deadline, time.monotonic() + EXIT_GRACE_S)
                    continue
                chunk = os.read(ready, READ_CHUNK)
                if chunk:
                    streams[ready].feed(chunk)
                else:
                    open_fds.discard(ready)
        assert exited is not None
        return killed, exited

    def check_quiet(self) -> None:
        """Between runs nothing may be pending on either channel, and the zygote must be alive."""
        if self.process.poll() is not None:
            raise ZygoteBroken(f"the zygote exited with {self.process.returncode}")
        pending = array.array("i", [0])
        fcntl.ioctl(self._request_probe, termios.FIONREAD, pending)
        if pending[0]:
            raise ZygoteBroken(f"{pending[0]} unexpected byte(s) in the zygote's request pipe")
        if select.select([self.replies], [], [], 0)[0]:
            raise ZygoteBroken("an unexpected message from the zygote")


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_leftovers(keep: int) -> int:
    """Kill every process but this one and the zygote (the rest are a program's); return how many."""
    found = 0
    for _ in range(100):
        others = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) not in (os.getpid(), keep)]
        if not others:
            return found
        found = max(found, len(others))
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)
        for pid in others:  # orphans are ours to reap; the rest go when their parents die
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return found


def fresh_scratch() -> str:
    path = os.path.join(SCRATCH_ROOT, f"run-{time.monotonic_ns()}")
    os.mkdir(path, 0o700)
    return path


def leftover_files(scratch: str) -> list[str]:
    """Wipe the sample's scratch directory; report anything else written to writable places."""
    shutil.rmtree(scratch, ignore_errors=True)
    found = []
    for root in (SCRATCH_ROOT, SHM):
        if os.path.isdir(root):
            found += [os.path.join(root, name) for name in os.listdir(root)]
    return found


def parse_records(capture: Capture) -> dict[str, Any]:
    """Parse the candidate's record stream: untrusted, so every line is checked before use."""
    parsed: dict[str, Any] = {"state": "no_output", "tests": {}}
    for line in capture.data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind in ("loaded", "missing_entry_point") and parsed["state"] == "no_output":
            parsed["state"] = kind
        elif kind == "program_error" and parsed["state"] == "no_output":
            parsed.update(state="program_error", error=_strings(event.get("error")),
                          traceback=str(event.get("traceback", ""))[:2000])
        elif kind == "test" and isinstance(event.get("name"), str) and isinstance(event.get("calls"), list):
            duration = event.get("duration_s")
            parsed["tests"][event["name"]] = {
                "calls": event["calls"], "outcome": str(event.get("outcome", ""))[:600],
                "duration_s": float(duration) if isinstance(duration, (int, float)) else None}
        elif kind == "end":
            parsed["ended"] = True
    parsed["records_truncated"] = capture.truncated
    return parsed


def _strings(value: Any) -> list[str]:
    return [str(item)[:500] for item in value][:2] if isinstance(value, list) else ["Error", ""]


def run_sample(zygote: Zygote, job: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    limits = job["limits"]
    payload = {"program": sample["program"], "entry_point": job["entry_point"],
               "untrusted_names": job["untrusted_names"], "prelude_names": job.get("prelude_names", []),
               "tests": [{"name": t["name"], "source": t["phase1"]} for t in job["tests"]]}
    run = zygote.run("candidate", payload, limits, limits["cpu_time_s"], limits["wall_time_s"],
                     (limits["output_max_bytes"], limits["output_max_bytes"], limits["record_max_bytes"]))
    leftovers = kill_leftovers(keep=zygote.pid)
    zygote.check_quiet()
    files = leftover_files(run["scratch"])
    records = parse_records(run["records"])
    returncode = run["returncode"]
    cpu_exhausted = returncode in (-signal.SIGXCPU, -signal.SIGKILL) and run["cpu_s"] >= limits["cpu_time_s"] - 0.05
    return {"id": sample["id"], **records, "returncode": returncode,
            "timed_out": run["killed_at_wall"] or cpu_exhausted, "killed_at_wall": run["killed_at_wall"],
            "cpu_s": run["cpu_s"], "wall_s": run["wall_s"], "max_rss_kib": run["max_rss_kib"],
            "stdout": run["stdout"].text(), "stdout_truncated": run["stdout"].truncated,
            "stderr": run["stderr"].text(), "stderr_truncated": run["stderr"].truncated,
            "leftover_processes": leftovers, "leftover_files": files[:20]}


def run_checker(zygote: Zygote, job: dict[str, Any], results: list[dict[str, Any]]) -> str | None:
    """Judge every sample that produced records; returns an error description or None."""
    judged = [r for r in results if r["state"] == "loaded"]
    if not judged:
        return None
    limits = job["limits"]
    payload = {"prelude": job.get("prelude"), "entry_point": job["entry_point"],
               "untrusted_names": job["untrusted_names"],
               "tests": [{"name": t["name"], "source": t["phase2"]} for t in job["tests"]],
               "samples": [{"id": r["id"], "records": r["tests"]} for r in judged]}
    cpu = limits["check_cpu_time_s"] * len(judged)
    run = zygote.run("checker", payload, limits, cpu, cpu * 2 + 5, (64 << 20, 1 << 16, 0))
    kill_leftovers(keep=zygote.pid)
    zygote.check_quiet()
    leftover_files(run["scratch"])
    try:
        verdicts = json.loads(run["stdout"].data)
    except ValueError:
        return f"checker exited with {run['returncode']}: {run['stderr'].text()[-1500:]}"
    for result in judged:
        for name, verdict in verdicts.get(result["id"], {}).items():
            result["tests"][name]["verdict"] = verdict
    return None


def run_batch(zygote: Zygote, job: dict[str, Any]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    recycle = False
    for sample in job["samples"]:
        result = run_sample(zygote, job, sample)
        results.append(result)
        # Anything that could carry state to the next sample ends this sandbox's service.
        if (result["timed_out"] or result["returncode"] < 0 or result["leftover_processes"]
                or result["leftover_files"]):
            recycle = True
            break
    checker_error = run_checker(zygote, job, results)
    for result in results:
        for record in result["tests"].values():
            record.pop("calls", None)
    unrun = [s["id"] for s in job["samples"][len(results):]]
    return {"op": "result", "samples": results, "unrun": unrun, "recycle": recycle, "checker_error": checker_error}


def main() -> None:
    make_unreachable()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    hello = protocol.read_frame(stdin)
    if not hello or hello.get("op") != "hello":
        raise SystemExit("expected a hello frame")
    key = bytes.fromhex(hello["key"])

    def send(message: dict[str, Any]) -> None:
        stdout.write(protocol.pack(message, key))
        stdout.flush()

    zygote = Zygote()
    send({"op": "ready", "kernel": os.uname().release, "python": sys.version.split()[0], "uid": os.getuid()})
    while True:
        message = protocol.read_frame(stdin)
        if message is None or message.get("op") == "exit":
            return
        if message.get("op") != "run":
            send({"op": "error", "message": f"unknown op {message.get('op')!r}"})
            continue
        try:
            send(run_batch(zygote, message))
        except ZygoteBroken as exc:  # this sandbox can no longer be trusted: report and end it
            send({"op": "error", "message": f"sandbox integrity: {exc}"})
            return


if __name__ == "__main__":
    main()
