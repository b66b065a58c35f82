"""Fork server inside the sandbox (stdlib only): a warm interpreter that forks one child per run.

Starting ``python3`` and importing the harness costs ~40 ms of CPU per process under gVisor; a
fork of this warm process costs ~12 ms. The zygote is started fresh by the supervisor (it never
holds the supervisor's key), is non-dumpable (programs cannot read or write its memory or
ptrace it), and never executes code from a request itself: it only forks. Each child drops the
zygote's channels, sets its limits and runs ``candidate.run`` (or ``checker.run``).

Requests arrive as frames on a pipe; replies leave on a SOCK_SEQPACKET socket, one message each:
``started`` (with the child's stdout, stderr and record pipes attached) and ``exited``.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import startup  # noqa: E402

startup.like_site()

import candidate  # noqa: E402
import checker  # noqa: E402
import protocol  # noqa: E402
from hardening import make_unreachable  # noqa: E402

# Warm the modules programs and tests import most, so a child finds them loaded.
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "copy", "typing",
           "hashlib", "statistics", "fractions", "decimal", "operator")  # not numpy: it makes every fork ~8 ms slower


def preload() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass


def set_limits(limits: dict, cpu_time_s: float) -> None:
    cpu = max(1, int(cpu_time_s + 0.999))
    memory = limits["memory_mib"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mib"] * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child(request: dict, out_w: int, err_w: int, rec_w: int, keep_out: list[int]) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        os.setsid()
        for fd in keep_out:  # the zygote's channels and the parent ends of the pipes
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(rec_w, 3)
        os.closerange(4, 65536)
        os.chdir(request["scratch"])
        os.environ.clear()
        os.environ.update(request["env"])
        set_limits(request["limits"], request["cpu_time_s"])
        import random

        random.seed()  # each sample gets fresh randomness, not the zygote's state
        if request["kind"] == "candidate":
            candidate.run(request["job"], 3)
        else:
            sys.stdout.write(json.dumps(checker.run(request["job"])))
        code = 0
    except BaseException:  # report, then leave: nothing may return into the zygote's loop
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def serve(requests_fd: int, replies: socket.socket) -> None:
    requests = os.fdopen(requests_fd, "rb", buffering=0)
    while True:
        request = protocol.read_frame(requests)
        if request is None:
            return
        pipes = [os.pipe() for _ in range(3)]
        pid = os.fork()
        if pid == 0:
            child(request, pipes[0][1], pipes[1][1], pipes[2][1],
                  [requests_fd, replies.fileno(), *(read for read, _ in pipes)])
        for _, write in pipes:
            os.close(write)
        started = json.dumps({"nonce": request["nonce"], "event": "started", "pid": pid}).encode()
        socket.send_fds(replies, [started], [read for read, _ in pipes])
        for read, _ in pipes:
            os.close(read)
        _, status, usage = os.wait4(pid, 0)
        replies.send(json.dumps({"nonce": request["nonce"], "event": "exited", "status": status,
                                 "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
                                 "max_rss_kib": usage.ru_maxrss}).encode())


def main() -> None:
    make_unreachable()
    preload()
    gc.freeze()  # children's collections skip inherited objects: fewer copy-on-write faults, costly under gVisor
    serve(int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2])))


if __name__ == "__main__":
    main()
