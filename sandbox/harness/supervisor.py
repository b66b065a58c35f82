"""The sandbox's first process: takes batches from the host and judges each sample in its own trust domain.

Runs as PID 1 of a gVisor container, as root with only the capabilities that switching users
needs (SETUID, SETGID, KILL, CHOWN), non-dumpable. Three trust domains, walled by uids:

* trusted, root: this supervisor and the zygote (``zygote.py``), which forks every child;
* trusted, a judge uid per slot: the test driver (``driver.py``), which runs the tests;
* untrusted, a fresh uid per program process, never reused in this sandbox: a sample's program.

The sandbox judges ``slots`` samples at once. Processes are forked ahead of need (spare program
processes, each with its uid and scratch directory, and a spare driver per slot), so the cost of a
fork under gVisor is paid while other samples run. For each sample the supervisor boots a spare
with the program and hands the slot's driver the two pipe ends that lead to it (function and
call forms), or runs the program once per stdio case the driver asks for, feeding the case's input
and handing the driver what came out. It enforces CPU time (over all of a program's processes)
and wall time, per run and per sample, and the driver's CPU per sample, from outside: no sample
can signal or stop it. After every program process, every process of its uid is killed, its files
are wiped and the shared places are checked; if anything cannot be cleaned (a process that
outlives the sweep, an IPC object), the batch stops and the host is told to discard this sandbox
before anything trusted runs here again.

Replies to the host are HMAC-authenticated frames on stdout.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict, deque
from typing import Any, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import accounting  # noqa: E402
import hardening  # noqa: E402
import messages  # noqa: E402
import protocol  # noqa: E402
from messages import BatchRequest, CaseRun, Judged, Limits, SampleReport, Toolchain  # noqa: E402

SCRATCH_ROOT = "/scratch"        # one tmpfs per slot: /scratch/<slot>, root-owned 0711
SHM = "/dev/shm"
FIRST_PROGRAM_UID = 100_000      # programs: 100000, 100001, ... never reused in one sandbox
LAST_PROGRAM_UID = 1_000_000
JUDGE_UID = 2_000                # drivers: 2000 + slot
JUDGE_BANKS = 2                 # a slot's spare driver never has its active driver's uid: 2000 + slot + 16 x bank
CREDENTIALS = struct.Struct("iII")  # SCM_CREDENTIALS: pid, uid, gid of a message's sender
READ_CHUNK = 65536
CPU_POLL_S = 0.1
EXIT_GRACE_S = 0.5               # for a program to flush its output after the driver's "end"
DRIVER_GRACE_S = 2.0             # for the driver to report after its sample was stopped
JUDGE_MARGIN_S = 1.0             # stdio: the driver's own work on a case, beyond its checker's budget
JUDGE_WALL_FACTOR = 2.0          # stdio: wall time the driver may take on one case's output, per second of its CPU budget
SWEEP_DEADLINE_S = 3.0           # a uid whose processes are not all gone by then taints the sandbox
WIPE_DEADLINE_S = 5.0
FORK_DEADLINE_S = 60.0           # the zygote must deliver a fork within this, or the sandbox is given up
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRIVER_STDERR_BYTES = 8192
BUILD_MAX_ENTRIES = 5000         # files and directories a compile step may leave for the runs
BUILD_CACHE_BYTES = 256 << 20    # builds kept for identical programs (content-keyed), in memory
NUL = b"\0"


def child_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clean(text: str, limit: int) -> str:
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(items: list[str], most: int = 20, chars: int = 300) -> tuple[str, ...]:
    """At most ``most`` lines of at most ``chars`` characters each, escaped before they are cut (a
    sample names the files it leaves; their bytes must not grow the report past its bound)."""
    kept = [item.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:chars] for item in items[:most]]
    if len(items) > most:
        kept.append(f"... and {len(items) - most} more")
    return tuple(kept)


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


class Tainted(Exception):
    """Cleanup after a sample was incomplete: nothing trusted may run in this sandbox again."""


# -- processes, seen through /proc --------------------------------------------------------------
class Seen:
    """One process as /proc/<pid>/stat shows it."""

    __slots__ = ("state", "cpu", "reaped_cpu", "ppid")

    def __init__(self, state: str, cpu: float, reaped_cpu: float, ppid: int) -> None:
        self.state, self.cpu, self.reaped_cpu, self.ppid = state, cpu, reaped_cpu, ppid


_UIDS: dict[int, int] = {}  # pid -> uid, once it is final: a process without capabilities cannot change its uid
_ME = os.getpid()


def uids() -> dict[int, int]:
    """pid -> real uid of every process but this one. Opening files under /proc costs ~0.3 ms each in
    gVisor, so a uid is read once per process; a uid 0 is read again (the zygote's children start as root)."""
    current: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == _ME:
            continue
        pid = int(name)
        uid = _UIDS.get(pid)
        if uid is None:
            try:
                with open(f"/proc/{pid}/status", "rb") as handle:
                    uid = next(int(line.split()[1]) for line in handle if line.startswith(b"Uid:"))
            except (OSError, StopIteration):
                continue  # gone meanwhile
            if uid != 0:
                _UIDS[pid] = uid
        current[pid] = uid
    for pid in [pid for pid in _UIDS if pid not in current]:
        del _UIDS[pid]
    return current


def seen(pid: int) -> Seen | None:
    """State, own CPU, reaped children's CPU and parent of one process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return Seen(fields[0].decode(), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                (int(fields[13]) + int(fields[14])) / CLOCK_TICKS, int(fields[1]))


def processes_of(uid: int, zombies: bool = False) -> dict[int, Seen]:
    """The processes of ``uid`` that have not ended; with ``zombies``, also those ended but not yet
    reaped (their CPU is nobody else's until their parent reaps them: CPU accounting must count it)."""
    found = {}
    ended = "X" if zombies else "ZX"
    for pid, owner in uids().items():
        if owner == uid:
            state = seen(pid)
            if state is not None and state.state not in ended:
                found[pid] = state
    return found


def survey(uid: int) -> tuple[dict[int, Seen], dict[int, float]]:
    """The processes of ``uid`` not yet reaped (zombies included), and the own CPU (raw ticks) of every other
    process in the sandbox (the zygote, spares, drivers and judges): what the sandbox's CPUs gave besides. Not
    this supervisor's: its work (reading a program's output and its processes) is the program's doing, and
    counted as another's it would let a program that floods its output shrink its own share."""
    mine: dict[int, Seen] = {}
    others: dict[int, float] = {}
    for pid, owner in uids().items():
        state = seen(pid)
        if state is None or state.state == "X":
            continue
        if owner == uid:
            mine[pid] = state
        else:
            others[pid] = state.cpu
    return mine, others


def cpu_of(pid: int) -> float:
    state = seen(pid)
    return state.cpu if state is not None else 0.0


def reap(pids: Iterable[int], zygote_pid: int) -> None:
    """Collect those of ``pids`` that are ours (orphans re-parented to PID 1) and have ended. Only the
    swept uid's: an orphan of a program still running must stay visible (a zombie) until its own
    sweep, or its CPU would vanish from that program's account."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not ours: its parent reaps it
    try:
        ended = os.waitpid(zygote_pid, os.WNOHANG)[0] == zygote_pid
    except ChildProcessError:
        ended = True
    if ended:
        raise Tainted("the zygote exited")


def judge_uid(slot: int, bank: int) -> int:
    """A test driver's uid: its slot's, in one of two banks (a slot's active and spare drivers never share one)."""
    return JUDGE_UID + slot + 16 * bank  # 16: at most this many slots (the host's images.MAX_SLOTS)


def kill_uid(uid: int, zygote_pid: int, reap_zombies: bool = True) -> int:
    """SIGKILL every process of ``uid`` until none is left (or, without ``reap_zombies``, until all are
    zombies, whose CPU can still be read); the number found, or ``Tainted``."""
    deadline = time.monotonic() + SWEEP_DEADLINE_S
    found: set[int] = set()
    while True:
        present = processes_of(uid, zombies=True)
        alive = [pid for pid, state in present.items() if state.state != "Z"]
        if not alive:  # zombies are reaped only now: each still holds its place under RLIMIT_NPROC, so while the
            if reap_zombies:  # sweep lasts, every process killed is one a fork bomb cannot replace
                reap([pid for pid, state in present.items() if state.state == "Z"], zygote_pid)
            return len(found)
        if time.monotonic() > deadline:
            raise Tainted(f"{len(alive)} process(es) of uid {uid} survived {SWEEP_DEADLINE_S:.0f} s of SIGKILL")
        found.update(alive)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)


def wipe(path: str, deadline: float) -> None:
    """Remove a tree a sample owned: take each directory back (chown) before emptying it. Iterative, with
    one directory open at a time: a sample chooses how deep its tree is."""
    stack = [(path, False)]
    while stack:
        current, emptied = stack.pop()
        if emptied:
            os.rmdir(current)
            continue
        if time.monotonic() > deadline:
            raise Tainted(f"wiping {path} took longer than {WIPE_DEADLINE_S:.0f} s")
        os.lchown(current, 0, 0)
        os.chmod(current, 0o700)
        with os.scandir(current) as entries:
            found = [(entry.path, entry.is_dir(follow_symlinks=False)) for entry in entries]
        stack.append((current, True))
        for child, is_dir in found:
            if is_dir:
                stack.append((child, False))
            else:
                os.unlink(child)
                if time.monotonic() > deadline:
                    raise Tainted(f"wiping {path} took longer than {WIPE_DEADLINE_S:.0f} s")


_libc = ctypes.CDLL(None, use_errno=True)
_IPC_INFO_CALLS = (("shared memory segment", 14, lambda b: b[0]),   # shmctl(SHM_INFO).used_ids
                   ("semaphore set", 19, lambda b: b[7]),            # semctl(SEM_INFO).semusz
                   ("message queue", 12, lambda b: b[0]))            # msgctl(MSG_INFO).msgpool


def sysv_ipc_objects() -> list[str]:
    """SysV IPC objects that exist in this sandbox (there should be none between samples)."""
    found = []
    for name, command, pick in _IPC_INFO_CALLS:
        buffer = (ctypes.c_int * 16)()
        if name == "shared memory segment":
            result = _libc.shmctl(0, command, buffer)
        elif name == "semaphore set":
            result = _libc.semctl(0, 0, command, buffer)
        else:
            result = _libc.msgctl(0, command, buffer)
        count = pick(buffer) if result >= 0 else 0
        if count:
            found.append(f"{count} SysV {name}(s)")
    return found


class Writer:
    """A payload written to a pipe as the reader takes it (the loop never blocks on a full pipe)."""

    def __init__(self, fd: int, data: bytes) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.data = memoryview(data)
        if not data:
            self.close()

    def pump(self) -> None:
        assert self.fd is not None
        try:
            written = os.write(self.fd, self.data[:1 << 20])
        except BlockingIOError:
            return
        except OSError:  # the reader is gone (a program that did not read it all): its own business
            written = len(self.data)
        self.data = self.data[written:]
        if not self.data:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


MAX_HARNESS_CPU_S = 5.0  # a bound on the harness's own word, trusted as it is


def started_word(status: Capture) -> messages.Started | None:
    """What a run's harness said on its reply pipe before any of the program existed (None: not yet,
    or killed before it said anything: then the run's own outcome tells)."""
    if len(status.data) < protocol.HEADER.size:
        return None
    (length,) = protocol.HEADER.unpack(status.data[:protocol.HEADER.size])
    body = bytes(status.data[protocol.HEADER.size:])
    if len(body) < length:
        return None
    try:
        return messages.from_dict(messages.Started, json.loads(body[:length]))  # type: ignore[no-any-return]
    except ValueError:
        return None


def harvest_build(root: str, max_bytes: int) -> dict[str, tuple[int, bytes]] | str:
    """What a compile step left under ``root``, read as root from a directory its uid controlled: regular
    files and directories only (links and anything else skipped), never followed, bounded in number and size.
    The build, or why it cannot be used (the program's fault: its compile step made it so).

    No link is ever followed, ``root`` itself included: each entry is taken relative to its directory's open
    descriptor (``_take``), and a directory is read only once root holds it (owner and mode changed on its
    own descriptor)."""
    found: dict[str, tuple[int, bytes]] = {}
    total, entries = 0, 0
    parent_path, top = os.path.split(root)
    try:
        parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return "the compile step left no output"
    try:
        first = _take(parent, top, "dir")
    finally:
        os.close(parent)
    if first is None:
        return "the compile step left no output"
    pending: list[tuple[str, int]] = [("", first)]
    try:
        while pending:
            folder, fd = pending.pop()
            try:
                try:
                    names = os.listdir(fd)
                except OSError:
                    return f"cannot read {folder!r} of the build"
                for entry in names:
                    entries += 1
                    if entries > BUILD_MAX_ENTRIES:
                        return f"the build has more than {BUILD_MAX_ENTRIES} files"
                    name = os.path.join(folder, entry)
                    child = _take(fd, entry, "any")
                    if child is None:
                        continue  # a link, a fifo, a socket, or gone: skipped, never followed
                    info = os.fstat(child)
                    if stat_is_directory(info.st_mode):
                        if name.count("/") < 32:
                            pending.append((name, child))
                        else:
                            os.close(child)
                        continue
                    try:
                        if total + info.st_size > max_bytes:
                            return f"the build is larger than {max_bytes >> 20} MiB"
                        chunks, size = [], 0
                        while size <= info.st_size:
                            chunk = os.read(child, 1 << 20)
                            if not chunk:
                                break
                            chunks.append(chunk)
                            size += len(chunk)
                    finally:
                        os.close(child)
                    total += size
                    if total > max_bytes:
                        return f"the build is larger than {max_bytes >> 20} MiB"
                    found[name] = (0o555 if info.st_mode & 0o111 else 0o444, b"".join(chunks))
            finally:
                os.close(fd)
    finally:
        for _, fd in pending:
            os.close(fd)
    return found if found else "the compile step left no output"


def _take(directory: int, name: str, wanted: str) -> int | None:
    """Take back one entry of a directory root holds (open by ``directory``; only root can change it now): its
    owner is changed without following it (root has no DAC override: the owner's bits must become root's), its
    type is read without following, its mode is set only if it is a regular file or a directory, and it is
    opened ``O_NOFOLLOW`` and checked to be the inode that was looked at. A descriptor (the caller closes it),
    or None for anything else (a link is never followed, whatever it points at). ``wanted``: "dir" or "any"."""
    try:
        os.chown(name, 0, 0, dir_fd=directory, follow_symlinks=False)
        before = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if stat_is_directory(before.st_mode):
            mode, flags = 0o700, os.O_RDONLY | os.O_DIRECTORY
        elif stat_is_regular(before.st_mode) and wanted == "any":
            mode, flags = 0o400 | (before.st_mode & 0o111), os.O_RDONLY | os.O_NONBLOCK
        else:
            return None
        os.chmod(name, mode, dir_fd=directory)  # not a link (just seen, in a directory nobody else can change)
        fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=directory)
    except OSError:
        return None
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or after.st_uid != 0:
        os.close(fd)
        return None
    return fd


def stat_is_directory(mode: int) -> bool:
    return (mode & 0o170000) == 0o040000


def stat_is_regular(mode: int) -> bool:
    return (mode & 0o170000) == 0o100000


def framed(body: bytes) -> bytes:
    return protocol.HEADER.pack(len(body)) + body


# -- the zygote and its children ----------------------------------------------------------------
class Zygote:
    """The supervisor's end of the fork server; forks are asked for and arrive later (``Forked``)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()  # before the host's key exists in this process; exec replaces the image anyway
        if pid == 0:
            try:
                os.dup2(theirs.fileno(), 3)
                os.closerange(4, 65536)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.chdir("/")
                os.execve(sys.executable, [sys.executable, "-I", "-S", os.path.join(HERE, "zygote.py"), "3"],
                          child_env("/"))
            finally:
                os._exit(127)
        theirs.close()
        self.pid, self.socket = pid, ours
        self.next_token = 1

    def request(self, kind: str, uid: int, cwd: str, rlimits: messages.Rlimits) -> int:
        token, self.next_token = self.next_token, self.next_token + 1
        request = messages.ForkRequest(token=token, kind=kind, uid=uid, cwd=cwd, env=child_env(cwd),  # type: ignore[arg-type]
                                       rlimits=rlimits)
        try:
            self.socket.send(json.dumps(messages.to_dict(request)).encode())
        except OSError as exc:
            raise Tainted(f"the zygote does not take requests: {exc}") from exc
        return token

    def receive(self) -> tuple[messages.Forked | messages.Exited, list[int]]:
        data, fds, _, _ = socket.recv_fds(self.socket, 1 << 16, 8)
        if not data:
            raise Tainted("the zygote exited")
        raw = json.loads(data)
        if raw.get("event") == "exited":
            return messages.from_dict(messages.Exited, raw), fds
        return messages.from_dict(messages.Forked, raw), fds


class Program:
    """A process of the zygote's for one program run: its own uid and scratch, from spare to exit."""

    def __init__(self, uid: int, scratch: str, pid: int, fds: list[int], output_cap: int, cpus: float = 1.0) -> None:
        self.uid, self.scratch, self.pid, self.cpus = uid, scratch, pid, cpus
        stdin, boot, self.request_w, self.reply_r, out, err = fds
        self.unbooted = [stdin, boot]  # handed to writers at boot
        self.out, self.err = Capture(output_cap), Capture(output_cap)
        self.compiled = Capture(1 << 16)
        self.streams: dict[int, Capture] = {out: self.out, err: self.err}
        self.writers: list[Writer] = []
        self.started = 0.0
        self.cpu_limit = self.wall_limit = 0.0
        self.live: dict[int, Seen] = {}  # its processes at the last poll
        self.gone_cpu = 0.0              # CPU of its processes that ended where no process of its own reaped them
        self.main_cpu = 0.0              # its first process's, with its reaped children's, at the last poll
        self.polled_cpu = 0.0            # all of it, the harness's part included (known for sure only later)
        # gVisor's figures are ticks of runnable time: what counts is bounded by the sandbox's CPUs (accounting.py)
        self.capacity = accounting.Capacity(cpus, time.monotonic())
        self.curve = accounting.Curve()  # raw figure -> charged CPU, as polled
        self.others_seen: dict[int, float] = {}  # every other process's raw CPU at the last poll
        self.rlimit_s = 0                # RLIMIT_CPU beyond the harness's part: a backstop, not the budget
        self.exited: messages.Exited | None = None
        self.limit = ""                # which limit stopped it
        self.stopped_at = 0.0
        self.fork_s = 0.0              # how long the zygote took to deliver it (ahead of need, as a spare)
        self.boot_cpu = 0.0            # what its process had used before its boot: the fork, the spare's set-up
        self.started_word: messages.Started | None = None

    def boot(self, mode: str, source: str, cpu_s: float, wall_s: float, stdin: bytes, out_cap: int,
             apps_wrap: bool = False, argv: tuple[str, ...] = (), files: tuple[tuple[str, str], ...] = (),
             memory_bytes: int = 0, env: tuple[tuple[str, str], ...] = (), guard: str = "sigchld") -> None:
        self.started = time.monotonic()
        # The fork of a big interpreter costs a spare 0.1-0.2 s of CPU under gVisor (copy-on-write faults, more
        # with more runnable tasks): the harness's cost, read here before any of the program exists, is not its.
        mine, self.others_seen = survey(self.uid)
        self.boot_cpu = mine[self.pid].cpu if self.pid in mine else 0.0
        self.capacity = accounting.Capacity(self.cpus, self.started)
        self.curve = accounting.Curve(self.boot_cpu)
        self.cpu_limit, self.wall_limit = cpu_s, wall_s
        self.rlimit_s = accounting.rlimit_cpu_s(cpu_s, wall_s)
        self.out.cap = out_cap
        boot = messages.ProgramBoot(mode=mode, source=source, cpu_s=self.rlimit_s, apps_wrap=apps_wrap,  # type: ignore[arg-type]
                                    argv=argv, files=files, memory_bytes=memory_bytes, env=env, guard=guard)
        stdin_fd, boot_fd = self.unbooted
        self.unbooted = []
        self.writers = [Writer(boot_fd, framed(json.dumps(messages.to_dict(boot)).encode())), Writer(stdin_fd, stdin)]

    def handed_over(self) -> None:
        """The driver holds the pipes to this program now; ours are closed."""
        for fd in (self.request_w, self.reply_r):
            os.close(fd)
        self.request_w = self.reply_r = -1

    def run_alone(self) -> None:
        """A stdio run: nobody calls it; its reply pipe carries only the harness's word on compiling."""
        os.close(self.request_w)
        self.streams[self.reply_r] = self.compiled
        self.request_w = self.reply_r = -1

    def account(self) -> None:
        """CPU of all its processes: theirs, their reaped children's, and that of processes gone since; the
        increment since the last poll charged as far as the sandbox's CPUs could have given it."""
        live, others = survey(self.uid)  # a child never waited for keeps its CPU in its own stat
        for pid, last in self.live.items():
            if pid != self.pid and pid not in live and not self._reaped_within(last, live):
                self.gone_cpu += last.cpu + last.reaped_cpu  # nobody of its own will count it: we do
        if self.pid in live:
            self.main_cpu = live[self.pid].cpu + live[self.pid].reaped_cpu
        self.live = live
        main = self.exited.cpu_s if self.exited else self.main_cpu  # the zygote's wait4: final, not polled
        self.polled_cpu = max(self.polled_cpu, self.gone_cpu + main + sum(
            s.cpu + s.reaped_cpu for pid, s in live.items() if pid != self.pid))
        grown = sum(max(0.0, cpu - self.others_seen.get(pid, 0.0)) for pid, cpu in others.items())
        self.others_seen = others
        charged = self.capacity.share(time.monotonic(), self.polled_cpu - self.curve.raw, grown)
        self.curve.add(self.polled_cpu, charged)

    def settle(self, zygote_pid: int) -> int:
        """Stop every process of the program and count their CPU while they are zombies, before anything
        reaps them (CPU spent since the last poll would otherwise vanish with them). The number killed."""
        try:
            return kill_uid(self.uid, zygote_pid, reap_zombies=False)
        finally:
            self.account()

    def _reaped_within(self, gone: Seen, live: dict[int, Seen]) -> bool:
        """Whether a vanished process's CPU now sits in a live process's reaped CPU: some ancestor (by
        the parents last seen) is alive. Its parent may have vanished in the same poll (a grandchild
        reaped by a child that its parent then reaped), so walk up. Orphans are re-parented to PID 1,
        which reaps a uid's processes only in that uid's final sweep, so an orphan is seen with
        parent 1 (not ours) before it vanishes."""
        parent, hops = gone.ppid, 0
        while hops < 64:
            if parent in live:
                return True
            before = self.live.get(parent)
            if before is None:
                return False
            parent, hops = before.ppid, hops + 1
        return False

    def harness_word(self) -> messages.Started | None:
        """The harness's first word on a stdio run's or compile step's reply pipe, once it is complete."""
        if self.started_word is None:
            self.started_word = started_word(self.compiled)
        return self.started_word

    @property
    def harness_cpu(self) -> float:
        """CPU of its first process that was the harness's (read at boot; said by the harness just before the
        program ran, when it could say it): never counted as the program's."""
        word = self.harness_word()
        return max(self.boot_cpu, min(word.harness_cpu_s, MAX_HARNESS_CPU_S)) if word else self.boot_cpu

    def compile_error(self) -> str:
        """What a Python run's harness said about compiling the program, before any of it ran."""
        word = self.harness_word()
        return clean(word.error or "does not compile", 3000) if word is not None and not word.ok else ""

    def exited_cpu(self) -> float:
        """Its first process's raw figure (with its reaped children's) by the zygote's wait4, less the harness's
        part: what RLIMIT_CPU counted."""
        return max(0.0, self.exited.cpu_s - self.harness_cpu) if self.exited else 0.0

    def rlimit_fired(self, status: int) -> bool:
        """Whether a kill by SIGXCPU/SIGKILL was RLIMIT_CPU's backstop, before the supervisor's poll saw a limit."""
        return status in (-signal.SIGXCPU, -signal.SIGKILL) and self.exited_cpu() >= self.rlimit_s - 0.05

    def raw_s(self) -> float:
        """gVisor's own figure for the program (runnable ticks of all its processes), the harness's part left out."""
        raw = max(self.polled_cpu, self.exited.cpu_s if self.exited else 0.0)
        return max(0.0, raw - self.harness_cpu)

    def cpu_s(self) -> float:
        """The program's CPU: its raw figure's increments as far as the sandbox's CPUs could have given them
        (``accounting.Capacity``). The harness's part is taken off when read, never when polled (a poll may
        come before the harness has said how much was its own)."""
        raw = max(self.polled_cpu, self.exited.cpu_s if self.exited else 0.0)
        return self.curve.between(self.harness_cpu, raw)

    def done(self) -> bool:
        """Exited and its output read to the end."""
        return self.exited is not None and not self.streams

    def close_fds(self) -> None:
        for writer in self.writers:
            writer.close()
        for fd in [*self.unbooted, self.request_w, self.reply_r, *self.streams]:
            if fd >= 0:
                os.close(fd)
        self.unbooted, self.streams = [], {}
        self.request_w = self.reply_r = -1


class Driver:
    """A test driver of one slot: forked ahead as a spare, then judges one batch's samples one at a time."""

    def __init__(self, slot: int, pid: int, fds: list[int], uid: int) -> None:
        self.slot, self.uid, self.pid = slot, uid, pid
        boot, control, stderr = fds
        self.boot_fd: int | None = boot
        self.control = socket.socket(fileno=control)
        # each message says who sent it: a report counts only from the template (this pid), which passes one on
        # only once its judge and everything the judge started have ended; a judge (a careless test may run a
        # sample's code there) that sent one itself and lived on would take the next sample's request and answer it
        self.control.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.stderr_fd: int | None = stderr
        self.stderr = Capture(DRIVER_STDERR_BYTES)
        self.writer: Writer | None = None
        self.exit_status: int | None = None
        self.cpu_base = 0.0

    def cpu(self) -> float:
        """CPU of this driver (the template) and of the judges it forked, one per sample, reaped or not."""
        own = seen(self.pid)
        if own is None:
            return 0.0
        judges = [state.cpu for state in processes_of(self.uid, zombies=True).values() if state.ppid == self.pid]
        return own.cpu + own.reaped_cpu + sum(judges)

    def start(self, job: messages.DriverJob) -> None:
        assert self.boot_fd is not None
        self.writer = Writer(self.boot_fd, framed(json.dumps(messages.to_dict(job)).encode()))
        self.boot_fd = None

    def send(self, message: Any, fds: list[int] = (), payload: bytes = b"") -> None:  # type: ignore[assignment]
        data = json.dumps(messages.to_dict(message)).encode() + (NUL + payload if payload else b"")
        socket.send_fds(self.control, [data], list(fds))

    def describe_death(self) -> str:
        status = "" if self.exit_status is None else f" (exit status {self.exit_status})"
        tail = self.stderr.text().strip()[-600:]
        return f"the test driver died{status}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for fd in (self.boot_fd, self.stderr_fd):
            if fd is not None:
                os.close(fd)
        self.boot_fd = self.stderr_fd = None
        self.control.close()
        if self.exit_status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end_judges(self.uid, self.pid)


def end_judges(uid: int, template: int) -> None:
    """Kill and reap a driver's judges and what they started: its children, and once it is gone, the orphans
    they become (ours, as PID 1). The slot's spare driver has the same uid but the zygote for parent: spared."""
    deadline = time.monotonic() + SWEEP_DEADLINE_S
    while True:
        found = {pid: state for pid, state in processes_of(uid, zombies=True).items() if state.ppid in (template, _ME)}
        if not found:
            return
        for pid, state in found.items():
            if state.ppid == _ME:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if state.state != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if time.monotonic() > deadline:
            raise Tainted(f"{len(found)} process(es) of a test driver survived {SWEEP_DEADLINE_S:.0f} s of SIGKILL")
        time.sleep(0.002)


class Run:
    """One sample being judged in one slot."""

    def __init__(self, slot: int, sample: messages.SampleProgram, driver: Driver, stdio: bool, limits: Limits) -> None:
        self.slot, self.sample, self.driver, self.stdio, self.limits = slot, sample, driver, stdio, limits
        self.started = time.monotonic()
        self.program: Program | None = None       # serve: the sample's process; stdio: the current case's
        self.case = -1                            # stdio: the case being run
        self.told_at: float | None = None         # stdio: when the driver was handed a case's output to judge
        self.judged: Judged | None = None
        self.judge_fault = ""
        self.time_limit = ""
        self.stopped_at = self.judged_at = 0.0
        self.cpu_done = 0.0                       # stdio: CPU of the cases already run
        self.ticks_done = 0.0                     # ... and gVisor's raw figure for them (runnable ticks)
        self.max_rss_kib = 0
        self.exit_status: int | None = None
        self.leftovers: list[str] = []
        self.stderr = Capture(limits.output_max_bytes)
        self.stdout = Capture(limits.output_max_bytes)
        self.timings: dict[str, float] = {}
        self.next_poll = self.started + CPU_POLL_S
        self.waiting_case: int | None = None      # stdio: a case the driver asked for, waiting for a spare
        # other languages: the build every case runs (relative path -> (mode, bytes)), made once per sample
        self.nonce = os.urandom(16).hex()         # inline tests print it after the last test
        self.build: dict[str, tuple[int, bytes]] | None = None
        self.build_key = ""
        self.building = False                     # run.program is the compile step, not a case
        self.compile_error = ""

    def cpu_s(self) -> float:
        return self.cpu_done + (self.program.cpu_s() if self.program else 0.0)


class Supervisor:
    def __init__(self, limits: Limits, slots: int) -> None:
        self.limits, self.slots = limits, slots
        self.zygote = Zygote()
        self.uids = iter(range(FIRST_PROGRAM_UID, LAST_PROGRAM_UID))
        self.taint = ""
        self.spares: deque[Program] = deque()          # programs forked ahead, waiting for a boot
        self.spare_drivers: dict[int, Driver] = {}     # slot -> a driver forked ahead, waiting for a job
        self.spare_driver_uids: dict[int, int] = {}     # slot -> the uid its spare driver was asked for with
        self.pending: dict[int, tuple[str, Any, float]] = {}  # fork token -> what it is for, when asked
        self.drivers: dict[int, Driver] = {}           # slot -> the driver judging this batch
        self.runs: dict[int, Run] = {}                 # slot -> the sample being judged there
        self.programs: dict[int, Program] = {}         # pid -> program, from spare to cleanup
        self.job: messages.DriverJob | None = None
        self.request: BatchRequest | None = None
        self.builds: OrderedDict[str, dict[str, tuple[int, bytes]] | str] = OrderedDict()  # key -> build or compile error
        for slot in range(slots):
            os.makedirs(os.path.join(SCRATCH_ROOT, str(slot)), exist_ok=True)
        self.replenish()

    # -- spares -------------------------------------------------------------------------------------
    def replenish(self) -> None:
        """Ask the zygote for what the next samples will need, ahead of need."""
        if self.taint:
            return
        waiting = sum(kind == "program" for kind, _, _ in self.pending.values())
        for _ in range(self.slots + 1 - len(self.spares) - waiting):
            uid = next(self.uids, None)
            if uid is None:
                self.taint = "this sandbox has used all its program uids"
                return
            slot = uid % self.slots  # spread scratch over the per-slot tmpfs mounts
            scratch = os.path.join(SCRATCH_ROOT, str(slot), str(uid))
            os.mkdir(scratch, 0o700)
            os.chown(scratch, uid, uid)
            # the compile step may need more address space than a run: each boot lowers it to its own
            memory = max(self.limits.memory_mib, self.limits.compile_memory_mib) << 20
            rlimits = messages.Rlimits(cpu_s=0, memory_bytes=memory,
                                       file_size_bytes=self.limits.file_size_mib << 20,
                                       open_files=self.limits.open_files, processes=self.limits.processes)
            self.pending[self.zygote.request("program", uid, scratch, rlimits)] = ("program", (uid, scratch),
                                                                                   time.monotonic())
        for slot in range(self.slots):
            if slot not in self.spare_drivers and not any(p[:2] == ("driver", slot) for p in self.pending.values()):
                rlimits = messages.Rlimits(cpu_s=0, memory_bytes=self.limits.memory_mib << 20, file_size_bytes=1 << 20,
                                           open_files=256, processes=64)
                # the uid no driver of this slot has now (a judge may signal whatever has its own uid: the spare
                # must not be within its reach), emptied first of anything an ended driver's judges left running
                active = self.drivers.get(slot)
                uid = next(judge_uid(slot, bank) for bank in range(JUDGE_BANKS)
                           if active is None or judge_uid(slot, bank) != active.uid)
                try:
                    kill_uid(uid, self.zygote.pid)
                except Tainted as exc:
                    self.taint = self.taint or str(exc)
                token = self.zygote.request("driver", uid, "/", rlimits)
                self.pending[token] = ("driver", slot, time.monotonic())
                self.spare_driver_uids[slot] = uid

    def forked(self, message: messages.Forked, fds: list[int]) -> None:
        kind, what, asked = self.pending.pop(message.token)
        if kind == "program":
            uid, scratch = what
            program = Program(uid, scratch, message.pid, fds, self.limits.output_max_bytes, self.limits.cpus)
            program.fork_s = time.monotonic() - asked
            self.programs[program.pid] = program
            self.spares.append(program)
        else:
            self.spare_drivers[what] = Driver(what, message.pid, fds, self.spare_driver_uids[what])

    def pending_uids(self) -> set[int]:
        """Uids of program processes asked for and not yet announced (their scratch already exists)."""
        return {what[0] for kind, what, _ in self.pending.values() if kind == "program"}

    def take_spare(self) -> Program | None:
        """A spare program process that is still alive, or None (one more is asked for either way)."""
        while self.spares:
            program = self.spares.popleft()
            if program.exited is None:
                self.replenish()
                return program
            self.programs.pop(program.pid, None)  # died before its boot (should not happen): never used
            program.close_fds()
        self.replenish()
        return None

    def check_forks(self) -> None:
        oldest = min((asked for _, _, asked in self.pending.values()), default=None)
        if oldest is not None and time.monotonic() - oldest > FORK_DEADLINE_S:
            raise Tainted(f"the zygote did not fork within {FORK_DEADLINE_S:.0f} s")

    # -- one batch --------------------------------------------------------------------------------
    def run_batch(self, request: BatchRequest) -> messages.BatchReply:
        if request.limits != self.limits:
            raise Tainted("a batch asked for other limits than this sandbox was started with")
        self.request = request
        self.job = messages.DriverJob(tests=request.tests, stop_on_first_failure=request.stop_on_first_failure,
                                      reply_max_bytes=request.limits.reply_max_bytes,
                                      judge_cpu_time_s=request.limits.judge_cpu_time_s)
        stdio = request.tests.form in ("stdio", "inline")  # the supervisor runs the program per case
        pending = deque(request.samples)
        reports: list[SampleReport] = []
        try:
            while (pending and not self.taint) or self.runs:
                for slot in range(self.slots):
                    if slot not in self.runs and pending and not self.taint and self.can_start(slot, stdio):
                        self.start(slot, pending.popleft(), stdio)
                reports += self.step(block=True)
                self.check_forks()
        except Tainted as exc:  # the zygote or a driver could not be used: stop here
            self.taint = self.taint or str(exc)
        finally:
            for slot in list(self.drivers):
                self.drivers.pop(slot).close()
            self.replenish()
        if self.taint:
            for run in self.runs.values():  # a batch cut short: samples in flight were not judged in full
                pending.appendleft(run.sample)
            self.runs.clear()
        return messages.BatchReply(op="result", samples=tuple(reports), unrun=tuple(s.id for s in pending),
                                   healthy=not self.taint, anomalies=(clean(self.taint, 500),) if self.taint else ())

    @property
    def toolchain(self) -> Toolchain | None:
        return self.request.toolchain if self.request is not None else None

    # -- other languages: one build per sample, then a run per case ----------------------------------
    def program_files(self, run: Run) -> tuple[tuple[str, str], ...]:
        """The files of a sample's build: its program (with the inline tests after it) and the tests' own."""
        assert self.request is not None
        tests, sample = self.request.tests, run.sample
        if tests.form != "inline":
            return ((sample.source_name, sample.source),)
        source = tests.preamble + sample.source + "\n" + tests.code.replace(messages.NONCE_MARK, run.nonce)
        return ((sample.source_name, source),
                *((name, text.replace(messages.NONCE_MARK, run.nonce)) for name, text in tests.support))

    def begin_build(self, run: Run) -> None:
        """Compile the sample once (or find the same files built before); cases wait for it."""
        toolchain = self.toolchain
        assert toolchain is not None
        files = self.program_files(run)
        if not toolchain.compile:  # interpreted: the source itself is what every run reads
            run.build = {name: (0o444, text.encode("utf-8", "surrogatepass")) for name, text in files}
            return
        # the nonce differs per sample, so inline builds never share; identical stdio programs do
        run.build_key = hashlib.sha256(json.dumps([files, toolchain.compile, toolchain.env, run.sample.main]).encode(
            "utf-8", "surrogatepass")).hexdigest()
        known = self.builds.get(run.build_key)
        if known is not None:
            self.builds.move_to_end(run.build_key)
            if isinstance(known, str):
                run.compile_error = known
            else:
                run.build = known
            run.timings["build_cached"] = 1.0
            return
        program = self.take_spare()
        if program is None:
            run.building = True  # check() tries again when a spare arrives
            return
        limits = self.limits
        program.boot("exec", "", limits.compile_cpu_time_s, limits.compile_wall_time_s, b"", limits.compile_output_max_bytes,
                     argv=self.expand(toolchain.compile, run), files=files, memory_bytes=limits.compile_memory_mib << 20,
                     env=toolchain.env, guard=toolchain.compile_guard)
        program.run_alone()
        run.program, run.building = program, True

    def expand(self, argv: tuple[str, ...], run: Run) -> tuple[str, ...]:
        return tuple(part.replace("{main}", run.sample.main).replace("{source}", run.sample.source_name) for part in argv)

    def check_build(self, run: Run, now: float) -> None:
        program = run.program
        if program is None:
            self.begin_build(run)
            return
        if not program.limit:
            if now >= run.next_poll:
                run.next_poll = now + CPU_POLL_S
                program.account()
                if program.cpu_s() >= program.cpu_limit:
                    self.stop_build(program, "cpu")
            if not program.limit and now >= program.started + program.wall_limit:
                self.stop_build(program, "wall")
        if program.done() or (program.limit and program.exited is not None):
            self.build_finished(run, program)

    def stop_build(self, program: Program, limit: str) -> None:
        program.limit, program.stopped_at = limit, time.monotonic()
        kill_uid(program.uid, self.zygote.pid)

    def build_finished(self, run: Run, program: Program) -> None:
        """Keep what the compile step left in out/ (or its messages), after every process of it is gone."""
        assert program.exited is not None
        status = os.waitstatus_to_exitcode(program.exited.status)
        outcome: dict[str, tuple[int, bytes]] | str = ""

        def harvest(done: Program) -> None:
            nonlocal outcome
            if program.limit:
                kind = "CPU" if program.limit == "cpu" else "wall-clock"
                outcome = f"compile step exceeded its {kind} time limit ({program.cpu_s():.1f} s CPU)"
            elif status != 0:
                said = (done.err.text() + done.out.text()).strip()
                if len(said) > 3000:  # the first errors say most; a crash's last lines say why
                    said = said[:2000] + "\n...\n" + said[-900:]
                outcome = clean(said, 3000) or f"the compiler exited with status {status}"
            else:
                os.lchown(done.scratch, 0, 0)  # to reach out/ (the wipe takes it back anyway)
                outcome = harvest_build(os.path.join(done.scratch, "out"), self.limits.build_max_bytes)

        self.release(run, program, harvest)
        run.program, run.building = None, False
        run.timings.update(compile_s=round(time.monotonic() - program.started, 4), compile_cpu_s=round(program.cpu_s(), 4))
        run.started = time.monotonic()  # the sample's own clocks start after its build
        if isinstance(outcome, str):
            run.compile_error = "compile error: " + (outcome or "the compile step ended without a result")
        else:
            run.build = outcome
        if run.build_key and (run.build is not None or status != 0) and not program.limit:
            self.builds[run.build_key] = run.build if run.build is not None else run.compile_error
            while len(self.builds) > 1 and sum(len(b) if isinstance(b, str) else sum(len(d) for _, d in b.values())
                                               for b in self.builds.values()) > BUILD_CACHE_BYTES:
                self.builds.popitem(last=False)

    def install_build(self, run: Run, program: Program) -> None:
        """A root-owned, read-only copy of the sample's build in the case's own directory (``out/``)."""
        assert run.build is not None
        out = os.path.join(program.scratch, "out")
        os.chown(program.scratch, 0, 0)  # root has no DAC override: the spare, not yet booted, waits meanwhile
        try:
            self.write_build(run.build, out)
        finally:
            os.chown(program.scratch, program.uid, program.uid)

    @staticmethod
    def write_build(build: dict[str, tuple[int, bytes]], out: str) -> None:
        os.mkdir(out, 0o755)
        folders = sorted({os.path.dirname(name) for name in build} - {""}, key=len)
        for folder in folders:
            os.makedirs(os.path.join(out, folder), 0o755, exist_ok=True)
        for name, (mode, data) in build.items():
            fd = os.open(os.path.join(out, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        for folder in [*reversed(folders), ""]:
            os.chmod(os.path.join(out, folder), 0o555)

    def can_start(self, slot: int, stdio: bool) -> bool:
        has_driver = slot in self.drivers or slot in self.spare_drivers
        return has_driver and (stdio or any(p.exited is None for p in self.spares))

    def start(self, slot: int, sample: messages.SampleProgram, stdio: bool) -> None:
        if slot not in self.drivers:
            driver = self.drivers[slot] = self.spare_drivers.pop(slot)
            assert self.job is not None
            driver.start(self.job)
            self.replenish()
        driver = self.drivers[slot]
        run = Run(slot, sample, driver, stdio, self.limits)
        fds: list[int] = []
        if not stdio:
            program = self.take_spare()
            assert program is not None  # can_start saw one
            program.boot("serve", sample.source, self.limits.cpu_time_s, self.limits.wall_time_s, b"",
                         self.limits.output_max_bytes, memory_bytes=self.limits.memory_mib << 20)
            run.program = program
            fds = [program.request_w, program.reply_r]
        elif self.toolchain is not None and not self.toolchain.native:
            self.begin_build(run)
        try:
            driver.cpu_base = driver.cpu()
            driver.send(messages.Judge(op="judge", sample_id=sample.id), fds)
        except OSError:
            run.judge_fault, run.judged_at = driver.describe_death(), time.monotonic()
        if not stdio and run.program is not None:
            run.program.handed_over()
        self.runs[slot] = run

    # -- the event loop -----------------------------------------------------------------------------
    def step(self, block: bool) -> list[SampleReport]:
        """Serve one round of events; return the reports of samples that finished."""
        readers: dict[int, tuple[str, Any]] = {self.zygote.socket.fileno(): ("zygote", None)}
        writers: dict[int, Writer] = {}
        for slot, driver in self.drivers.items():
            readers[driver.control.fileno()] = ("driver", slot)
            if driver.stderr_fd is not None:
                readers[driver.stderr_fd] = ("driver-stderr", driver)
            if driver.writer is not None and driver.writer.fd is not None:
                writers[driver.writer.fd] = driver.writer
        for program in self.programs.values():
            for fd in program.streams:
                readers[fd] = ("stream", program)
            for writer in program.writers:
                if writer.fd is not None:
                    writers[writer.fd] = writer
        now = time.monotonic()
        wake = min([self.next_timer(run) for run in self.runs.values()], default=now + 1.0)
        readable, writable, _ = select.select(list(readers), list(writers), [], max(0.0, wake - now) if block else 0)
        for fd in writable:
            writers[fd].pump()
        for fd in readable:
            kind, owner = readers[fd]
            if kind == "zygote":
                self.zygote_event()
            elif kind == "driver":
                self.driver_event(owner)
            elif kind == "driver-stderr":
                self.driver_stderr(owner, fd)
            else:
                self.stream_event(owner, fd)
        reports = []
        for run in list(self.runs.values()):
            if self.check(run):
                reports.append(self.finish(run))
        return reports

    def next_timer(self, run: Run) -> float:
        if run.judged is not None or run.judge_fault:
            return run.judged_at + EXIT_GRACE_S
        timers = [run.next_poll, run.started + run.limits.wall_time_s]
        if run.time_limit and not run.stdio:
            timers.append(run.stopped_at + DRIVER_GRACE_S)
        if run.program is not None and not run.program.limit:
            timers.append(run.program.started + run.program.wall_limit)
        if run.waiting_case is not None and not run.building:
            timers.append(time.monotonic() + 0.01)
        return min(timers)

    def zygote_event(self) -> None:
        message, fds = self.zygote.receive()
        if isinstance(message, messages.Forked):
            self.forked(message, fds)
            return
        for fd in fds:
            os.close(fd)
        program = self.programs.get(message.pid)
        if program is not None:
            program.exited = message
            return
        for driver in (*self.drivers.values(), *self.spare_drivers.values()):
            if driver.pid == message.pid:
                driver.exit_status = os.waitstatus_to_exitcode(message.status)

    def driver_event(self, slot: int) -> None:
        driver = self.drivers.get(slot)
        if driver is None:
            return
        try:
            data, ancillary, _, _ = driver.control.recvmsg(8 << 20, socket.CMSG_SPACE(CREDENTIALS.size))
        except OSError:
            data, ancillary = b"", []
        sender = next((CREDENTIALS.unpack(cmsg[2][:CREDENTIALS.size])[0] for cmsg in ancillary
                       if cmsg[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS) and len(cmsg[2]) >= CREDENTIALS.size),
                      None)
        run = self.runs.get(slot)
        if not data:
            self.driver_died(slot)
            return
        try:  # the driver is trusted, but it judged hostile values: a bad message is this sample's fault
            if len(data) > messages.JUDGED_MAX_BYTES:
                raise ValueError(f"a report of {len(data)} bytes")
            raw = json.loads(data)
            if raw.get("op") == "run_case":
                request = messages.from_dict(messages.RunCase, raw)
                if run is not None:
                    run.told_at = None  # the driver is done with the last case's output: it asks for the next case
                if run is not None and run.stdio and run.waiting_case is None and (run.program is None or run.building):
                    if run.building:
                        run.waiting_case = request.index  # asked for once the build is done
                    else:
                        self.run_case(run, request.index)
                return
            judged = messages.from_dict(Judged, raw)
            if sender != driver.pid:  # a judge's own report, never passed on by its template: not a verdict
                raise ValueError(f"a report sent by process {sender}, not by the test driver's template")
        except (ValueError, AttributeError) as exc:
            if run is not None:
                self.driver_gone(run, f"the test driver sent a malformed message: {str(exc)[:200]}")
            else:
                self.driver_died(slot)
            return
        if run is not None and judged.sample_id == run.sample.id and run.judged is None and not run.judge_fault:
            run.judged, run.judged_at = judged, time.monotonic()

    def run_case(self, run: Run, index: int) -> None:
        """Run the program once on stdio case ``index``: a fresh process and uid, the case's input on stdin."""
        assert self.request is not None and self.request.tests.form in ("stdio", "inline")
        run.told_at = None  # the driver has judged the last case's output
        if run.time_limit or run.compile_error:  # the sample's own budget is spent, or it did not build: not run
            run.waiting_case = None
            self.tell_case(run, CaseRun(op="case", index=index, exit_status=None, limit="" if run.compile_error else "sample",
                                        cpu_s=0.0, wall_s=0.0, max_rss_kib=0, stdout_truncated=False, stderr="",
                                        compile_error=run.compile_error), b"")
            return
        program = self.take_spare()
        if program is None:
            run.waiting_case = index
            return
        run.waiting_case = None
        limits = self.limits
        cpu_left = limits.cpu_time_s - run.cpu_done
        wall_left = run.started + limits.wall_time_s - time.monotonic()
        run.case = index
        tests = self.request.tests
        cpu_s, wall_s = max(0.01, min(limits.case_cpu_time_s, cpu_left)), max(0.01, min(limits.case_wall_time_s, wall_left))
        stdin = tests.cases[index].input.encode() if tests.form == "stdio" else b""
        toolchain = self.request.toolchain
        if toolchain.native:
            assert tests.form == "stdio"
            program.boot("run", run.sample.source, cpu_s, wall_s, stdin, limits.case_output_max_bytes, tests.apps_wrap,
                         memory_bytes=limits.memory_mib << 20)
        else:
            self.install_build(run, program)
            program.boot("exec", "", cpu_s, wall_s, stdin, limits.case_output_max_bytes, argv=self.expand(toolchain.run, run),
                         memory_bytes=limits.memory_mib << 20, env=toolchain.env, guard=toolchain.run_guard)
        program.run_alone()
        run.program = program

    def tell_case(self, run: Run, report: CaseRun, stdout: bytes) -> None:
        try:
            run.driver.cpu_base = run.driver.cpu()  # stdio: the driver's budget is per case's output it judges
            run.told_at = time.monotonic()
            run.driver.send(report, payload=stdout)
        except OSError:
            self.driver_gone(run, run.driver.describe_death())

    def driver_died(self, slot: int) -> None:
        driver = self.drivers.pop(slot)
        deadline = time.monotonic() + 0.2
        while driver.stderr_fd is not None and time.monotonic() < deadline:
            if select.select([driver.stderr_fd], [], [], 0.05)[0]:
                self.driver_stderr(driver, driver.stderr_fd)
        run = self.runs.get(slot)
        if run is not None and run.judged is None and not run.judge_fault:
            run.judge_fault, run.judged_at = driver.describe_death(), time.monotonic()
        driver.close()

    def driver_stderr(self, driver: Driver, fd: int) -> None:
        if driver.stderr_fd != fd:
            return
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            driver.stderr.feed(chunk)
        else:
            os.close(fd)
            driver.stderr_fd = None

    def stream_event(self, program: Program, fd: int) -> None:
        if fd not in program.streams:
            return
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            program.streams[fd].feed(chunk)
        else:
            os.close(fd)
            del program.streams[fd]

    def stop(self, run: Run, program: Program, limit: str, clock: str) -> None:
        """A limit fired (``limit``: the run's own "cpu"/"wall", or the stdio sample's whole "sample" budget,
        counted on ``clock``): end every process of the program; the driver then reports what it saw."""
        program.limit, program.stopped_at = limit, time.monotonic()
        self.sweep(run, program)
        if not run.stdio or limit == "sample":
            run.time_limit, run.stopped_at = clock, program.stopped_at

    def sweep(self, run: Run, program: Program) -> None:
        """End every process of a program that is still running. Processes that outlive the sweep (a fork bomb
        outrunning it) taint the sandbox, which is discarded after this batch; the run itself goes on to its
        report (its limit is what stopped it), so that it is judged once, not run again in a fresh sandbox."""
        try:
            kill_uid(program.uid, self.zygote.pid)
        except Tainted as exc:
            self.taint = self.taint or str(exc)
            run.leftovers.append(str(exc))

    def check(self, run: Run) -> bool:
        """Enforce limits; True once the run can be finished."""
        now = time.monotonic()
        if run.judged is not None or run.judge_fault:
            return run.program is None or run.program.exited is not None or now >= run.judged_at + EXIT_GRACE_S
        if run.building:
            self.check_build(run, now)
            if run.building or run.waiting_case is None:
                return False
        program = run.program
        if now >= run.next_poll:  # CPU, polled: the program's processes, and the driver judging them
            run.next_poll = now + CPU_POLL_S
            if not run.stdio and run.driver.cpu() - run.driver.cpu_base > run.limits.judge_cpu_time_s:
                self.driver_gone(run, f"judging this sample's values took the test driver more than "
                                      f"{run.limits.judge_cpu_time_s:g} s of CPU")
                return False
            # stdio: the driver judges one case's output at a time (bounded): its work is the problem's checker's
            if run.stdio and run.driver.cpu() - run.driver.cpu_base > run.limits.judge_cpu_time_s + JUDGE_MARGIN_S:
                what = f"judging case {run.case + 1}'s output" if run.case >= 0 else "loading the problem's checker"
                self.problem_gone(run, f"{what} took the test driver more than {run.limits.judge_cpu_time_s + JUDGE_MARGIN_S:g}"
                                       f" s of CPU (a checker's budget is {run.limits.judge_cpu_time_s:g} s a case)")
                return False
            if program is not None and not program.limit:
                program.account()
                if run.stdio and run.cpu_s() >= run.limits.cpu_time_s:
                    self.stop(run, program, "sample", "cpu")
                elif program.cpu_s() >= program.cpu_limit:
                    self.stop(run, program, "cpu", "cpu")
        # stdio: a checker that waits (sleeps, blocks) spends no CPU; its wall time on one case is bounded too
        wall_budget = run.limits.judge_cpu_time_s * JUDGE_WALL_FACTOR + JUDGE_MARGIN_S
        if run.stdio and run.told_at is not None and now >= run.told_at + wall_budget:
            self.problem_gone(run, f"judging case {run.case + 1}'s output took the test driver more than {wall_budget:g} s "
                                   f"of wall time (a checker's budget is {run.limits.judge_cpu_time_s:g} s of CPU a case)")
            return False
        if program is not None and not program.limit:
            if run.stdio and now >= run.started + run.limits.wall_time_s:
                self.stop(run, program, "sample", "wall")
            elif now >= program.started + program.wall_limit:
                self.stop(run, program, "wall", "wall")
            elif run.stdio and program.out.truncated and not program.stopped_at:  # output limit: judged as such
                program.stopped_at = now                                           # now, not at a later timeout
                self.sweep(run, program)
        if run.judged is None and not run.judge_fault and (template := seen(run.driver.pid)) is not None \
                and template.state in "Tt":  # only a judge (its uid) can stop its template: this sample's values ran there
            self.driver_gone(run, "the test driver was stopped while it judged this sample (a judge of its values "
                                  "signalled it)")
            return False
        if not run.stdio:
            if run.time_limit and now >= run.stopped_at + DRIVER_GRACE_S:  # the driver did not come back
                self.driver_gone(run, f"the test driver did not report within {DRIVER_GRACE_S:.0f} s of the sample's end")
            return False
        if program is not None and (program.done() or (program.limit and program.exited is not None)):
            self.case_finished(run, program)
        elif program is None:
            if now >= run.started + run.limits.wall_time_s and not run.time_limit:
                run.time_limit, run.stopped_at = "wall", now  # between cases: told at the driver's next request
            if run.waiting_case is not None:
                self.run_case(run, run.waiting_case)
        return False

    def case_finished(self, run: Run, program: Program) -> None:
        """Hand the driver what one stdio run produced, after its processes and files are gone."""
        exited = program.exited
        assert exited is not None
        status = os.waitstatus_to_exitcode(exited.status)
        if not program.limit and program.rlimit_fired(status):
            program.limit = "cpu"  # RLIMIT_CPU fired before the supervisor's poll did
        self.release(run, program)
        run.program = None
        run.cpu_done += program.cpu_s()
        run.ticks_done += program.raw_s()
        if not program.limit and program.cpu_s() >= program.cpu_limit:  # counted in full only once settled
            program.limit = "cpu"
        elif not program.limit and run.cpu_done >= run.limits.cpu_time_s:
            program.limit, run.time_limit = "sample", "cpu"
        run.max_rss_kib = max(run.max_rss_kib, exited.max_rss_kib)
        run.stderr.feed(program.err.data)
        wall = (program.stopped_at or time.monotonic()) - program.started
        report = CaseRun(op="case", index=run.case, exit_status=None if program.limit else status,
                         limit=program.limit, cpu_s=round(program.cpu_s(), 4), wall_s=round(wall, 4),  # type: ignore[arg-type]
                         max_rss_kib=exited.max_rss_kib, stdout_truncated=program.out.truncated,
                         stderr=clean(program.err.text()[-2000:], 2000), compile_error=program.compile_error(),
                         nonce=run.nonce)
        self.tell_case(run, report, bytes(program.out.data))

    def driver_gone(self, run: Run, reason: str) -> None:
        run.judge_fault, run.judged_at = reason, time.monotonic()
        driver = self.drivers.pop(run.slot, None)
        if driver is not None:
            driver.close()

    def problem_gone(self, run: Run, reason: str) -> None:
        """The driver is stopped for what the problem's own code did: the sample is not charged with it."""
        run.judged, run.judged_at = Judged(sample_id=run.sample.id, load="loaded", test_fault=reason), time.monotonic()
        driver = self.drivers.pop(run.slot, None)
        if driver is not None:
            driver.close()

    # -- after a program, after a sample ---------------------------------------------------------------
    def release(self, run: Run, program: Program, harvest: Any = None) -> None:
        """End every process of the program's uid, read its output to the end, (``harvest`` what it built,)
        wipe its files."""
        try:
            killed = program.settle(self.zygote.pid) + kill_uid(program.uid, self.zygote.pid)
            if killed and not program.limit:
                run.leftovers.append(f"{killed} process(es) still running after the program's end: killed")
        except Tainted as exc:
            self.taint = self.taint or str(exc)
            run.leftovers.append(str(exc))
        deadline = time.monotonic() + 1.0
        while (program.streams or program.exited is None) and time.monotonic() < deadline:
            watched = [*program.streams, self.zygote.socket.fileno()]
            for fd in select.select(watched, [], [], 0.05)[0]:
                if fd == self.zygote.socket.fileno():
                    self.zygote_event()
                else:
                    self.stream_event(program, fd)
        program.account()  # the swept zombies as settled, and the first process's own exit figures
        if harvest is not None:
            harvest(program)
        program.close_fds()
        self.programs.pop(program.pid, None)
        try:
            run.leftovers += self.clean_up(program)
        except (Tainted, OSError) as exc:
            self.taint = self.taint or str(exc)
            run.leftovers.append(str(exc))

    def finish(self, run: Run) -> SampleReport:
        """Report one sample. The report stands even if cleanup is incomplete (its judging was done in other
        trust domains); an incomplete cleanup taints the sandbox, so nothing trusted runs here again."""
        finishing = time.monotonic()
        program = run.program
        if program is not None:
            run.timings["fork_s"] = program.fork_s
            self.release(run, program)
            if not run.stdio:
                run.stdout, run.stderr = program.out, program.err
                run.max_rss_kib = program.exited.max_rss_kib if program.exited else 0
                if program.exited is not None:
                    run.exit_status = os.waitstatus_to_exitcode(program.exited.status)
                    if not run.time_limit and program.rlimit_fired(run.exit_status):
                        run.time_limit = "cpu"
                run.cpu_done, run.ticks_done = program.cpu_s(), program.raw_s()
                if not run.time_limit and run.cpu_done >= program.cpu_limit:  # counted in full only once settled
                    run.time_limit = "cpu"
            run.program = None
        del self.runs[run.slot]
        judged = run.judged or Judged(sample_id=run.sample.id, load="no_report")
        if run.judge_fault:
            judged = Judged(sample_id=run.sample.id, load=judged.load)
        end = run.stopped_at or run.judged_at or time.monotonic()
        run.timings.update(running_s=end - run.started, finishing_s=time.monotonic() - finishing, cpu_ticks_s=run.ticks_done,
                           driver_cpu_s=max(0.0, run.driver.cpu() - run.driver.cpu_base))
        return SampleReport(id=run.sample.id, judged=judged, judge_fault=clean(run.judge_fault, 1000),
                            time_limit=run.time_limit, exit_status=run.exit_status,  # type: ignore[arg-type]
                            cpu_s=round(run.cpu_s(), 4), wall_s=round(end - run.started, 4), max_rss_kib=run.max_rss_kib,
                            stdout=clean(run.stdout.text(), run.stdout.cap), stderr=clean(run.stderr.text(), run.stderr.cap),
                            stdout_truncated=run.stdout.truncated, stderr_truncated=run.stderr.truncated,
                            leftovers=bounded(run.leftovers),
                            timings=tuple((name, round(value, 4)) for name, value in run.timings.items()))

    def clean_up(self, program: Program) -> list[str]:
        """Wipe what the program wrote; what cannot be wiped taints the sandbox (``Tainted``)."""
        found = []
        deadline = time.monotonic() + WIPE_DEADLINE_S
        wipe(program.scratch, deadline)
        known = {str(p.uid) for p in self.programs.values()} | {str(uid) for uid in self.pending_uids()}
        for slot in range(self.slots):
            root = os.path.join(SCRATCH_ROOT, str(slot))
            strays = [name for name in os.listdir(root) if name not in known]
            if strays:
                raise Tainted(f"unexpected entries in {root}: {strays[:5]}")
        live = {p.uid for p in self.programs.values()} | self.pending_uids()
        judges = {judge_uid(slot, bank) for slot in range(self.slots) for bank in range(JUDGE_BANKS)}
        if os.path.isdir(SHM):
            removed = []
            for entry in os.scandir(SHM):
                if entry.stat(follow_symlinks=False).st_uid in live:
                    continue  # another sample's running program is using it
                removed.append(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    wipe(entry.path, deadline)
                else:
                    os.unlink(entry.path)
            if removed:  # one line, however many: a sample chooses how many it leaves
                found.append(f"left {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} in {SHM} (removed): "
                             + ", ".join(clean(path, 100) for path in removed[:3]))
        ipc = sysv_ipc_objects()
        if ipc:
            raise Tainted(f"a sample left {', '.join(ipc)}: this sandbox is discarded")
        strays_p = [pid for pid, uid in uids().items() if uid != 0 and uid not in live and uid not in judges
                    and (state := seen(pid)) is not None and state.state not in "ZX"]
        if strays_p:
            raise Tainted(f"{len(strays_p)} process(es) of earlier programs outlived their sweep")
        return found


def main() -> None:
    hardening.make_unreachable()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a program that dies before reading its input: EPIPE, not death
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    frame = protocol.read_frame(stdin)
    hello = messages.from_dict(messages.Hello, frame)
    key = bytes.fromhex(hello.key)

    def send(message: Any) -> None:
        stdout.write(protocol.pack(messages.to_dict(message), key))
        stdout.flush()

    # The zygote is forked after the key arrived, but exec replaces its memory image at once.
    supervisor = Supervisor(hello.limits, hello.slots)
    send(messages.Ready(op="ready", kernel=os.uname().release, python=sys.version.split()[0]))
    while True:
        try:
            frame = protocol.read_frame(stdin)
        except protocol.FrameError as exc:  # too large or not JSON: nothing of it ran, and the stream is lost
            send(messages.Refused(op="refused", message=clean(f"request refused: {exc}", 1000)))
            return
        if frame is None or frame.get("op") == "exit":
            return
        try:
            request = messages.from_dict(BatchRequest, frame)
        except messages.MessageError as exc:
            send(messages.Refused(op="refused", message=clean(f"bad request: {exc}", 1000)))
            continue
        try:
            reply = supervisor.run_batch(request)
        except Tainted as exc:
            send(messages.Failure(op="error", message=clean(f"sandbox integrity: {exc}", 1000)))
            return
        send(reply)
        if not reply.healthy:
            return
        while not select.select([stdin], [], [], 0)[0]:  # between batches: finish forking spares
            if not supervisor.pending:
                break
            supervisor.step(block=True)


if __name__ == "__main__":
    main()
