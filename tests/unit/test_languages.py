"""The language registry, per-language policies, inline-test finales and the HumanEval-X / MultiPL-E readers
(pure logic; the languages themselves run in tests/integration/test_languages.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.errors import JobValidationError, PolicyError
from sandbox.harness import comparators
from sandbox.harness.messages import NONCE_MARK
from sandbox.languages import LANGUAGES, _body_end, images_by_name, language
from sandbox.lexer import mask
from sandbox.models import JobSpec
from sandbox.plan import Planner, batch_request
from sandbox.policy import Policy, load_all_policies
from sandbox.problems import Sample, load_problems, sample_job

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "languages"


def test_every_entry_names_an_image_definition_and_answers_to_its_aliases() -> None:
    for entry in LANGUAGES.values():
        assert (REPO / "images" / entry.image / "image.toml").is_file(), entry.name
        for alias in (entry.name, *entry.aliases, entry.name.upper()):
            assert language(alias) is entry
        assert entry.native == (entry.name == "python")
        assert entry.compile or entry.native or entry.name == "javascript"  # only Node runs its source as is
    assert images_by_name()["gcc"] == ["c", "cpp"] and images_by_name()["node"] == ["javascript", "typescript"]
    with pytest.raises(JobValidationError, match="unsupported language 'cobol'.*python, c, cpp"):
        language("cobol")


def test_jobs_are_checked_against_their_language() -> None:
    assert JobSpec(language="C++", program="int main(){}", stdio={"cases": [{"input": "", "output": ""}]}).language == "cpp"
    with pytest.raises(ValidationError, match="unsupported language 'brainfuck'"):
        JobSpec(language="brainfuck", program="+", stdio={"cases": [{"input": "", "output": ""}]})
    with pytest.raises(ValidationError, match="cpp programs take `stdio` or `inline_tests` tests, not `check`"):
        JobSpec(language="cpp", program="int f();", check="def check(c): pass", entry_point="f")
    with pytest.raises(ValidationError, match="python programs take .* not `inline_tests`"):
        JobSpec(program="x = 1", inline_tests={"code": "assert x == 1"})
    with pytest.raises(ValidationError, match="unknown rule 'exit_one'"):
        JobSpec(language="go", program="package main", inline_tests={"code": "func TestX(t *testing.T) {}", "rule": "exit_one"})


def test_language_limits_replace_the_general_ones_and_leave_room_for_the_compile_step() -> None:
    policies = load_all_policies(REPO / "policies")
    stdio = policies["stdio"]
    java = stdio.for_language("java", compiled=True)
    assert (java.memory_mib, java.processes, java.compile_cpu_time_s) == (2048, 64, 30)
    assert java.job_wall_time_s == stdio.job_wall_time_s + stdio.compile_wall_time_s
    assert stdio.for_language("python", compiled=False) == stdio.model_copy(update={"languages": ()})
    assert stdio.for_language("cpp", compiled=True).memory_mib == stdio.memory_mib
    with pytest.raises(ValueError, match="unknown languages"):
        Policy.model_validate({**stdio.model_dump(), "languages": {"fortran": {"memory_mib": 64}}})
    assert PolicyError  # policy files naming an unknown language fail at load, like any other field


def test_a_job_is_planned_with_its_language_toolchain_and_image() -> None:
    planner = Planner(load_all_policies(REPO / "policies"), REPO / "images")
    job = JobSpec(language="java", program="public class Answer { public static void main(String[] a) {} }",
                  stdio={"cases": [{"input": "", "output": ""}]}, policy="stdio")
    prepared = planner.prepare(job)
    request = batch_request([prepared])
    assert prepared.image.startswith("sandbox-java:") and prepared.policy.memory_mib == 2048
    assert request.toolchain.language == "java" and request.toolchain.compile[0] == "javac"
    assert (request.samples[0].source_name, request.samples[0].main) == ("Answer.java", "Answer")
    assert request.limits.compile_cpu_time_s == 30
    python = planner.prepare(JobSpec(program="print(1)", stdio={"cases": [{"input": "", "output": "1\n"}]}, policy="stdio"))
    assert python.group_key != prepared.group_key and batch_request([python]).toolchain.native


def test_body_end_skips_strings_characters_and_comments() -> None:
    text = 'int main(){ f("}"); char c = \'}\'; /* } */ // }\n g(); }\nrest'
    end = _body_end(mask(text, "c"), 0)
    assert text[end] == "}" and text[end + 1:] == "\nrest"
    assert _body_end("int main() { never closed", 0) == -1


def test_c_finale_renames_main_returns_zero_and_prints_the_nonce_after_the_tests() -> None:
    tests, support = language("cpp").finale("#include <cassert>\nint main(){ assert(f(1) == 2); }\n", "")  # type: ignore[misc]
    assert support == ()
    assert "int sandbox_tests_main(void){ assert(f(1) == 2); return 0;\n}" in tests
    assert tests.index("#undef __assert_fail") < tests.index("sandbox_tests_main")  # assert is restored first
    assert tests.count(NONCE_MARK) == 1 and tests.index(NONCE_MARK) > tests.index("int main(void)")
    with pytest.raises(JobValidationError, match="no `int main"):
        language("c").finale("void test(void) {}", "")  # type: ignore[misc]


def test_java_finale_finds_the_class_of_main_in_the_program_or_the_tests() -> None:
    java = language("java")
    code = "    }\n    public static void main(String[] args) {\n  assert f() == 1;\n }\n}\n"
    owner = java.facts(code, "class Problem {\n    static int f() {\n")  # type: ignore[misc]
    tests, _ = java.finale(code, owner)  # type: ignore[misc]
    assert "public static void sandboxTestsMain(String[] args)" in tests and "Problem.sandboxTestsMain(args)" in tests
    assert language("java").source_layout("public final class Solve {}") == ("Solve.java", "Solve")
    assert language("java").source_layout("class A {}", inline=True) == ("Main.java", "SandboxFinale")


def test_go_finale_resets_test_flags_in_the_programs_package() -> None:
    go, code = language("go"), "func TestX(t *testing.T) {}"
    tests, [(name, text)] = go.finale(code, go.facts(code, "package has_close_elements_test\n"))  # type: ignore[misc]
    assert name == "sandbox_finale_test.go" and text.startswith("package has_close_elements_test\n")
    assert "sandboxos.Args = sandboxos.Args[:1]" in text and 'sandboxflag.Set("test.run", "")' in text
    assert text.index("sandboxflag.Set") < text.index("m.Run()") < text.index(NONCE_MARK)


def test_rust_finale_calls_humaneval_x_test_functions_or_renames_main() -> None:
    humaneval_x = ("#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn test_add() {\n"
                   "        assert_eq!(add(1, 2), 3);\n    }\n}\n")
    tests, _ = language("rust").finale(humaneval_x, "")  # type: ignore[misc]
    assert "pub mod tests" in tests and "pub fn test_add()" in tests and "tests::test_add();" in tests
    assert "#[cfg(test)]" not in tests and "#[test]" not in tests
    multipl_e = "}\n\nfn main() {\n    let candidate = add;\n    assert_eq!(candidate(1, 2), 3);\n}\n"
    tests, _ = language("rust").finale(multipl_e, "")  # type: ignore[misc]
    assert "fn sandbox_tests_main()" in tests and tests.rstrip().endswith("}") and NONCE_MARK in tests
    commented = "/*\n#[cfg(test)]\nmod tests {\n#[test]\n    fn test_poly() {}\n}\n*/\n"  # HumanEval-X Rust/32
    tests, _ = language("rust").finale(commented, "")  # type: ignore[misc]
    assert "tests::test_poly" not in tests and NONCE_MARK in tests


def test_inline_rules_need_status_zero_and_the_nonce_and_silent_needs_nothing_else() -> None:
    exit_zero, silent = comparators.INLINE["exit_zero"], comparators.INLINE["silent"]
    assert exit_zero(0, "x\nN\n", "", "N") == (True, "")
    assert exit_zero(0, "x\n", "", "N")[0] is False and "ended before its tests did" in exit_zero(0, "", "", "N")[1]
    assert exit_zero(1, "N\n", "", "N")[0] is False
    assert exit_zero(0, "xN\n", "", "N")[0] is False  # the nonce must be a line of its own
    assert silent(0, "N\n", "", "N") == (True, "")
    assert silent(0, "Assertion failed\nN\n", "", "N")[0] is False
    assert silent(0, "N\n", "Assertion failed", "N")[0] is False


def test_humaneval_x_programs_are_assembled_as_codegeex_assembles_them() -> None:
    cpp = load_problems(DATA / "humaneval-x" / "humaneval_cpp.jsonl.gz")
    first = cpp["CPP/0"]
    assert first.language == "cpp" and first.inline is not None and first.inline.rule == "exit_zero"
    assert first.inline.preamble.startswith("#include<stdlib.h>\n") and "#include<math.h>" not in first.inline.preamble
    js = load_problems(DATA / "humaneval-x" / "humaneval_js.jsonl.gz")
    assert js["JavaScript/0"].inline.rule == "silent"  # type: ignore[union-attr]
    go = load_problems(DATA / "humaneval-x" / "humaneval_go.jsonl.gz")["Go/0"]
    assert go.inline is not None and go.inline.preamble.startswith("package main") and "import" not in go.prompt.split("func")[0]
    job = sample_job(1, Sample(task_id="Go/0", completion="    return math.Abs(1) > 0 && strings.Contains(\"\", \"\")\n}\n"),
                     go, "humaneval")
    assert job.prompt.startswith('import (\n    "math"\n    "strings"\n)\n')  # the packages the generation uses
    rust = load_problems(DATA / "humaneval-x" / "humaneval_rust.jsonl.gz")["Rust/0"]
    assert rust.prompt.startswith("\nuse std::") or rust.prompt.lstrip().startswith("use ")
    multipl = load_problems(DATA / "multipl-e" / "humaneval-ts-reworded.jsonl.gz")
    assert {p.language for p in multipl.values()} == {"typescript"} and all(p.inline for p in multipl.values())
