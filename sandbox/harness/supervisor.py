"""The sandbox's first process: takes batches from the host and judges each sample in its own trust domain.

Runs as PID 1 of a gVisor container, as root with only the capabilities that switching users
needs (SETUID, SETGID, KILL, CHOWN), non-dumpable. Three trust domains, walled by uids:

* trusted, root: this supervisor and the zygote (``zygote.py``), which forks every child;
* trusted, a judge uid per slot: the test driver (``driver.py``), which runs the tests;
* untrusted, a fresh uid per sample, never reused in this sandbox: the sample's processes.

For each sample the supervisor makes a scratch directory only that uid can use, has the zygote
fork the sample's process, writes it its program, and hands the driver the two pipe ends that
lead to it. It enforces the sample's CPU time (over all its processes) and wall time, and the
driver's CPU per sample, from outside: no sample can signal or stop it. When the driver reports,
every process of the sample's uid is killed, its files are wiped and the shared places are
checked; if anything cannot be cleaned (a process that outlives the sweep, an IPC object), the
batch stops and the host is told to discard this sandbox before anything trusted runs here again.

Replies to the host are HMAC-authenticated frames on stdout.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import hardening  # noqa: E402
import messages  # noqa: E402
import protocol  # noqa: E402
from messages import BatchRequest, Judged, Limits, SampleReport  # noqa: E402

SCRATCH_ROOT = "/scratch"        # one tmpfs per slot: /scratch/<slot>, root-owned 0711
SHM = "/dev/shm"
FIRST_SAMPLE_UID = 100_000       # samples: 100000, 100001, ... never reused in one sandbox
LAST_SAMPLE_UID = 1_000_000
JUDGE_UID = 2_000                # drivers: 2000 + slot
READ_CHUNK = 65536
CPU_POLL_S = 0.1
EXIT_GRACE_S = 0.5               # for the sample to flush its output after the driver's "end"
DRIVER_GRACE_S = 2.0             # for the driver to report after its sample was stopped
SWEEP_DEADLINE_S = 3.0           # a uid whose processes are not all gone by then taints the sandbox
WIPE_DEADLINE_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DRIVER_STDERR_BYTES = 8192


def child_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clean(text: str, limit: int) -> str:
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


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
def process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (real uid, state, CPU seconds) of every process but this one."""
    table = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
            with open(f"/proc/{name}/status", "rb") as handle:
                status = handle.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith(b"Uid:"))
        table[int(name)] = (uid, fields[0].decode(), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


def cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reap_orphans(zygote_pid: int) -> None:
    """Processes whose parents died are re-parented to PID 1: collect them."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == zygote_pid:
            raise Tainted("the zygote exited")


def kill_uid(uid: int, zygote_pid: int) -> int:
    """SIGKILL every process of ``uid`` until none is left; the number found, or ``Tainted``."""
    deadline = time.monotonic() + SWEEP_DEADLINE_S
    found: set[int] = set()
    while True:
        alive = [pid for pid, (owner, state, _) in process_table().items() if owner == uid and state not in "ZX"]
        if not alive:
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
        reap_orphans(zygote_pid)


def wipe(path: str, deadline: float) -> None:
    """Remove a tree a sample owned: take each directory back (chown) before emptying it."""
    if time.monotonic() > deadline:
        raise Tainted(f"wiping {path} took longer than {WIPE_DEADLINE_S:.0f} s")
    os.lchown(path, 0, 0)
    os.chmod(path, 0o700)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                wipe(entry.path, deadline)
            else:
                os.unlink(entry.path)
    os.rmdir(path)


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


# -- the zygote and its children ----------------------------------------------------------------
class Zygote:
    """The supervisor's end of the fork server."""

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
        self.tokens = itertools.count(1)
        self.exits: deque[messages.Exited] = deque()

    def fork(self, kind: str, uid: int, cwd: str, rlimits: messages.Rlimits) -> tuple[int, list[int]]:
        token = next(self.tokens)
        request = messages.ForkRequest(token=token, kind=kind, uid=uid, cwd=cwd, env=child_env(cwd), rlimits=rlimits)  # type: ignore[arg-type]
        try:
            self.socket.send(json.dumps(messages.to_dict(request)).encode())
        except OSError as exc:
            raise Tainted(f"the zygote does not take requests: {exc}") from exc
        deadline = time.monotonic() + 30
        while True:
            ready, _, _ = select.select([self.socket], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise Tainted("the zygote did not fork within 30 s")
            message, fds = self.receive()
            if isinstance(message, messages.Forked) and message.token == token:
                return message.pid, fds
            for fd in fds:
                os.close(fd)

    def receive(self) -> tuple[Any, list[int]]:
        """One message from the zygote; ``Exited`` messages are also queued in ``exits``."""
        data, fds, _, _ = socket.recv_fds(self.socket, 1 << 16, 8)
        if not data:
            raise Tainted("the zygote exited")
        raw = json.loads(data)
        if raw.get("event") == "exited":
            exited = messages.from_dict(messages.Exited, raw)
            self.exits.append(exited)
            return exited, fds
        return messages.from_dict(messages.Forked, raw), fds


class Driver:
    """A test driver of one slot: forked per batch, judging that slot's samples one at a time."""

    def __init__(self, zygote: Zygote, slot: int, job: messages.DriverJob, limits: Limits) -> None:
        self.uid = JUDGE_UID + slot
        rlimits = messages.Rlimits(cpu_s=0, memory_bytes=limits.memory_mib << 20, file_size_bytes=1 << 20,
                                   open_files=256, processes=64)
        self.pid, (boot, control, stderr) = zygote.fork("driver", self.uid, "/", rlimits)
        self.control = socket.socket(fileno=control)
        self.stderr_fd = stderr
        self.stderr = Capture(DRIVER_STDERR_BYTES)
        body = json.dumps(messages.to_dict(job)).encode()
        self.boot = Writer(boot, protocol.HEADER.pack(len(body)) + body)
        self.exit_status: int | None = None
        self.cpu_base = 0.0

    def cpu_s(self) -> float:
        return cpu_of(self.pid)

    def judge(self, sample_id: str, fds: list[int]) -> None:
        self.cpu_base = self.cpu_s()
        socket.send_fds(self.control, [json.dumps(messages.to_dict(messages.Judge(sample_id))).encode()], fds)

    def describe_death(self) -> str:
        status = "" if self.exit_status is None else f" (exit status {self.exit_status})"
        tail = self.stderr.text().strip()[-600:]
        return f"the test driver died{status}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        for fd in (self.boot.fd, self.stderr_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.boot.fd = None
        self.control.close()


class Writer:
    """A payload written to a pipe as the reader takes it (the loop never blocks on a full pipe)."""

    def __init__(self, fd: int, data: bytes) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.data = memoryview(data)

    def pump(self) -> None:
        assert self.fd is not None
        try:
            written = os.write(self.fd, self.data[:1 << 20])
        except BlockingIOError:
            return
        except OSError:  # the reader is gone (a sample that died at once): its own fault, seen elsewhere
            written = len(self.data)
        self.data = self.data[written:]
        if not self.data:
            os.close(self.fd)
            self.fd = None


class Run:
    """One sample in flight in one slot."""

    def __init__(self, slot: int, sample: messages.SampleProgram, uid: int, scratch: str, limits: Limits) -> None:
        self.slot, self.sample, self.uid, self.scratch, self.limits = slot, sample, uid, scratch, limits
        self.pid = 0
        self.started = time.monotonic()
        self.out = Capture(limits.output_max_bytes)
        self.err = Capture(limits.output_max_bytes)
        self.streams: dict[int, Capture] = {}
        self.boot: Writer | None = None
        self.judged: Judged | None = None
        self.judge_fault = ""
        self.time_limit = ""
        self.stopped_at = 0.0          # when the sample was killed for a limit
        self.judged_at = 0.0
        self.exited: messages.Exited | None = None
        self.cpu_seen: dict[int, float] = {}
        self.next_poll = self.started + CPU_POLL_S

    def cpu_s(self) -> float:
        polled = sum(self.cpu_seen.values())
        return max(polled, self.exited.cpu_s if self.exited else 0.0)


class Supervisor:
    def __init__(self) -> None:
        self.zygote = Zygote()
        self.uids = iter(range(FIRST_SAMPLE_UID, LAST_SAMPLE_UID))
        self.taint = ""

    # -- one batch --------------------------------------------------------------------------------
    def run_batch(self, request: BatchRequest, slots: int = 1) -> messages.BatchReply:
        job = messages.DriverJob(form=request.form, entry_point=request.entry_point, prelude=request.prelude,
                                 program_names=request.program_names, units=request.units,
                                 stop_on_first_failure=request.stop_on_first_failure,
                                 reply_max_bytes=request.limits.reply_max_bytes)
        self.job, self.limits = job, request.limits
        self.drivers: dict[int, Driver] = {}
        self.runs: dict[int, Run] = {}
        pending = deque(request.samples)
        reports: list[SampleReport] = []
        anomalies: list[str] = []
        try:
            while (pending and not self.taint) or self.runs:
                for slot in range(slots):
                    if slot not in self.runs and pending and not self.taint:
                        self.start(slot, pending.popleft())
                for run in self.step():
                    reports.append(self.finish(run))
        except Tainted as exc:  # the zygote or a driver could not be used: stop here
            self.taint = self.taint or str(exc)
        finally:
            for slot in list(self.drivers):
                self.stop_driver(slot)
        if self.taint:
            anomalies.append(self.taint)
            for run in self.runs.values():  # a batch cut short: those in flight were not judged in full
                pending.appendleft(run.sample)
        return messages.BatchReply(op="result", samples=tuple(reports), unrun=tuple(s.id for s in pending),
                                   healthy=not self.taint, anomalies=tuple(anomalies))

    def driver(self, slot: int) -> Driver:
        if slot not in self.drivers:
            self.drivers[slot] = Driver(self.zygote, slot, self.job, self.limits)
        return self.drivers[slot]

    def stop_driver(self, slot: int) -> None:
        driver = self.drivers.pop(slot)
        driver.close()
        if driver.exit_status is None:
            try:
                os.kill(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_uid(driver.uid, self.zygote.pid)

    def start(self, slot: int, sample: messages.SampleProgram) -> None:
        uid = next(self.uids, None)
        if uid is None:
            raise Tainted("this sandbox has used all its sample uids")
        if slot in self.drivers and self.drivers[slot].exit_status is not None:
            self.stop_driver(slot)
        self.driver(slot)
        scratch = os.path.join(SCRATCH_ROOT, str(slot), str(uid))
        os.mkdir(scratch, 0o700)
        os.chown(scratch, uid, uid)
        run = Run(slot, sample, uid, scratch, self.limits)
        limits = self.limits
        driver = self.drivers[slot]
        rlimits = messages.Rlimits(cpu_s=int(limits.cpu_time_s) + 1, memory_bytes=limits.memory_mib << 20,
                                   file_size_bytes=limits.file_size_mib << 20, open_files=limits.open_files,
                                   processes=limits.processes)
        run.pid, (boot, request_w, reply_r, out, err) = self.zygote.fork("sample", uid, scratch, rlimits)
        run.started = time.monotonic()
        run.next_poll = run.started + CPU_POLL_S
        body = json.dumps(messages.to_dict(messages.SampleBoot(source=sample.source))).encode()
        run.boot = Writer(boot, protocol.HEADER.pack(len(body)) + body)
        run.streams = {out: run.out, err: run.err}
        try:
            try:
                driver.judge(sample.id, [request_w, reply_r])
            except OSError:  # the driver ended between samples: a fresh one judges this sample
                self.stop_driver(slot)
                self.driver(slot).judge(sample.id, [request_w, reply_r])
        except OSError as exc:
            raise Tainted(f"no test driver could be started: {exc}") from exc
        finally:
            os.close(request_w)
            os.close(reply_r)
        self.runs[slot] = run

    # -- the event loop -----------------------------------------------------------------------------
    def step(self) -> list[Run]:
        """Wait for one round of events; return the runs that are ready to be finished."""
        self.process_exits()  # some arrived while the zygote was forking
        readers: dict[int, Any] = {self.zygote.socket.fileno(): ("zygote", None)}
        writers: dict[int, Writer] = {}
        for slot, driver in self.drivers.items():
            readers[driver.control.fileno()] = ("driver", slot)
            if driver.stderr_fd is not None:
                readers[driver.stderr_fd] = ("driver-stderr", slot)
            if driver.boot.fd is not None:
                writers[driver.boot.fd] = driver.boot
        for run in self.runs.values():
            for fd in run.streams:
                readers[fd] = ("stream", run)
            if run.boot is not None and run.boot.fd is not None:
                writers[run.boot.fd] = run.boot
        now = time.monotonic()
        timeout = max(0.0, min([self.next_timer(run) for run in self.runs.values()], default=now + 1) - now)
        readable, writable, _ = select.select(list(readers), list(writers), [], timeout)
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
        return [run for run in list(self.runs.values()) if self.check(run)]

    def next_timer(self, run: Run) -> float:
        if run.judged is not None or run.judge_fault:
            return run.judged_at + EXIT_GRACE_S
        if run.time_limit:
            return run.stopped_at + DRIVER_GRACE_S
        return min(run.next_poll, run.started + run.limits.wall_time_s)

    def zygote_event(self) -> None:
        _, fds = self.zygote.receive()
        for fd in fds:
            os.close(fd)
        self.process_exits()

    def process_exits(self) -> None:
        while self.zygote.exits:
            self.exited(self.zygote.exits.popleft())

    def exited(self, message: messages.Exited) -> None:
        for run in self.runs.values():
            if run.pid == message.pid:
                run.exited = message
                if os.waitstatus_to_exitcode(message.status) in (-signal.SIGXCPU, -signal.SIGKILL) \
                        and message.cpu_s >= run.limits.cpu_time_s - 0.05 and not run.time_limit:
                    self.stop(run, "cpu")
        for driver in self.drivers.values():
            if driver.pid == message.pid:
                driver.exit_status = os.waitstatus_to_exitcode(message.status)

    def driver_event(self, slot: int) -> None:
        driver = self.drivers.get(slot)
        if driver is None:
            return
        try:
            data = driver.control.recv(8 << 20)
        except OSError:
            data = b""
        run = self.runs.get(slot)
        if not data:
            self.driver_died(slot)
            return
        judged = messages.from_dict(Judged, json.loads(data))
        if run is not None and judged.sample_id == run.sample.id and run.judged is None and not run.judge_fault:
            run.judged, run.judged_at = judged, time.monotonic()

    def driver_died(self, slot: int) -> None:
        driver = self.drivers[slot]
        self.drain_driver_stderr(driver)
        run = self.runs.get(slot)
        if run is not None and run.judged is None and not run.judge_fault:
            run.judge_fault = driver.describe_death()
            run.judged_at = time.monotonic()
        self.stop_driver(slot)

    def driver_stderr(self, slot: int, fd: int) -> None:
        driver = self.drivers.get(slot)
        if driver is None or driver.stderr_fd != fd:  # it ended earlier in this round
            return
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            driver.stderr.feed(chunk)
        else:
            os.close(fd)
            driver.stderr_fd = None

    def drain_driver_stderr(self, driver: Driver) -> None:
        while driver.stderr_fd is not None and select.select([driver.stderr_fd], [], [], 0.05)[0]:
            chunk = os.read(driver.stderr_fd, READ_CHUNK)
            if not chunk:
                break
            driver.stderr.feed(chunk)

    def stream_event(self, run: Run, fd: int) -> None:
        if fd not in run.streams:
            return
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            run.streams[fd].feed(chunk)
        else:
            os.close(fd)
            del run.streams[fd]

    def stop(self, run: Run, limit: str) -> None:
        """A limit fired: end every process of the sample; the driver then reports what it saw."""
        run.time_limit, run.stopped_at = limit, time.monotonic()
        kill_uid(run.uid, self.zygote.pid)

    def check(self, run: Run) -> bool:
        """Enforce limits; True once the run can be finished."""
        now = time.monotonic()
        if run.judged is not None or run.judge_fault:
            return run.exited is not None or now >= run.judged_at + EXIT_GRACE_S
        if run.time_limit:
            if now >= run.stopped_at + DRIVER_GRACE_S:  # the driver did not come back from its sample
                run.judge_fault = f"the test driver did not report within {DRIVER_GRACE_S:.0f} s of the sample's end"
                run.judged_at = now
                self.kill_driver(run.slot)
            return False
        if now >= run.started + run.limits.wall_time_s:
            self.stop(run, "wall")
            return False
        if now >= run.next_poll:
            run.next_poll = now + CPU_POLL_S
            table = process_table()
            for pid, (uid, _, cpu) in table.items():
                if uid == run.uid:
                    run.cpu_seen[pid] = max(cpu, run.cpu_seen.get(pid, 0.0))
            if run.cpu_s() >= run.limits.cpu_time_s:
                self.stop(run, "cpu")
                return False
            driver = self.drivers.get(run.slot)
            if driver is not None and driver.pid in table \
                    and table[driver.pid][2] - driver.cpu_base > run.limits.judge_cpu_time_s:
                run.judge_fault = (f"judging this sample's values took the test driver more than "
                                   f"{run.limits.judge_cpu_time_s:g} s of CPU")
                run.judged_at = now
                self.kill_driver(run.slot)
        return False

    def kill_driver(self, slot: int) -> None:
        if slot in self.drivers:
            self.stop_driver(slot)

    # -- after a sample ------------------------------------------------------------------------------
    def finish(self, run: Run) -> SampleReport:
        """Report one sample after ending its processes and wiping what it wrote.

        The report stands even if cleanup is incomplete (its judging was done in other trust domains);
        an incomplete cleanup taints the sandbox, so nothing trusted runs here again."""
        leftovers = []
        try:
            killed = kill_uid(run.uid, self.zygote.pid)
            if killed:
                leftovers.append(f"{killed} process(es) of the sample still running after its tests: killed")
        except Tainted as exc:
            self.taint = self.taint or str(exc)
            leftovers.append(str(exc))
        deadline = time.monotonic() + 1.0
        while (run.streams or run.exited is None) and time.monotonic() < deadline:  # every writer is dead
            watched = [*run.streams, self.zygote.socket.fileno()]
            for fd in select.select(watched, [], [], 0.05)[0]:
                if fd == self.zygote.socket.fileno():
                    self.zygote_event()
                else:
                    self.stream_event(run, fd)
        del self.runs[run.slot]
        for fd in list(run.streams):
            os.close(fd)
        if run.boot is not None and run.boot.fd is not None:
            os.close(run.boot.fd)
        try:
            leftovers += self.clean_up(run)
        except (Tainted, OSError) as exc:
            self.taint = self.taint or str(exc)
            leftovers.append(str(exc))
        judged = run.judged or Judged(sample_id=run.sample.id, load="no_report")
        if run.judge_fault:
            judged = Judged(sample_id=run.sample.id, load=judged.load)
        exit_status = os.waitstatus_to_exitcode(run.exited.status) if run.exited else None
        return SampleReport(id=run.sample.id, judged=judged, judge_fault=clean(run.judge_fault, 1000),
                            time_limit=run.time_limit, exit_status=exit_status, cpu_s=round(run.cpu_s(), 4),  # type: ignore[arg-type]
                            wall_s=round((run.stopped_at or run.judged_at or time.monotonic()) - run.started, 4),
                            max_rss_kib=run.exited.max_rss_kib if run.exited else 0,
                            stdout=clean(run.out.text(), run.out.cap), stderr=clean(run.err.text(), run.err.cap),
                            stdout_truncated=run.out.truncated, stderr_truncated=run.err.truncated,
                            leftovers=tuple(clean(item, 300) for item in leftovers))

    def clean_up(self, run: Run) -> list[str]:
        """Wipe what the sample wrote; what cannot be wiped taints the sandbox (``Tainted``)."""
        found = []
        deadline = time.monotonic() + WIPE_DEADLINE_S
        wipe(run.scratch, deadline)
        active = {str(other.uid) for other in self.runs.values()}
        slot_root = os.path.join(SCRATCH_ROOT, str(run.slot))
        strays = [name for name in os.listdir(slot_root) if name not in active]
        if strays:
            raise Tainted(f"unexpected entries in {slot_root}: {strays[:5]}")
        active_uids = {other.uid for other in self.runs.values()} | {d.uid for d in self.drivers.values()}
        if os.path.isdir(SHM):
            for entry in os.scandir(SHM):
                if entry.stat(follow_symlinks=False).st_uid in active_uids:
                    continue  # another slot's sample is using it
                found.append(f"left {entry.path} (removed)")
                if entry.is_dir(follow_symlinks=False):
                    wipe(entry.path, deadline)
                else:
                    os.unlink(entry.path)
        ipc = sysv_ipc_objects()
        if ipc:
            raise Tainted(f"a sample left {', '.join(ipc)}: this sandbox is discarded")
        strays_p = [pid for pid, (uid, state, _) in process_table().items()
                    if uid != 0 and uid not in active_uids and state not in "ZX"]
        if strays_p:
            raise Tainted(f"{len(strays_p)} process(es) of earlier samples outlived their sweep")
        return found


def main() -> None:
    hardening.make_unreachable()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a sample that dies before reading its program: EPIPE, not death
    supervisor = Supervisor()  # forks the zygote before any secret reaches this process
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    hello = protocol.read_frame(stdin)
    if not hello or hello.get("op") != "hello":
        raise SystemExit("expected a hello frame")
    key = bytes.fromhex(hello["key"])

    def send(message: Any) -> None:
        stdout.write(protocol.pack(messages.to_dict(message), key))
        stdout.flush()

    send(messages.Ready(op="ready", kernel=os.uname().release, python=sys.version.split()[0]))
    while True:
        frame = protocol.read_frame(stdin)
        if frame is None or frame.get("op") == "exit":
            return
        try:
            request = messages.from_dict(BatchRequest, frame)
        except messages.MessageError as exc:
            send(messages.Failure(op="error", message=f"bad request: {exc}"))
            continue
        try:
            reply = supervisor.run_batch(request)
        except Tainted as exc:
            send(messages.Failure(op="error", message=f"sandbox integrity: {exc}"))
            return
        send(reply)
        if not reply.healthy:
            return


if __name__ == "__main__":
    main()
