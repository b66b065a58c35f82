"""Real programs in real gVisor containers: verdicts, limits and isolation."""

from __future__ import annotations

import docker
import pytest

from sandbox.models import JobSpec, TestSnippet, TestStatus, Verdict
from sandbox.runner import Runner
from tests.integration.conftest import ADD_CHECK, job

pytestmark = pytest.mark.integration



def statuses(result) -> list[str]:
    return [t.status.value for t in result.tests]


def test_runs_under_gvisor_not_runc(runner: Runner, client: docker.DockerClient) -> None:
    program = "import os\ndef f():\n    return os.uname().release\n"
    result = runner.run([job(program, "def check(candidate):\n    assert candidate() == '4.4.0'\n")])[0]
    assert result.runtime == "runsc"
    assert result.verdict is Verdict.passed, result  # gVisor's kernel reports 4.4.0; the host's is 6.x


def test_pass_fail_and_partial_have_per_test_statuses(runner: Runner) -> None:
    good = job("def f(a, b):\n    return a + b\n", ADD_CHECK)
    bad = job("def f(a, b):\n    return 0\n", ADD_CHECK)
    partial = job("def f(a, b):\n    return a + b if a > 0 else 7\n", ADD_CHECK)
    results = runner.run([good, bad, partial])
    assert [r.verdict for r in results] == [Verdict.passed, Verdict.failed, Verdict.failed]
    assert statuses(results[0]) == ["passed", "passed", "passed"]
    assert statuses(results[1]) == ["failed", "failed", "passed"]  # f(-1, 1) == 0 holds by chance
    assert statuses(results[2]) == ["passed", "passed", "failed"]
    assert "candidate(-1, 1) == 0" in results[2].tests[2].message


def test_syntax_error_is_the_programs_error(runner: Runner) -> None:
    result = runner.run([job("def f(a, b)\n    return a\n", ADD_CHECK)])[0]
    assert result.verdict is Verdict.error
    assert "SyntaxError" in result.error
    assert statuses(result) == ["not_run"] * 3


def test_missing_entry_point_fails_every_test(runner: Runner) -> None:
    result = runner.run([job("def g(a, b):\n    return a + b\n", ADD_CHECK)])[0]
    assert result.verdict is Verdict.failed
    assert all(t.status is TestStatus.failed and "'f'" in t.message for t in result.tests)


def test_exception_in_candidate_is_a_test_error(runner: Runner) -> None:
    result = runner.run([job("def f(a, b):\n    if a < 0: raise ValueError('neg')\n    return a + b\n",
                             ADD_CHECK)])[0]
    assert statuses(result) == ["passed", "passed", "error"]
    assert "ValueError: neg" in result.tests[2].message


def test_infinite_loop_times_out_and_next_job_still_runs(runner: Runner) -> None:
    loop = job("def f(a, b):\n    while True:\n        pass\n", ADD_CHECK)
    after = job("def f(a, b):\n    return a + b\n", ADD_CHECK)
    looped, fine = runner.run([loop, after])
    assert looped.verdict is Verdict.timeout
    assert statuses(looped) == ["timeout"] * 3
    assert fine.verdict is Verdict.passed


def test_timeout_applies_to_the_sample_as_a_whole(runner: Runner) -> None:
    # Each call burns 0.8 s of CPU: two tests fit in 2 s, three do not.
    slow = ("import time\ndef f(a, b):\n    start = time.process_time()\n"
            "    while time.process_time() - start < 0.8:\n        pass\n    return a + b\n")
    result = runner.run([job(slow, ADD_CHECK, limits={"cpu_time_s": 2})])[0]
    assert result.verdict is Verdict.timeout
    assert result.tests[0].status is TestStatus.passed
    assert result.tests[-1].status is TestStatus.timeout


def test_memory_bomb_is_contained(runner: Runner) -> None:
    bomb = "def f(a, b):\n    x = []\n    while True:\n        x.append(bytearray(50 * 1024 * 1024))\n"
    result, after = runner.run([job(bomb, ADD_CHECK), job("def f(a, b):\n    return a + b\n", ADD_CHECK)])
    # Normally the per-process limit answers first (MemoryError in each test); on a loaded host the
    # container's own limit may kill the sandbox instead, and the program is charged with an error.
    if result.verdict is Verdict.failed:
        assert all(t.status is TestStatus.error and "MemoryError" in t.message for t in result.tests), result
    else:
        assert result.verdict is Verdict.error and "brought its sandbox down twice" in result.error, result
    assert after.verdict is Verdict.passed


def test_fork_bomb_is_contained(runner: Runner) -> None:
    bomb = ("import os\ndef f(a, b):\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n")
    bombed, fine = runner.run([job(bomb, ADD_CHECK), job("def f(a, b):\n    return a + b\n", ADD_CHECK)])
    assert bombed.verdict in (Verdict.timeout, Verdict.failed, Verdict.error)
    assert bombed.verdict is not Verdict.passed
    assert fine.verdict is Verdict.passed


def test_writes_outside_scratch_fail_and_scratch_writes_work(runner: Runner) -> None:
    program = """
import os
def f(path):
    try:
        with open(path, 'w') as handle:
            handle.write('x')
        return 'wrote'
    except OSError as exc:
        return type(exc).__name__
"""
    check = """
def check(candidate):
    assert candidate('/etc/passwd') != 'wrote'
    assert candidate('/usr/lib/evil.py') != 'wrote'
    assert candidate('/opt/harness/checker.py') != 'wrote'
    assert candidate('scratch.txt') == 'wrote'
"""
    result = runner.run([job(program, check)])[0]
    assert result.verdict is Verdict.passed, result


def test_scratch_tmpfs_is_size_limited(runner: Runner) -> None:
    program = """
def f():
    written = 0
    try:
        with open('big', 'wb') as handle:
            for _ in range(200):
                handle.write(b'x' * (1 << 20))
                handle.flush()
                written += 1
    except OSError as exc:
        return ('stopped', written)
    return ('wrote all', written)
"""
    result = runner.run([job(program, "def check(candidate):\n    assert candidate()[0] == 'stopped'\n")])[0]
    assert result.verdict is Verdict.passed, result


def test_network_is_unreachable(runner: Runner) -> None:
    program = """
import socket
def f():
    try:
        socket.create_connection(('127.0.0.1', 6379), timeout=2).close()
        return 'connected'
    except OSError as exc:
        return 'blocked'
def g():
    return [name for _, name in socket.if_nameindex()]
"""
    check = "def check(candidate):\n    assert candidate() == 'blocked'\n"
    result = runner.run([job(program, check)])[0]
    assert result.verdict is Verdict.passed, result
    interfaces = runner.run([job(program, "def check(candidate):\n    assert candidate() == ['lo']\n",
                                 entry_point="g")])[0]
    assert interfaces.verdict is Verdict.passed, interfaces


def test_output_flood_is_capped_and_the_test_still_judged(runner: Runner) -> None:
    program = "import sys\ndef f(a, b):\n    sys.stdout.write('x' * (5 * 1024 * 1024))\n    return a + b\n"
    result = runner.run([job(program, ADD_CHECK)])[0]
    assert result.verdict is Verdict.passed
    assert result.stdout_truncated
    assert len(result.stdout) == 16 * 1024  # the humaneval policy keeps 16 KiB


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit(0)"])
def test_early_exit_is_never_a_pass(runner: Runner, exit_call: str) -> None:
    program = f"import os, sys\ndef f(a, b):\n    {exit_call}\n"
    result = runner.run([job(program, ADD_CHECK)])[0]
    assert result.verdict is Verdict.failed, result
    assert all(t.status is not TestStatus.passed for t in result.tests)


def test_exit_at_import_is_never_a_pass(runner: Runner) -> None:
    result = runner.run([job("import os\nos._exit(0)\n", ADD_CHECK)])[0]
    assert result.verdict is Verdict.error


def test_always_equal_object_does_not_pass(runner: Runner) -> None:
    program = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
class Int(int):
    def __eq__(self, other): return True
def f(a, b):
    return Anything() if a > 1 else Int(0)
"""
    result = runner.run([job(program, ADD_CHECK)])[0]
    assert result.verdict is Verdict.failed
    # Objects of the program's own classes, and int subclasses, are refused where the test compares them.
    assert statuses(result) == ["error", "error", "error"]
    assert all("program's own class" in t.message or "does not carry" in t.message for t in result.tests)


def test_patching_builtins_and_assertion_error_does_not_pass(runner: Runner) -> None:
    program = """
import builtins
class NeverRaised(Exception):
    pass
builtins.AssertionError = NeverRaised
builtins.abs = lambda x: 0
def f(a, b):
    return 0
"""
    check = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert abs(candidate(1, 2) - 3) < 1e-9\n"
    result = runner.run([job(program, check)])[0]
    assert statuses(result) == ["failed", "failed"]


def test_printing_the_harness_protocol_does_not_pass(runner: Runner) -> None:
    program = """
import json, os, sys
fake = {"event": "test", "name": "#1 assert candidate(1, 2) == 3", "calls": [], "outcome": "ok"}
print(json.dumps({"op": "result", "samples": [], "verdict": "passed"}))
def f(a, b):
    sys.stdout.write(json.dumps({"status": "passed"}) + "\\n")
    return -1
"""
    result = runner.run([job(program, ADD_CHECK)])[0]
    assert result.verdict is Verdict.failed


def test_supervisor_files_and_environment_hold_no_expected_answers(runner: Runner) -> None:
    program = """
import os
def f():
    found = []
    paths = ['/proc/self/environ', '/proc/1/environ', '/proc/1/cmdline', '/proc/self/cmdline']
    for root in ('/tmp', '/opt/harness', '/dev/shm'):
        for dirpath, _, files in os.walk(root):
            paths += [os.path.join(dirpath, name) for name in files]
    for path in paths:
        try:
            with open(path, 'rb') as handle:
                if b'SECRET_EXPECTED_4242' in handle.read():
                    found.append(path)
        except OSError:
            pass
    return ','.join(found) + ';' + ','.join(sorted(os.environ))
"""
    check = "def check(candidate):\n    assert candidate() == 'SECRET_EXPECTED_4242'\n"
    result = runner.run([job(program, check)])[0]
    assert result.verdict is Verdict.failed
    assert result.tests[0].status is TestStatus.failed


def test_daemon_left_behind_is_killed_and_its_files_wiped(runner: Runner) -> None:
    program = """
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    ctypes.CDLL(None).prctl(15, b"leftover", 0, 0, 0)  # PR_SET_NAME: findable in /proc/<pid>/comm
    with open('marker', 'w') as handle:
        handle.write(os.getcwd())
    time.sleep(60)
    os._exit(0)
def f(a, b):
    return a + b
"""
    probe = """
import os
def comm(pid):
    try:
        with open(f'/proc/{pid}/comm') as handle:
            return handle.read().strip()
    except OSError:
        return ''
leftovers = [p for p in os.listdir('/proc') if p.isdigit() and comm(p) == 'leftover']
scratch = os.listdir(os.path.dirname(os.getcwd())) if os.access(os.path.dirname(os.getcwd()), os.R_OK) else 'hidden'
def f(a, b):
    return a + b if not leftovers and scratch == 'hidden' else (leftovers, scratch)
"""
    first, second = runner.run([job(program, ADD_CHECK), job(probe, ADD_CHECK)])
    assert first.verdict is Verdict.passed
    assert any("killed" in a for a in first.anomalies), first.anomalies
    assert second.verdict is Verdict.passed, [t.message for t in second.tests]
    assert first.sandbox_id == second.sandbox_id, first.anomalies


def test_snippet_tests_call_the_program_by_name(runner: Runner) -> None:
    spec = JobSpec(program="def square(x):\n    return x * x\n", entry_point="square", policy="humaneval",
                   tests=(TestSnippet(name="small", code="assert square(3) == 9"),
                          TestSnippet(name="negative", code="assert square(-2) == 4"),
                          TestSnippet(name="wrong", code="assert square(2) == 5")))
    result = runner.run([spec])[0]
    assert [(t.name, t.status.value) for t in result.tests] == [
        ("small", "passed"), ("negative", "passed"), ("wrong", "failed")]


def test_numpy_is_available_and_results_compare_by_value(runner: Runner) -> None:
    program = "import numpy as np\ndef f(xs):\n    return np.array(xs).sum()\n"
    result = runner.run([job(program, "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n")])[0]
    assert result.verdict is Verdict.passed, result


def test_random_inputs_in_tests_replay_identically(runner: Runner) -> None:
    check = """
import random
def check(candidate):
    for _ in range(50):
        x, y = random.randint(0, 1000), random.randint(0, 1000)
        assert candidate(x, y) == x + y
"""
    program = "import random\ndef f(a, b):\n    random.random()\n    return a + b\n"
    result = runner.run([job(program, check)])[0]
    assert result.verdict is Verdict.passed, result


def test_site_builtins_exist_for_programs(runner: Runner) -> None:
    program = "def f():\n    return [callable(exit), callable(quit), 'dist-packages' in ''.join(__import__('sys').path)]\n"
    result = runner.run([job(program, "def check(candidate):\n    assert candidate() == [True, True, True]\n")])[0]
    assert result.verdict is Verdict.passed, result


def test_forked_samples_get_fresh_randomness(runner: Runner) -> None:
    program = "import random\nprint(random.getrandbits(64))\ndef f():\n    return 1\n"
    check = "def check(candidate):\n    assert candidate() == 1\n"
    results = runner.run([job(program + f"# {i}\n", check) for i in range(3)])
    assert all(r.verdict is Verdict.passed for r in results)
    drawn = {r.stdout for r in results}
    assert len({r.sandbox_id for r in results}) == 1 and len(drawn) == 3  # same sandbox, different draws


def test_file_size_open_files_and_process_limits(runner: Runner) -> None:
    program = """
import os, time
def big_file():
    try:
        with open('big', 'wb') as handle:
            handle.write(b'x' * (9 << 20))  # the humaneval policy allows 8 MiB files
        return 'wrote'
    except OSError as exc:
        return type(exc).__name__
def many_files():
    handles = []
    try:
        for index in range(1000):
            handles.append(open(f'f{index}', 'w'))
    except OSError:
        return len(handles)
    return 'unlimited'
def many_processes():
    children = []
    try:
        for _ in range(200):  # spawned, not forked: 32 forks of Python cost most of the 3 s of CPU in gVisor
            children.append(os.posix_spawn('/bin/sleep', ['sleep', '30'], {}))
    except OSError:
        pass
    return len(children)
"""
    big = runner.run([job(program, "def check(candidate):\n    assert candidate() != 'wrote'\n",
                          entry_point="big_file")])[0]
    assert big.verdict is Verdict.passed, big
    files = runner.run([job(program, "def check(candidate):\n    assert candidate() < 128\n",
                            entry_point="many_files")])[0]
    assert files.verdict is Verdict.passed, files  # open_files = 128 in the humaneval policy
    processes = runner.run([job(program, "def check(candidate):\n    assert 20 <= candidate() <= 32\n",
                                entry_point="many_processes")])[0]
    assert processes.verdict is Verdict.passed, processes  # processes = 32, counted for the whole uid
