"""The supervisor's CPU accounting for one program (pure logic: /proc is simulated).

A program's first process is a spare forked from the zygote; what it used before the program
existed (the fork, the harness's set-up) is the harness's. The real-engine tests are
``test_the_harness_cpu_is_not_the_programs`` and its compiled-language twin."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from sandbox import broker
from sandbox.container import cgroup_cpu_s
from sandbox.harness.messages import Judged, SampleReport, TestOutcome
from sandbox.models import JobResult, JobSpec, Verdict
from sandbox.plan import Planner
from sandbox.policy import Policy
from sandbox.settings import REPO_ROOT
from sandbox.verdict import to_result

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import accounting  # noqa: E402
import messages  # noqa: E402  (the harness imports its siblings as top-level modules)
import protocol  # noqa: E402
import supervisor  # noqa: E402

PID = 42
OTHER = 7  # another process of the sandbox (the zygote, a driver; never the supervisor itself)


class FakeProc:
    """The sandbox's processes as /proc would show them (raw tick figures), and its monotonic clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cpu: float) -> None:
        self.cpu, self.children, self.other, self.now = cpu, 0.0, 0.0, 1000.0
        monkeypatch.setattr(supervisor, "cpu_of", lambda pid: self.cpu)
        monkeypatch.setattr(supervisor, "survey", lambda uid: (
            {PID: supervisor.Seen("R", self.cpu, 0.0, 1),
             **({PID + 1: supervisor.Seen("R", self.children, 0.0, PID)} if self.children else {})},
            {OTHER: self.other}))
        monkeypatch.setattr(supervisor, "time", SimpleNamespace(monotonic=lambda: self.now))


def booted(proc: FakeProc, cpus: float = 1.0, cpu_limit: float = 2.0) -> supervisor.Program:
    pipes = [os.pipe() for _ in range(2)]
    program = supervisor.Program(100_000, "/scratch/0/x", PID, [pipes[0][1], pipes[1][1], -1, -1, -1, -1], 1000, cpus)
    program.boot("serve", "", cpu_limit, 10.0, b"", 1000)
    for writer in program.writers:
        writer.close()
    for read, _ in pipes:
        os.close(read)
    return program


def say(program: supervisor.Program, **word: object) -> None:
    body = json.dumps(word).encode()
    program.compiled.feed(protocol.HEADER.pack(len(body)) + body)


def test_a_poll_before_the_harness_word_does_not_charge_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.05)
    program = booted(proc)             # the spare has used 0.05 s at its boot
    proc.cpu, proc.now = 0.20, proc.now + 1
    program.account()                  # polled while the harness was still setting up
    say(program, ok=True, harness_cpu_s=0.21)
    proc.cpu, proc.now = 0.22, proc.now + 1
    program.account()
    program.exited = messages.Exited(event="exited", pid=PID, status=0, cpu_s=0.22, max_rss_kib=1)
    program.account()
    assert program.cpu_s() == pytest.approx(0.01)  # was 0.15 when the harness's part came off at each poll


def test_without_the_word_the_cpu_at_boot_is_the_harness_part(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.12)
    program = booted(proc)
    proc.cpu, proc.now = 1.12, proc.now + 1.5
    program.account()
    assert program.cpu_s() == pytest.approx(1.0)
    assert program.harness_word() is None and program.compile_error() == ""


def test_the_word_is_bounded_and_partial_frames_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.1)
    program = booted(proc)
    body = json.dumps({"ok": True, "harness_cpu_s": 99.0}).encode()
    program.compiled.feed(protocol.HEADER.pack(len(body)) + body[:5])
    assert program.harness_word() is None                  # not complete yet
    program.compiled.feed(body[5:])
    assert program.harness_cpu == supervisor.MAX_HARNESS_CPU_S


def test_a_compile_failure_is_read_from_the_word(monkeypatch: pytest.MonkeyPatch) -> None:
    program = booted(FakeProc(monkeypatch, 0.1))
    say(program, ok=False, error="SyntaxError: invalid syntax")
    assert program.compile_error() == "SyntaxError: invalid syntax"
    malformed = booted(FakeProc(monkeypatch, 0.1))
    say(malformed, ok="yes", surprise=1)
    assert malformed.harness_word() is None and malformed.harness_cpu == pytest.approx(0.1)


# -- CPU measured as CPU: gVisor's runnable ticks bounded by the sandbox's CPUs (accounting.py) ---------------
def test_a_lone_task_is_never_cut_by_tick_rounding() -> None:
    # polls 105 ms apart see 11 and 10 ticks in turn (ticks fall on 10 ms boundaries): one task never exceeds its wall
    capacity, now, raw, charged = accounting.Capacity(1.0, 0.0), 0.0, 0.0, 0.0
    for index in range(100):
        now += 0.105
        ticks = 0.11 if index % 2 == 0 else 0.10
        raw += ticks
        charged += capacity.share(now, ticks, 0.0)
    assert charged >= raw - accounting.TICK_S and charged <= now + accounting.TICK_S


def test_four_runnable_processes_in_one_cpu_are_charged_the_cpu_not_four_times_it() -> None:
    # measured: an honest program in 4 processes was charged 2.4-3.4 s in 0.9-1.0 s of wall (cgroup: 0.7-1.0 s)
    capacity, charged = accounting.Capacity(1.0, 0.0), 0.0
    for step in range(1, 16):
        charged += capacity.share(step * 0.1, 0.4, 0.01)
    assert charged <= 1.5 and charged == pytest.approx(1.5 * 0.4 / 0.41)
    assert capacity.cut_s == pytest.approx(15 * 0.4 - charged)


def test_what_other_tasks_were_charged_is_not_the_programs_and_more_cpus_give_more() -> None:
    shared = accounting.Capacity(1.0, 0.0)
    assert shared.share(0.1, 0.1, 0.1) == pytest.approx(0.05)  # the driver ran as much: half each
    two = accounting.Capacity(2.0, 0.0)
    assert two.share(0.1, 0.4, 0.0) == pytest.approx(0.2)
    assert two.share(0.2, 0.1, 0.0) == pytest.approx(0.1)     # within capacity: all of it
    with pytest.raises(ValueError, match="CPUs"):
        accounting.Capacity(0.0, 0.0)


def test_the_curve_takes_off_the_harness_part_at_the_rate_it_was_charged() -> None:
    curve = accounting.Curve(0.05)                    # the spare's figure at its boot
    curve.add(0.45, 0.2)                              # polled: 0.4 raw, charged half of it
    curve.add(1.05, 0.3)
    assert curve.at(0.05) == pytest.approx(0.05) and curve.at(1.05) == pytest.approx(0.55)
    assert curve.between(0.25, 1.05) == pytest.approx(0.4)   # the harness said 0.25 was its own
    assert curve.between(1.05, 1.25) == pytest.approx(0.2)   # beyond the last poll: one for one
    curve.add(1.0, 5.0)                               # a figure that went back is ignored
    assert curve.raw == 1.05 and curve.between(0.5, 0.4) == 0.0


def test_rlimit_cpu_is_a_backstop_beyond_both_limits() -> None:
    assert accounting.rlimit_cpu_s(3, 10) == 21 and accounting.rlimit_cpu_s(2, 6) == 13
    assert accounting.rlimit_cpu_s(1.99, 0.5) == 5


def test_a_timeout_charged_more_than_was_available_is_overcharged() -> None:
    assert "more than the sandbox could give" in accounting.overcharged(3.2, 1.5, 1.0, None)
    assert accounting.overcharged(3.0, 4.0, 1.0, None) == ""                   # the host could not read its cgroup
    assert "cgroup used 2.40 s" in accounting.overcharged(3.0, 4.0, 1.0, 2.4)  # load from outside the sandbox
    assert accounting.overcharged(3.0, 4.0, 1.0, 3.3) == ""                    # a real hog: it had the CPU
    assert "charged to other samples" in accounting.overcharged(3.0, 4.0, 1.0, 4.0, others_charged_s=1.5)


def test_a_program_in_four_processes_is_charged_at_most_wall_times_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.1)
    program = booted(proc, cpu_limit=3.0)
    say(program, ok=True, harness_cpu_s=0.1)
    for _ in range(15):                               # 1.5 s of wall: itself and 3 children runnable throughout
        proc.now += 0.1
        proc.cpu += 0.1
        proc.children += 0.3
        proc.other += 0.005                           # the zygote forking the next spare
        program.account()
    assert program.raw_s() == pytest.approx(6.0)      # what gVisor charged: four times the wall
    assert program.cpu_s() <= 1.5 and program.cpu_s() == pytest.approx(1.5 * 0.4 / 0.405)
    assert program.cpu_s() < program.cpu_limit       # an honest program stays within its 3 s


def test_a_lone_cpu_bound_loop_is_charged_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.1)
    program = booted(proc, cpu_limit=3.0)
    say(program, ok=True, harness_cpu_s=0.1)
    for step in range(31):
        proc.now += 0.1
        proc.cpu += 0.1 if step % 2 else 0.11 if step % 4 == 0 else 0.09   # tick rounding either way
        program.account()
    assert program.cpu_s() >= program.cpu_limit - accounting.TICK_S
    assert program.cpu_s() == pytest.approx(program.raw_s(), abs=accounting.TICK_S)


def test_sigxcpu_is_a_cpu_timeout_only_at_the_rlimit_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.1)
    program = booted(proc, cpu_limit=2.0)
    assert program.rlimit_s == 2 * 10 + 1            # twice the larger of the run's limits, plus a second
    program.exited = messages.Exited(event="exited", pid=PID, status=9, cpu_s=2.2, max_rss_kib=1)
    assert not program.rlimit_fired(-9)               # its own SIGKILL: the raw figure is far from the backstop
    program.exited = messages.Exited(event="exited", pid=PID, status=9, cpu_s=21.2, max_rss_kib=1)
    assert program.rlimit_fired(-9) and program.rlimit_fired(-24) and not program.rlimit_fired(1)


# -- the host's check: a timeout the machine's load may have caused is neither final nor cached ---------------
@pytest.fixture
def prepared(policies: dict[str, Policy]) -> Any:
    return Planner(policies, REPO_ROOT / "images").prepare(
        JobSpec(id="j", program="def f(x):\n    return x\n", check="def check(candidate):\n    assert candidate(1) == 1\n",
                entry_point="f", policy="humaneval"))


def timed_out(prepared: Any, container_cpu_s: float | None, others: float = 0.0, **fields: Any) -> JobResult:
    report = SampleReport(id="j", judged=Judged(sample_id="j", load="loaded"), **{"time_limit": "cpu", **fields})
    return to_result(prepared, report, "runsc", container_cpu_s=container_cpu_s, others_charged_s=others)


def test_a_cpu_timeout_the_container_had_the_cpu_for_is_final_and_cached(prepared: Any) -> None:
    result = timed_out(prepared, 3.4, cpu_s=3.0, wall_s=3.2)
    assert result.verdict is Verdict.timeout and result.provisional == "" and broker.cacheable(result)


def test_a_cpu_timeout_charged_more_than_its_container_used_is_not_final(prepared: Any) -> None:
    # measured under load: 4 processes charged 2.7 s (after the bound) where the container's cgroup used 1.4 s
    result = timed_out(prepared, 1.4, cpu_s=3.0, wall_s=3.8)
    assert result.verdict is Verdict.timeout and "cgroup used 1.40 s" in result.provisional
    assert not broker.cacheable(result)
    shared = timed_out(prepared, 4.0, others=1.5, cpu_s=3.0, wall_s=3.8)  # the batch's other samples had 1.5 s of it
    assert shared.provisional and not broker.cacheable(shared)


def test_a_wall_clock_timeout_is_not_final_and_other_verdicts_never_provisional(prepared: Any) -> None:
    wall = timed_out(prepared, None, cpu_s=0.5, wall_s=10.0, time_limit="wall")
    assert wall.verdict is Verdict.timeout and "wall-clock" in wall.provisional and not broker.cacheable(wall)
    passed = to_result(prepared, SampleReport(id="j", judged=Judged(
        sample_id="j", load="loaded", completed=True, outcomes=(TestOutcome(index=0, status="passed"),)), cpu_s=9.0,
        wall_s=1.0), "runsc", container_cpu_s=0.1)
    assert passed.verdict is Verdict.passed and passed.provisional == "" and broker.cacheable(passed)


def test_the_cgroup_reader_finds_v1_and_v2_layouts_or_says_none(tmp_path: pathlib.Path) -> None:
    v1 = tmp_path / "v1" / "cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpuacct.usage").write_text("1500000000\n")
    v2 = tmp_path / "v2" / "system.slice" / "docker-abc.scope"
    v2.mkdir(parents=True)
    (v2 / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert cgroup_cpu_s("abc", str(tmp_path / "v1")) == 1.5
    assert cgroup_cpu_s("abc", str(tmp_path / "v2")) == 2.5
    assert cgroup_cpu_s("abc", str(tmp_path)) is None and cgroup_cpu_s("", str(tmp_path / "v1")) is None
