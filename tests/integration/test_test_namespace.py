"""Issue 17 findings 1 and 4 and issue 21's prompt trust, attacked through real gVisor sandboxes.

* The test's namespace is the test's: a program that defines `math`, `numpy` or `np` cannot answer
  for them; a test that uses a name it neither imports nor declares is refused before anything runs.
* A prompt runs in the judge only when trusted explicitly: an untrusted prompt that tampers with the
  judge runs as program only. HumanEval's own prompts (trusted by their reader) still give `poly`.
* Plans are pure functions of their key: a MultiPL-E Java completion that declares `class Helper`
  passes, and the next job with the same tests and another program is judged on its own plan; a
  `public class` inside a comment does not name the file.

Every attack shares its batch (so its sandbox) with innocent samples judged right after it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import docker
import pytest

from sandbox.imagedef import load_definition
from sandbox.images import build_image
from sandbox.models import JobResult, JobSpec, TestSnippet, TestStatus, Verdict
from sandbox.problems import Sample, load_problems, sample_job
from sandbox.runner import Runner
from sandbox.settings import REPO_ROOT
from tests.integration.conftest import ADD_CHECK, job

pytestmark = pytest.mark.integration

# -- a program's objects never stand in for the test's modules -------------------------------------------
FORGER = """
class _Always:
    def __getattr__(self, name):
        return lambda *args, **kwargs: True
math = numpy = np = _Always()
def f(x):
    return 0.0
"""
SQUARE = "def f(x):\n    return x * x * 1.0\n"
OFF = "def f(x):\n    return x * x + 1.0\n"
MATH_CHECK = "def check(candidate):\n    assert math.isclose(candidate(2), 4.0)\n    assert math.isclose(candidate(3), 9.0)\n"


def verdicts(results: list[JobResult]) -> list[Verdict]:
    return [result.verdict for result in results]


def test_a_program_defining_math_cannot_answer_for_the_tests_math(runner: Runner) -> None:
    """Issue 17 finding 1: the check uses `math` unimported; the program's `math.isclose` said True to
    everything and a wrong answer passed. Now `math` is the driver's own import."""
    forger, square, off = runner.run([job(FORGER, MATH_CHECK), job(SQUARE, MATH_CHECK), job(OFF, MATH_CHECK)])
    assert forger.verdict is Verdict.failed, forger
    assert [t.status for t in forger.tests] == [TestStatus.failed, TestStatus.failed]
    assert square.verdict is Verdict.passed, square
    assert off.verdict is Verdict.failed, off


def test_snippets_get_the_drivers_numpy_and_np_must_be_imported(runner: Runner) -> None:
    unimported = (TestSnippet(name="numpy", code="assert numpy.allclose(candidate(2), 4.0)"),
                  TestSnippet(name="imported", code="import numpy as np\nassert np.isclose(f(3), 9.0)"))
    jobs = [JobSpec(program=program, tests=unimported, entry_point="f", policy="humaneval")
            for program in (FORGER, SQUARE, OFF)]
    shorthand = JobSpec(program=SQUARE, tests=(TestSnippet(name="np", code="assert np.allclose(candidate(2), 4)"),),
                        entry_point="f", policy="humaneval")
    forger, square, off, refused = runner.run([*jobs, shorthand])
    assert forger.verdict is Verdict.failed and [t.status for t in forger.tests] == [TestStatus.failed] * 2, forger
    assert square.verdict is Verdict.passed, square
    assert off.verdict is Verdict.failed, off
    # refused at planning, naming the name: nothing ran
    assert refused.verdict is Verdict.error and "the tests use `np` without defining or importing it" in refused.error
    assert refused.sandbox_id == "" and refused.tests == ()


def test_declared_names_are_the_only_other_names_taken_from_the_program(runner: Runner) -> None:
    check = "def check(candidate):\n    assert candidate(2) == 4.0\n    assert SCALE == 1\n"
    program = "SCALE = 1\n" + SQUARE
    declared, missing, undeclared = runner.run([
        job(program, check, program_names=("SCALE",)), job(SQUARE, check, program_names=("SCALE",)), job(program, check)])
    assert declared.verdict is Verdict.passed, declared
    assert missing.verdict is Verdict.failed and missing.tests[1].status is TestStatus.error, missing  # NameError
    assert undeclared.verdict is Verdict.error and "`SCALE`" in undeclared.error, undeclared


# -- a prompt is trusted only when the job says so -----------------------------------------------------------
TAMPERING_PROMPT = '''
import builtins, sys
try:  # in the judge (where an untrusted prompt used to run) this makes every failed assert a pass
    for _module in list(sys.modules.values()):
        _recorder = getattr(_module, "Recorder", None)
        if isinstance(_recorder, type) and hasattr(_recorder, "passed"):
            _recorder.failed = lambda self, index, message, propagate, _passed=_recorder.passed: _passed(self, index)
    builtins.AssertionError = type("AssertionError", (Exception,), {})
except Exception:
    pass
def f(a, b):
    """Add two numbers."""
'''


def test_an_untrusted_prompt_that_tampers_with_the_judge_runs_as_program_only(runner: Runner) -> None:
    """Issue 21: a prompt that defined names was run in the trusted driver whatever its origin."""
    tampering = JobSpec(prompt=TAMPERING_PROMPT, completion="    return 0\n", check=ADD_CHECK, entry_point="f",
                        policy="humaneval")
    honest = tampering.model_copy(update={"completion": "    return a + b\n", "id": "honest-" + tampering.id})
    results = runner.run([tampering, honest, job("def f(a, b):\n    return a + b\n", ADD_CHECK),
                          job("def f(a, b):\n    return 0\n", ADD_CHECK)])
    assert verdicts(results) == [Verdict.failed, Verdict.passed, Verdict.passed, Verdict.failed], results
    assert [t.status for t in results[0].tests] == [TestStatus.failed, TestStatus.failed, TestStatus.passed]
    assert [t.status for t in results[3].tests] == [TestStatus.failed, TestStatus.failed, TestStatus.passed]


def test_humaneval_prompts_stay_trusted_so_poly_is_the_problems(runner: Runner) -> None:
    """HumanEval/32's test calls `poly`, defined in the prompt: the humaneval reader trusts its prompts, so
    the driver runs the prompt's `poly` (a completion that redefines `poly` cannot make a wrong zero pass)."""
    problem = load_problems("humaneval")["HumanEval/32"]
    canonical = problem.canonical_solution or ""
    forged = "    return 0.0\ndef poly(xs, x):\n    return 0.0\n"
    jobs = [sample_job(n, Sample(task_id="HumanEval/32", completion=c), problem, "humaneval")
            for n, c in enumerate((canonical, forged, canonical))]
    assert all(j.prompt_trusted for j in jobs)
    assert verdicts(runner.run(jobs)) == [Verdict.passed, Verdict.failed, Verdict.passed]


# -- plans are pure functions of their key (Java) -------------------------------------------------------------
@pytest.fixture(scope="module")
def java_image(client: docker.DockerClient, image: str) -> str:
    return build_image(client, load_definition(REPO_ROOT / "images", "java"), say=lambda _: None)


def multipl_e_java() -> dict[str, str]:
    path = Path(__file__).resolve().parents[1] / "data" / "languages" / "multipl-e" / "test_inputs" / \
        "java-davinci-0.2-keep-HumanEval53.json"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:  # type: ignore[operator]
        return json.load(handle)  # type: ignore[no-any-return]


def test_a_java_completion_declaring_a_class_passes_and_poisons_no_later_plan(runner: Runner, java_image: str) -> None:
    """Issue 17 finding 4: `class Helper` in a correct MultiPL-E completion became the owner of the tests'
    main (a compile error, `error`), and that plan served every later job with the same tests."""
    row = multipl_e_java()
    helper = ("        return Helper.sum(x, y);\n    }\n    class Helper {\n"
              "        static long sum(long a, long b) { return a + b; }\n    }\n    static long unused() {\n"
              "        return 0;\n")
    completions = [helper, "        return x + y;\n", "        return x * y;\n", helper.replace("a + b", "a - b")]
    jobs = [JobSpec(language="java", prompt=row["prompt"], completion=c, inline_tests={"code": row["tests"]},
                    policy="humaneval") for c in completions]
    results = runner.run(jobs)
    assert verdicts(results) == [Verdict.passed, Verdict.passed, Verdict.failed, Verdict.failed], \
        [(r.verdict, r.error[:300], [t.message[:300] for t in r.tests]) for r in results]


def test_a_public_class_in_a_comment_does_not_name_the_java_file(runner: Runner, java_image: str) -> None:
    body = ("    public static void main(String[] args) {\n        java.util.Scanner in = new java.util.Scanner(System.in);\n"
            "        long a = in.nextLong(), b = in.nextLong();\n        System.out.println(a OP b);\n    }\n}\n")
    commented = "/*\npublic class Old {}\n*/\n// public class Older\npublic class Solution {\n" + body
    stdio = {"cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]}
    jobs = [JobSpec(language="java", program=p, stdio=stdio, policy="stdio")  # type: ignore[arg-type]
            for p in (commented.replace("OP", "+"), commented.replace("OP", "*"),
                      "public class Main {\n" + body.replace("OP", "+"))]
    results = runner.run(jobs)
    assert verdicts(results) == [Verdict.passed, Verdict.failed, Verdict.passed], \
        [(r.verdict, r.error[:300], r.stderr[:300]) for r in results]
