"""CPU measured as CPU: what a program is charged, from gVisor's tick figures and the CPUs the sandbox has.

Pure decisions, stdlib only (the images copy the harness; the host imports it as
``sandbox.harness.accounting``). The supervisor feeds them what it read in ``/proc`` inside the
sandbox; the host what it read in the container's cgroup.

gVisor charges CPU by its own clock: at every 10 ms tick, each task it has running is charged the
tick, whether or not the host ran that task's thread then. So the ``utime + stime`` of
``/proc/<pid>/stat`` (and ``getrusage``, ``wait4``, RLIMIT_CPU, which read the same figure) count
runnable time, not CPU: with more runnable tasks than the sandbox has CPUs, the figures of all its
tasks add up to more than its CPUs could give. Measured (one sandbox with ``cpus = 1``, 2-core
host): the same Python work in one process was charged 0.4-0.9 s (the container's cgroup used
0.5-1.0 s); split over 4 processes it was charged 2.4-3.4 s in 0.9-1.0 s of wall, where the
container's cgroup used 0.7-1.0 s.

* ``Capacity``: per polling interval, the sandbox's tasks together cannot have had more than
  interval x cpus of CPU. When gVisor charged them more ticks than that, each task's increment is
  scaled to its share of what the CPUs could give.
* ``Curve``: a program's raw (tick) figure -> its charged CPU, point by point as it was polled, so
  that a part of the raw figure said to be the harness's later can be taken off exactly.
* ``rlimit_cpu_s``: RLIMIT_CPU counts raw ticks per process (a process with several runnable
  threads is charged several ticks per tick), so it is a generous backstop only; the supervisor
  enforces the budget on the charged figure.
* ``overcharged``: the host's check, after the fact: a timeout whose charged CPU exceeds the CPU the
  container's cgroup says it used is the machine's load, not the program's: neither final nor cached.
"""

from __future__ import annotations

import bisect
import math

TICK_S = 0.01          # gVisor's CPU clock tick (linux.ClockTick)
RLIMIT_SLACK_S = 1     # RLIMIT_CPU's seconds beyond the backstop (the kernel counts whole seconds)


class Capacity:
    """The CPU one sandbox could give its tasks, interval by interval.

    ``share(now, own, others)``: ``own`` is the raw (tick) increment of one program's processes since the
    previous call, ``others`` that of every other task in the sandbox (the harness, the driver, other
    samples). Returns the part of ``own`` that counts: all of it when the sum fits in the interval x
    cpus, else its proportional share. Ticks are counted at 10 ms boundaries, so an interval may hold
    one tick more than its length: up to one tick per CPU of unused capacity carries to the next
    interval, so that a lone task is never cut by rounding."""

    def __init__(self, cpus: float, now: float) -> None:
        if cpus <= 0:
            raise ValueError(f"a sandbox needs a positive number of CPUs, not {cpus!r}")
        self.cpus, self.at, self.spare = cpus, now, 0.0
        self.cut_s = 0.0   # raw ticks not charged so far, because the CPUs could not have given them

    def share(self, now: float, own: float, others: float) -> float:
        own, others = max(0.0, own), max(0.0, others)
        available = max(0.0, now - self.at) * self.cpus + self.spare
        self.at = max(self.at, now)
        used = own + others
        if used <= available:
            self.spare = min(available - used, TICK_S * math.ceil(self.cpus))
            return own
        self.spare = 0.0
        charged = own * available / used
        self.cut_s += own - charged
        return charged


class Curve:
    """A program's raw (tick) CPU figure -> its charged CPU, as polled: a monotone piecewise-linear map.

    Below the first point (before the program's first process was booted) and beyond the last, raw
    counts as charged, one for one."""

    def __init__(self, raw: float = 0.0) -> None:
        self.raws, self.charged = [max(0.0, raw)], [max(0.0, raw)]

    def add(self, raw: float, charged_increment: float) -> None:
        """The raw figure polled now, and the charged part of its increment since the last point."""
        if raw <= self.raws[-1]:
            return
        self.raws.append(raw)
        self.charged.append(self.charged[-1] + max(0.0, min(charged_increment, raw - self.raws[-2])))

    @property
    def raw(self) -> float:
        return self.raws[-1]

    def at(self, raw: float) -> float:
        if raw <= self.raws[0]:
            return raw
        if raw >= self.raws[-1]:
            return self.charged[-1] + raw - self.raws[-1]
        right = bisect.bisect_right(self.raws, raw)
        x0, x1, y0, y1 = self.raws[right - 1], self.raws[right], self.charged[right - 1], self.charged[right]
        return y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    def between(self, low: float, high: float) -> float:
        """Charged CPU for the raw figure's part from ``low`` to ``high`` (0 if none)."""
        return max(0.0, self.at(high) - self.at(low)) if high > low else 0.0


def rlimit_cpu_s(cpu_limit_s: float, wall_limit_s: float) -> int:
    """RLIMIT_CPU for a run's process beyond the harness's own part: a backstop for a supervisor that could
    not poll, never the budget. A process's raw figure grows by one tick per runnable thread per tick, so
    an honest multi-threaded process can reach several times its CPU; twice the larger of the run's
    limits (per-process raw figures past the wall limit mean the supervisor is not polling at all)."""
    return int(math.ceil(2 * max(cpu_limit_s, wall_limit_s))) + RLIMIT_SLACK_S


def overcharged(charged_s: float, wall_s: float, cpus: float, container_cpu_s: float | None,
                others_charged_s: float = 0.0, slack_s: float = 0.05) -> str:
    """Why a timed-out sample's charged CPU is more than it can have had ("" if it is not).

    ``container_cpu_s``: what the container's cgroup on the host used over the batch that ran the sample
    (None when the host cannot read it); ``others_charged_s``: what the batch's other samples were
    charged. The sample cannot have had more than the container used less the others' share, nor more
    than its wall time x the sandbox's CPUs."""
    if charged_s > wall_s * cpus + slack_s:
        return (f"charged {charged_s:.2f} s of CPU in {wall_s:.2f} s of wall with {cpus:g} CPU(s): more than the "
                "sandbox could give")
    if container_cpu_s is not None and charged_s > container_cpu_s - others_charged_s + slack_s:
        return (f"charged {charged_s:.2f} s of CPU where its sandbox's cgroup used {container_cpu_s:.2f} s "
                + (f"({others_charged_s:.2f} s of it charged to other samples) " if others_charged_s > 0 else "")
                + "over the batch: the machine's load, not the program, may have caused this timeout")
    return ""
