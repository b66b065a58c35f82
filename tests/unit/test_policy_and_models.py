from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.errors import JobValidationError, PolicyError, PolicyViolation
from sandbox.models import JobSpec
from sandbox.plan import Planner
from sandbox.policy import LimitOverrides, Policy, load_all_policies, load_policy
from sandbox.settings import REPO_ROOT


def test_shipped_policies_load_and_use_gvisor(policies: dict[str, Policy]) -> None:
    assert {"default", "humaneval"} <= set(policies)
    assert all(p.runtime == "runsc" for p in policies.values())
    assert policies["humaneval"].cpu_time_s == 3


def test_jobs_may_tighten_but_never_loosen(policies: dict[str, Policy]) -> None:
    humaneval = policies["humaneval"]
    tighter = humaneval.tightened(LimitOverrides(cpu_time_s=1, memory_mib=128))
    assert (tighter.cpu_time_s, tighter.memory_mib, tighter.runtime) == (1, 128, "runsc")
    with pytest.raises(PolicyViolation, match="memory_mib=4096 exceeds policy 'humaneval'"):
        humaneval.tightened(LimitOverrides(memory_mib=4096))


def test_runtime_cannot_be_chosen_by_a_job() -> None:
    with pytest.raises(ValidationError, match="runtime"):
        LimitOverrides.model_validate({"runtime": "runc"})


def _write(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.toml").write_text(body)


GOOD = """name = "{name}"
description = "test"
cpu_time_s = 1
wall_time_s = 2
job_wall_time_s = 5
cpus = 1
memory_mib = 256
processes = 16
scratch_mib = 8
file_size_mib = 1
open_files = 64
output_max_kib = 4
program_max_kib = 8
"""


def test_bad_policy_file_names_file_and_field(tmp_path: Path) -> None:
    _write(tmp_path, "broken", GOOD.format(name="broken").replace("memory_mib = 256", "memory_mib = 1"))
    with pytest.raises(PolicyError, match=r"broken.toml: memory_mib: Input should be greater than or equal to 64"):
        load_all_policies(tmp_path)


def test_policy_timeouts_must_nest(tmp_path: Path) -> None:
    _write(tmp_path, "p", GOOD.format(name="p").replace("job_wall_time_s = 5", "job_wall_time_s = 2"))
    with pytest.raises(PolicyError, match="job_wall_time_s must be greater than wall_time_s"):
        load_policy("p", tmp_path)


def test_unknown_fields_and_unknown_policies_are_errors(tmp_path: Path) -> None:
    _write(tmp_path, "p", GOOD.format(name="p") + "network = true\n")
    with pytest.raises(PolicyError, match="network: Extra inputs are not permitted"):
        load_policy("p", tmp_path)
    with pytest.raises(PolicyError, match="unknown policy 'nope'.*known policies: p"):
        load_policy("nope", tmp_path)


def test_runc_policy_warns_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path, "trusted", GOOD.format(name="trusted") + 'runtime = "runc"\n')
    with caplog.at_level(logging.WARNING):
        assert load_policy("trusted", tmp_path).runtime == "runc"
    assert "WITHOUT gVisor" in caplog.text


def test_unknown_language_is_named() -> None:
    with pytest.raises(ValidationError, match="unsupported language 'cobol'"):
        JobSpec(language="cobol", program="x", check="def check(c): assert c", entry_point="f")


@pytest.mark.parametrize("fields, message", [
    ({"program": "x", "prompt": "y", "check": "c"}, "either `program` or `prompt`"),
    ({"check": "c"}, "the job has no code"),
    ({"program": "x"}, "exactly one of `check`"),
    ({"program": "x", "check": "c", "bogus": 1}, "bogus"),
    ({"program": "x", "check": "c", "entry_point": "not a name"}, "entry_point"),
])
def test_malformed_jobs_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"entry_point": "f", **fields})


def test_cache_key_covers_code_tests_policy_settings_and_image(policies: dict[str, Policy], tmp_path: Path) -> None:
    check = "def check(candidate):\n    assert candidate() == 1\n"
    planner = Planner(policies, REPO_ROOT / "images")
    a = planner.prepare(JobSpec(id="a", program="def f(): return 1", check=check, entry_point="f", metadata={"k": 1}))
    b = planner.prepare(JobSpec(id="b", program="def f(): return 1", check=check, entry_point="f"))
    c = planner.prepare(JobSpec(id="c", program="def f(): return 2", check=check, entry_point="f"))
    assert a.cache_key == b.cache_key != c.cache_key
    tighter = planner.prepare(JobSpec(id="d", program="def f(): return 1", check=check, entry_point="f",
                                      limits={"cpu_time_s": 1}))
    assert tighter.cache_key != a.cache_key
    # The same policy name with different settings (an operator edited the file) is different work.
    edited = {**policies, "default": policies["default"].model_copy(update={"memory_mib": 256})}
    assert Planner(edited, REPO_ROOT / "images").prepare(b.job).cache_key != b.cache_key
    # A different image or harness (its tag is a digest of both) is different work too.
    assert dataclasses.replace(b, image=b.image + "x").cache_key != b.cache_key


def test_prompt_and_completion_join_like_humaneval() -> None:
    job = JobSpec(prompt="def f():\n", completion="    return 1\n", check="c", entry_point="f")
    assert job.source == "def f():\n    return 1\n"


def test_a_job_has_at_most_ten_thousand_tests(policies: dict[str, Policy]) -> None:
    """Each test's outcome travels in the sample's bounded report: a job too large to report is refused
    up front, with the count, instead of failing in the sandbox."""
    with pytest.raises(ValidationError, match="at most 10000"):
        JobSpec(program="print(1)\n", stdio={"cases": [{"input": "", "output": "1\n"}] * 10_001})
    check = "def check(candidate):\n" + "    assert candidate(1)\n" * 10_001  # within the size limit
    with pytest.raises(JobValidationError, match="has 10001 tests .* at most 10000 per job"):
        Planner(policies, REPO_ROOT / "images").prepare(JobSpec(program="def f(x):\n    return x\n", check=check,
                                                                entry_point="f"))
