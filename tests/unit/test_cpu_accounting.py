"""The supervisor's CPU accounting for one program (pure logic: /proc is simulated).

A program's first process is a spare forked from the zygote; what it used before the program
existed (the fork, the harness's set-up) is the harness's. The real-engine tests are
``test_the_harness_cpu_is_not_the_programs`` and its compiled-language twin."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import messages  # noqa: E402  (the harness imports its siblings as top-level modules)
import protocol  # noqa: E402
import supervisor  # noqa: E402

PID = 42


class FakeProc:
    """One process's CPU as /proc would show it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cpu: float) -> None:
        self.cpu = cpu
        monkeypatch.setattr(supervisor, "cpu_of", lambda pid: self.cpu)
        monkeypatch.setattr(supervisor, "processes_of",
                            lambda uid, zombies=False: {PID: supervisor.Seen("R", self.cpu, 0.0, 1)})


def booted(proc: FakeProc) -> supervisor.Program:
    program = supervisor.Program(100_000, "/scratch/0/x", PID, [-1] * 6, 1000)
    program.boot_cpu = supervisor.cpu_of(PID)  # what boot() reads
    program.cpu_limit = 2.0
    return program


def say(program: supervisor.Program, **word: object) -> None:
    body = json.dumps(word).encode()
    program.compiled.feed(protocol.HEADER.pack(len(body)) + body)


def test_a_poll_before_the_harness_word_does_not_charge_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.05)
    program = booted(proc)             # the spare has used 0.05 s at its boot
    proc.cpu = 0.20
    program.account()                  # polled while the harness was still setting up
    say(program, ok=True, harness_cpu_s=0.21)
    proc.cpu = 0.22
    program.account()
    program.exited = messages.Exited(event="exited", pid=PID, status=0, cpu_s=0.22, max_rss_kib=1)
    program.account()
    assert program.cpu_s() == pytest.approx(0.01)  # was 0.15 when the harness's part came off at each poll


def test_without_the_word_the_cpu_at_boot_is_the_harness_part(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = FakeProc(monkeypatch, 0.12)
    program = booted(proc)
    proc.cpu = 1.12
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
