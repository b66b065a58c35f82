"""Bounded tests, refused up front (issue 17, finding 6): the size rule of a job, and batches that fit a frame."""

from __future__ import annotations

import pytest

from sandbox.errors import JobValidationError
from sandbox.harness import messages, protocol
from sandbox.models import JobSpec
from sandbox import plan as plan_module
from sandbox.plan import Planner, batch_request, check_size, frame_batches, reply_bound_bytes, sizes_of
from sandbox.policy import Policy, load_all_policies
from sandbox.settings import REPO_ROOT

MIB = 1 << 20
POLICIES = load_all_policies(REPO_ROOT / "policies")
PLANNER = Planner(POLICIES, REPO_ROOT / "images")
ECHO = "import sys\nsys.stdout.write(sys.stdin.read()[:1])\n"


def stdio_job(inputs: list[str], output: str = "x", program: str = ECHO, **fields: object) -> JobSpec:
    return JobSpec(program=program, policy="stdio",
                   stdio={"cases": [{"input": text, "output": output} for text in inputs]},  # type: ignore[arg-type]
                   **fields)  # type: ignore[arg-type]


def test_every_policy_states_the_size_rule() -> None:
    for policy in POLICIES.values():
        assert 1 <= policy.case_input_max_mib <= policy.tests_max_mib <= 56, policy.name
    with pytest.raises(ValueError, match="tests_max_mib"):
        Policy.model_validate({**POLICIES["stdio"].model_dump(), "tests_max_mib": 64})  # would not fit a frame


def test_a_case_input_over_the_policy_is_refused_naming_the_limit() -> None:
    limit = POLICIES["stdio"].case_input_max_mib
    # 8 Mi characters (the model's own bound is 16 Mi characters), 16 MiB and 2 bytes of UTF-8 on stdin
    with pytest.raises(JobValidationError, match=r"case 2's input is 16\.0 MiB; policy 'stdio' accepts at most 16 MiB "
                                                 r"per case \(case_input_max_mib\)"):
        PLANNER.prepare(stdio_job(["1 2\n", "\u00e9" * (limit * MIB // 2 + 1)]))


def test_tests_over_the_policy_in_total_are_refused_naming_the_limit() -> None:
    # 4 cases of 13 MiB: each allowed, 52 MiB in all (over tests_max_mib = 48)
    with pytest.raises(JobValidationError, match=r"the tests are 52\.\d MiB .* at most 48 MiB \(tests_max_mib\)"):
        PLANNER.prepare(stdio_job(["1" * (13 * MIB)] * 4))


def test_expected_values_count_as_they_travel_escaped() -> None:
    # 10 MiB of control characters is 60 MiB of JSON (\u0001 each): what the frame carries is what counts
    with pytest.raises(JobValidationError, match="tests_max_mib"):
        PLANNER.prepare(stdio_job(["1\n"], output="\x01" * (10 * MIB)))


def test_call_arguments_count_as_case_input() -> None:
    job = JobSpec(program="def f(xs):\n    return 0\n", policy="default",
                  calls={"fn_name": "f", "cases": [{"args": [1, 2], "expected": 0},          # type: ignore[arg-type]
                                                   {"args": ["\x01" * (3 * MIB)], "expected": 0}]})
    # 3 Mi control characters are 18 MiB of JSON arguments: over case_input_max_mib as they travel
    with pytest.raises(JobValidationError, match=r"case 2's input is 18\.0 MiB; .* \(case_input_max_mib\)"):
        PLANNER.prepare(job)


def test_a_job_within_the_rule_is_prepared_and_its_size_measured_as_the_frame_carries_it() -> None:
    prepared = PLANNER.prepare(stdio_job(["5 " * MIB, "1 2\n"], output="\u00e9"))
    sizes = sizes_of(prepared.tests)
    request = batch_request([prepared])
    encoded = len(protocol.pack(messages.to_dict(request.tests)))
    assert sizes.largest_input == 2 * MIB and sizes.largest_case == 1
    assert abs(sizes.encoded - encoded) <= protocol.HEADER.size  # exactly what travels (less the frame header)
    check_size(prepared)  # no error


def test_batches_are_split_so_every_request_and_reply_fits_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 16 * MIB)  # the rule at a smaller scale (the same arithmetic)
    tests = ["9" * (4 * MIB)] * 2                                 # 8 MiB of tests, shared by the whole group
    programs = [f"# {i}\n#" + "\x01" * (200 * 1024) + "\nprint(1)\n" for i in range(8)]  # 1.2 MiB of JSON each
    group = [PLANNER.prepare(stdio_job(tests, program=program)) for program in programs]
    batches = frame_batches(group)
    assert [p.job.id for b in batches for p in b] == [p.job.id for p in group]  # all of them, in order
    assert len(batches) > 1
    for batch in batches:
        assert len(protocol.pack(messages.to_dict(batch_request(batch)))) <= 16 * MIB
        assert len(batch) * reply_bound_bytes(batch[0].policy) <= 16 * MIB
    # small requests: the reply bound decides (each sample may answer ~5 MiB of report and output)
    small = [PLANNER.prepare(stdio_job(["1\n"], program=f"print({i})\n")) for i in range(10)]
    sizes = [len(b) for b in frame_batches(small)]
    assert sum(sizes) == 10 and max(sizes) == (16 * MIB - plan_module.FRAME_MARGIN_BYTES) // reply_bound_bytes(
        small[0].policy)
