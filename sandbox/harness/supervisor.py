"""The sandbox's first process: takes batches from the host and runs each sample in a fresh process.

Runs as PID 1 of a gVisor container (so programs cannot kill it with a signal) and marks itself
non-dumpable (so programs of the same uid cannot ptrace it or open its file descriptors through
/proc). For each sample it starts ``candidate.py`` in a new session with rlimits and an empty
scratch directory, pumps its output with size caps, kills it at the wall-clock backstop, then kills
any process left behind and inspects the scratch filesystem. When every program of the batch is
gone it starts ``checker.py`` to judge the records. Replies are authenticated frames on stdout.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import protocol  # noqa: E402

SCRATCH_ROOT = "/tmp"
SHM = "/dev/shm"
PR_SET_DUMPABLE = 4
READ_CHUNK = 65536
EXIT_GRACE_S = 0.2


def make_unreachable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def child_env(scratch: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def limiter(limits: dict[str, Any], cpu_time_s: float) -> Any:
    cpu = max(1, int(cpu_time_s + 0.999))
    memory = limits["memory_mib"] * 1024 * 1024

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mib"] * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


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


def run_process(script: str, payload: bytes, limits: dict[str, Any], cpu_time_s: float, wall_time_s: float,
                caps: tuple[int, int, int]) -> dict[str, Any]:
    """Start one harness process in a fresh scratch directory; return its captured streams and fate."""
    scratch = fresh_scratch()
    record_read, record_write = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.join(HERE, script), str(record_write)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, pass_fds=(record_write,), cwd=scratch, env=child_env(scratch),
        preexec_fn=limiter(limits, cpu_time_s), start_new_session=True)
    os.close(record_write)
    streams = {proc.stdout: Capture(caps[0]), proc.stderr: Capture(caps[1]), record_read: Capture(caps[2])}
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    killed_at_wall, status, usage = pump(proc.pid, streams, started + wall_time_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    os.close(record_read)
    stdout, stderr, records = streams.values()
    return {"returncode": proc.returncode, "killed_at_wall": killed_at_wall,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4), "max_rss_kib": usage.ru_maxrss,
            "wall_s": round(time.monotonic() - started, 4), "stdout": stdout, "stderr": stderr,
            "records": records, "scratch": scratch}


def pump(pid: int, streams: dict[Any, Capture], deadline: float) -> tuple[bool, int, Any]:
    """Drain the process's pipes; kill its session at the deadline; return (killed, status, rusage).

    Once the process itself has exited, descendants that still hold its pipes get a short grace
    period and are then left to the leftover sweep, so a daemon cannot stretch the sample's time.
    """
    selector = selectors.DefaultSelector()
    for stream in streams:
        selector.register(stream, selectors.EVENT_READ)
    killed, exited = False, None
    while True:
        if exited is None:
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited:
                exited = (status, usage)
                deadline = min(deadline, time.monotonic() + EXIT_GRACE_S)
        if not selector.get_map() and exited is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if exited is not None:
                break
            if killed:  # killed five seconds ago: wait for it, whatever still holds the pipes
                _, status, usage = os.wait4(pid, 0)
                exited = (status, usage)
                break
            kill_session(pid)
            killed = True
            deadline = time.monotonic() + 5
            remaining = 0.05
        events = selector.select(timeout=min(remaining, 0.05)) if selector.get_map() else time.sleep(0.005) or []
        for key, _ in events:
            chunk = os.read(key.fd, READ_CHUNK)
            if chunk:
                streams[key.fileobj].feed(chunk)
            else:
                selector.unregister(key.fileobj)
    selector.close()
    return killed, exited[0], exited[1]


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_leftovers() -> int:
    """Kill every process but this one (anything left is a program's); return how many there were."""
    found = 0
    for _ in range(50):
        others = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
        if not others:
            return found
        found = max(found, len(others))
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap(0.02)
    return found


def reap(wait_s: float) -> None:
    end = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > end:
                return
            time.sleep(0.002)


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


def run_sample(job: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    limits = job["limits"]
    payload = json.dumps({"program": sample["program"], "entry_point": job["entry_point"],
                          "untrusted_names": job["untrusted_names"],
                          "prelude_names": job.get("prelude_names", []),
                          "tests": [{"name": t["name"], "source": t["phase1"]} for t in job["tests"]]}).encode()
    run = run_process("candidate.py", payload, limits, limits["cpu_time_s"], limits["wall_time_s"],
                      (limits["output_max_bytes"], limits["output_max_bytes"], limits["record_max_bytes"]))
    leftovers = kill_leftovers()
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


def run_checker(job: dict[str, Any], results: list[dict[str, Any]]) -> str | None:
    """Judge every sample that produced records; returns an error description or None."""
    judged = [r for r in results if r["state"] == "loaded"]
    if not judged:
        return None
    limits = job["limits"]
    payload = json.dumps({"prelude": job.get("prelude"), "entry_point": job["entry_point"],
                          "untrusted_names": job["untrusted_names"],
                          "tests": [{"name": t["name"], "source": t["phase2"]} for t in job["tests"]],
                          "samples": [{"id": r["id"], "records": r["tests"]} for r in judged]}).encode()
    cpu = limits["check_cpu_time_s"] * len(judged)
    run = run_process("checker.py", payload, limits, cpu, cpu * 2 + 5, (64 << 20, 1 << 16, 0))
    kill_leftovers()
    leftover_files(run["scratch"])
    try:
        verdicts = json.loads(run["stdout"].data)
    except ValueError:
        return f"checker exited with {run['returncode']}: {run['stderr'].text()[-1500:]}"
    for result in judged:
        for name, verdict in verdicts.get(result["id"], {}).items():
            result["tests"][name]["verdict"] = verdict
    return None


def run_batch(job: dict[str, Any]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    recycle = False
    for sample in job["samples"]:
        result = run_sample(job, sample)
        results.append(result)
        # Anything that could carry state to the next sample ends this sandbox's service.
        if (result["timed_out"] or result["returncode"] < 0 or result["leftover_processes"]
                or result["leftover_files"]):
            recycle = True
            break
    checker_error = run_checker(job, results)
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

    send({"op": "ready", "kernel": os.uname().release, "python": sys.version.split()[0], "uid": os.getuid()})
    while True:
        message = protocol.read_frame(stdin)
        if message is None or message.get("op") == "exit":
            return
        if message.get("op") == "run":
            send(run_batch(message))
        else:
            send({"op": "error", "message": f"unknown op {message.get('op')!r}"})


if __name__ == "__main__":
    main()
