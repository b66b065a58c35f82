"""Fork server inside the sandbox (stdlib only): a warm interpreter that forks every child process.

Starting ``python3`` and importing the harness costs ~40 ms of CPU under gVisor; a fork of this
warm process costs ~15 ms, and the supervisor asks for forks ahead of need (spare processes), so
that cost is mostly paid while other samples run. The zygote runs as root with the capabilities to switch users, is
non-dumpable, and is started by the supervisor with a fresh memory image (it never holds the
supervisor's key). It never receives a program, a test or an expected value: each child gets its
payload through its own boot pipe from the supervisor after the fork, so no child can find
another's data in memory it inherited. Each child switches to the uid it was given (a sample's
own uid, or a judge uid) before it runs anything else, and so loses every capability.

Requests (``ForkRequest``) and replies (``Forked`` with the parent ends of the child's pipes
attached, ``Exited`` with its status and resource use) travel on a SOCK_SEQPACKET socket.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import random
import resource
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import startup  # noqa: E402

startup.like_site()

import hardening  # noqa: E402
import messages  # noqa: E402
import sample  # noqa: E402

# Warm the modules programs and tests import most, so a child finds them loaded.
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing")
# Not numpy, nor the test driver: the bigger the zygote, the more every fork of it costs under gVisor.


def preload() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass


def set_limits(limits: messages.Rlimits) -> None:
    """Lower this process's limits (never above what the container already allows)."""
    wanted = [(resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_size_bytes),
              (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_NPROC, limits.processes),
              (resource.RLIMIT_CORE, 0)]
    if limits.cpu_s:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    for kind, value in wanted:
        _, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))


def _place(fds: list[int]) -> None:
    """Make ``fds`` the child's descriptors 0, 1, 2, ... and close every other one."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100 + index) for index, fd in enumerate(fds)]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(fds), 65536)


def child(request: messages.ForkRequest, fds: list[int]) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        _place(fds)
        os.environ.clear()
        os.environ.update(request.env)
        hardening.become(request.uid)   # from here on: no capabilities, nothing but this uid
        os.chdir(request.cwd)           # the scratch directory is the sample's own, mode 0700
        set_limits(request.rlimits)
        hardening.restrict_syscalls()
        random.seed()                   # each child gets fresh randomness, not the zygote's state
        if request.kind == "program":
            sample.main()
        else:
            import driver  # once per batch: kept out of the zygote, whose every page a program's fork copies

            driver.main()
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


def spawn(request: messages.ForkRequest, control: socket.socket) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    boot = os.pipe()
    if request.kind == "program":
        stdin, requests, replies, out, err = os.pipe(), os.pipe(), os.pipe(), os.pipe(), os.pipe()
        child_fds = [stdin[0], out[1], err[1], boot[0], requests[0], replies[1]]
        parent_fds = [stdin[1], boot[1], requests[1], replies[0], out[0], err[0]]
        os.close(devnull)
    else:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        err = os.pipe()
        child_fds = [devnull, err[1], err[1], boot[0], theirs.detach()]
        parent_fds = [boot[1], ours.detach(), err[0]]
    pid = os.fork()
    if pid == 0:
        child(request, child_fds)
    for fd in set(child_fds):
        os.close(fd)
    reply = {"event": "forked", "token": request.token, "pid": pid}
    socket.send_fds(control, [json.dumps(reply).encode()], parent_fds)
    for fd in parent_fds:
        os.close(fd)


def report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"event": "exited", "pid": pid, "status": status,
                                 "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
                                 "max_rss_kib": usage.ru_maxrss}).encode())


def serve(control: socket.socket) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([control, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
            report_exits(control)
        if control in readable:
            data = control.recv(1 << 16)
            if not data:
                return
            spawn(messages.from_dict(messages.ForkRequest, json.loads(data)), control)
            report_exits(control)


def main() -> None:
    hardening.make_unreachable()
    preload()
    gc.freeze()  # children's collections skip inherited objects: fewer copy-on-write faults, costly under gVisor
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
