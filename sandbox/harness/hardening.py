"""Process hardening for the harness (stdlib only; runs inside the sandbox).

Inside gVisor a process may signal, stop, ``prlimit`` and open ``/proc/<pid>/fd`` of every process
with its uid, so uids are the wall between trust domains: the supervisor and the zygote run as
root with only the capabilities that switching users needs, and every forked child gives them up
for good (``setresuid`` to a non-root uid clears its capabilities) before it runs anything else.
"""

from __future__ import annotations

import ctypes
import os
import struct

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)


class HardeningError(OSError):
    """A hardening step did not take effect; the process must not go on."""


def make_unreachable() -> None:
    """Non-dumpable: no process may read this one's memory or ptrace it, even with its uid."""
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise HardeningError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def become(uid: int) -> None:
    """Switch every uid and gid to ``uid`` with no supplementary groups; prove no capability is left."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise HardeningError(0, f"uid switch to {uid} did not take effect")
    with open("/proc/self/status", "rb") as status:
        for line in status.read().splitlines():
            if line.startswith((b"CapPrm:", b"CapEff:", b"CapAmb:")) and int(line.split()[1], 16) != 0:
                raise HardeningError(0, f"capabilities left after the uid switch: {line.decode()}")


# What a sample may not do, even with a uid of its own:
# * create namespaces (unshare, setns, clone/clone3 with CLONE_NEW*): inside one it holds every
#   capability, may mount, and gets a private IPC namespace the supervisor's checks cannot see;
# * clone with CLONE_PARENT: the child would be the caller's sibling, a child of the process that forked the
#   program (the zygote), which would reap it, and its CPU would leave the sample's account (gVisor ignores
#   the flag today; refused here so that no runtime version decides it);
# * mount, unmount, pivot_root;
# * use POSIX message queues, which cannot be listed without mounting mqueuefs (that needs
#   CAP_SYS_ADMIN), so the supervisor could never prove a sample left none behind;
# * create SysV shared memory, semaphores or message queues (shmget, semget, msgget): they outlive
#   the process that made them, so one stdio case could hand state to the next (the supervisor
#   still counts them after every sample, in case one ever appears);
# and, stacked on that by the program process itself (``guard``): change what SIGCHLD does
# (rt_sigaction(SIGCHLD, act) with an act; asking is allowed): ignoring it, or SA_NOCLDWAIT, makes
# the kernel discard ended children without adding their CPU time to anyone's, so CPU spent in
# short-lived children would escape the sample's limit. Go's runtime must set a SIGCHLD handler:
# its programs may instead make no process at all.
# clone3 gets ENOSYS (its flags sit behind a pointer seccomp cannot read): libc then uses clone.
_SYSCALLS = {
    "x86_64": {"denied": (272, 308, 165, 166, 155, 240, 241, 242, 243, 244, 245,  # unshare setns mount umount2
                          29, 64, 68),                                            # pivot_root mq_*; shm/sem/msgget
               "clone": 56, "clone3": 435, "rt_sigaction": 13, "fork": (57, 58), "arch": 0xC000003E},
    "aarch64": {"denied": (97, 268, 40, 39, 41, 180, 181, 182, 183, 184, 185, 194, 190, 186),
                "clone": 220, "clone3": 435, "rt_sigaction": 134, "fork": (), "arch": 0xC00000B7},
}
_SIGCHLD = 17
_CLONE_THREAD = 0x00010000
_CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
_CLONE_PARENT = 0x00008000  # the child would be its caller's sibling: the zygote's, which reaps it unaccounted
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x45, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO, _SECCOMP_RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
_EPERM, _ENOSYS = 1, 38
_SECCOMP_DATA_NR, _SECCOMP_DATA_ARCH, _SECCOMP_DATA_ARG0, _SECCOMP_DATA_ARG1 = 0, 4, 16, 24


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Assembler:
    """A seccomp BPF program as (code, jump-if-true label, jump-if-false label, k), labels resolved to
    BPF's forward offsets ("" = the next instruction)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str, str, int]] = []
        self.labels: dict[str, int] = {}
        self.table = _SYSCALLS[os.uname().machine]
        self.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARCH)
        self.op(_BPF_JEQ_K, self.table["arch"], false="kill")
        self.op(_BPF_LD_W_ABS, _SECCOMP_DATA_NR)

    def op(self, opcode: int, k: int, true: str = "", false: str = "") -> None:
        self.code.append((opcode, true, false, k))

    def here(self, label: str) -> None:
        self.labels[label] = len(self.code)

    def assemble(self) -> bytes:
        self.here("allow")                                          # jumps go forward only: the endings last
        self.op(_BPF_RET_K, _SECCOMP_RET_ALLOW)
        self.here("eperm")
        self.op(_BPF_RET_K, _SECCOMP_RET_ERRNO | _EPERM)
        self.here("enosys")
        self.op(_BPF_RET_K, _SECCOMP_RET_ERRNO | _ENOSYS)
        self.here("kill")
        self.op(_BPF_RET_K, _SECCOMP_RET_KILL)

        def offset(position: int, label: str) -> int:
            if not label:
                return 0
            distance = self.labels[label] - position - 1
            if not 0 <= distance <= 255:
                raise ValueError(f"seccomp jump to {label} out of range")  # BPF jumps only forward, 8 bits
            return distance

        return b"".join(struct.pack("HBBI", opcode, offset(i, true), offset(i, false), k)
                        for i, (opcode, true, false, k) in enumerate(self.code))


def _seccomp_program() -> bytes:
    """Every child of the zygote (drivers and programs): no namespaces, mounts, mqueues, SysV IPC."""
    a = _Assembler()
    for number in a.table["denied"]:
        a.op(_BPF_JEQ_K, number, true="eperm")
    a.op(_BPF_JEQ_K, a.table["clone"], true="clone")
    a.op(_BPF_JEQ_K, a.table["clone3"], true="enosys")
    a.op(_BPF_RET_K, _SECCOMP_RET_ALLOW)                            # any other call
    a.here("clone")                                                 # any CLONE_NEW* flag, CLONE_PARENT: refused
    a.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARG0)
    a.op(_BPF_JSET_K, _CLONE_NEW | _CLONE_PARENT, true="eperm", false="allow")
    return a.assemble()


def _guard_program(guard: str) -> bytes:
    """A program's own guard for CPU accounting, stacked on the base filter before its code runs:

    * ``sigchld``: SIGCHLD's action may not change (asking is allowed);
    * ``no_fork``: no new processes at all (threads only), for runtimes that must set a SIGCHLD
      handler of their own (Go): without children there is nothing whose CPU could vanish.
    """
    a = _Assembler()
    if guard == "sigchld":
        a.op(_BPF_JEQ_K, a.table["rt_sigaction"], false="allow")
        a.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARG0)
        a.op(_BPF_JEQ_K, _SIGCHLD, false="allow")
        a.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARG1)                     # the act pointer, low word
        a.op(_BPF_JEQ_K, 0, false="eperm")
        a.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARG1 + 4)                 # high word: NULL only asks
        a.op(_BPF_JEQ_K, 0, true="allow", false="eperm")
    elif guard == "no_fork":
        for number in a.table["fork"]:
            a.op(_BPF_JEQ_K, number, true="eperm")
        a.op(_BPF_JEQ_K, a.table["clone"], false="allow")
        a.op(_BPF_LD_W_ABS, _SECCOMP_DATA_ARG0)
        a.op(_BPF_JSET_K, _CLONE_THREAD, true="allow", false="eperm")
    else:
        raise ValueError(f"unknown guard {guard!r}")
    return a.assemble()


_PROGRAM = _seccomp_program()
GUARDS = ("sigchld", "no_fork")


def restrict_syscalls() -> None:
    """Install the base seccomp filter (gVisor enforces it in its own kernel)."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise HardeningError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    _install(_PROGRAM)


def guard(kind: str) -> None:
    """Stack a program's guard (``GUARDS``) on the base filter; filters only ever add refusals."""
    _install(_guard_program(kind))


def _install(code: bytes) -> None:
    buffer = ctypes.create_string_buffer(code)
    program = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise HardeningError(ctypes.get_errno(), "seccomp filter was refused")
