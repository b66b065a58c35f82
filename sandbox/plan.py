"""Preparing jobs: job + policy -> a prepared job that knows its limits, tests, batch and cache key.

Done once where a job enters a process (the client before queueing, the worker for what comes
out of Redis), never more; this module imports neither docker nor redis.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sandbox.errors import JobValidationError
from sandbox.harness import messages
from sandbox.harness.messages import (MAX_TESTS, BatchRequest, CallTests, InlineTests, Limits, SampleProgram, StdioTests,
                                      Tests)
from sandbox.imagedef import image_tag
from sandbox.languages import Language, language
from sandbox.models import CallCases, InlineTests as InlineTestsSpec, JobSpec, StdioCases, TestSnippet
from sandbox.policy import Policy
from sandbox.testprogram import defined_names_of, plan_check, plan_snippets

__all__ = ["PreparedJob", "Planner", "batch_request", "batch_deadline_s", "limits_for", "REPLY_MAX_BYTES"]

REPLY_MAX_BYTES = 16 << 20          # largest single answer the driver accepts from a sample
HOST_STARTUP_MARGIN_S = 10.0


@dataclass(frozen=True)
class TestPlan:
    """A job's tests as the driver runs them, with one name per test for the results."""

    __test__ = False
    names: tuple[str, ...]
    tests: Tests
    digest: str               # identifies the tests: jobs with equal digests can share a batch

    @property
    def form(self) -> str:
        return self.tests.form


@dataclass(frozen=True)
class PreparedJob:
    job: JobSpec
    policy: Policy          # the job's policy with its tighter limits applied
    tests: TestPlan
    image: str              # the sandbox image tag (a digest of its definition and the harness)

    @property
    def language(self) -> Language:
        return language(self.job.language)

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one batch: same tests, limits, language and image."""
        return (self.tests.digest, self.job.stop_on_first_failure, self.policy, self.image, self.job.language)

    @property
    def cache_key(self) -> str:
        """Everything that can change the verdict: the code, the tests, every limit, the image and harness."""
        material = {"code": self.job.source, "tests": self.tests.digest, "stop": self.job.stop_on_first_failure,
                    "policy": self.policy.model_dump(mode="json"), "image": self.image, "language": self.job.language}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class Planner:
    """Prepares jobs against a fixed set of policies and images (built once per process)."""

    def __init__(self, policies: dict[str, Policy], images_dir: Path) -> None:
        self.policies = policies
        self.images_dir = images_dir

    def policy(self, name: str) -> Policy:
        if name not in self.policies:
            raise JobValidationError(f"unknown policy {name!r} (known: {', '.join(sorted(self.policies))})")
        return self.policies[name]

    def prepare(self, job: JobSpec) -> PreparedJob:
        """Check a job against its policy and plan its tests; raises ``JobValidationError`` naming the problem."""
        entry = language(job.language)
        policy = self.policy(job.policy).for_language(entry.name, bool(entry.compile)).tightened(job.limits)
        limit = policy.program_max_kib * 1024
        size = len(job.source.encode())
        if size > limit:
            raise JobValidationError(f"program is {size} bytes, policy {policy.name!r} accepts at most {limit} "
                                     "(program_max_kib)")
        test_size = len((job.check or "").encode()) + sum(len(t.code.encode()) for t in job.tests or ()) \
            + (len(job.inline_tests.code.encode()) if job.inline_tests else 0)
        if test_size > limit:
            raise JobValidationError(f"tests are {test_size} bytes, at most {limit} accepted")
        return PreparedJob(job, policy, plan_tests(job), image_tag(self.images_dir, entry.image))


def _trusted_prelude(job: JobSpec) -> str | None:
    """The prompt is the problem's own text: trusted to define helpers (like HumanEval's ``poly``)."""
    if job.program is not None or not job.prompt.strip():
        return None
    return job.prompt if defined_names_of(job.prompt) else None


_PLANS: OrderedDict[str, TestPlan] = OrderedDict()     # digest -> plan (test planning parses code: done once)
_DIGESTS: OrderedDict[int, tuple[Any, str]] = OrderedDict()  # id(spec) -> (spec, digest): jobs sharing a spec
CACHE_SIZE = 512


def plan_tests(job: JobSpec) -> TestPlan:
    """The job's test form, planned once per distinct set of tests (the forms registry: ``FORMS``)."""
    field = next(name for name in FORMS if getattr(job, name) is not None)
    spec = getattr(job, field)
    prelude = _trusted_prelude(job) if field in ("check", "tests") else None
    context = job.language if field != "inline_tests" else (job.language, _go_package_hint(job))
    digest = _digest(spec, (field, job.entry_point, prelude, context))
    plan = _PLANS.get(digest)
    if plan is None:
        names, tests = FORMS[field](spec, job.entry_point, prelude if field != "inline_tests" else (job.language, job.source))
        if len(names) > MAX_TESTS:  # each test's outcome must fit in the sample's bounded report
            raise JobValidationError(f"the job has {len(names)} tests (asserts, snippets or cases); "
                                     f"at most {MAX_TESTS} per job: split it")
        plan = _remember(_PLANS, digest, TestPlan(names, tests, digest))
    return plan


def _digest(spec: Any, context: tuple[Any, ...]) -> str:
    known = _DIGESTS.get(id(spec))
    if known is not None and known[0] is spec:
        base = known[1]
    else:
        dumped = spec if isinstance(spec, str) else json.dumps(
            [item.model_dump(mode="json") for item in spec] if isinstance(spec, tuple) else spec.model_dump(mode="json"),
            sort_keys=True)
        base = hashlib.sha256(dumped.encode()).hexdigest()
        _remember(_DIGESTS, id(spec), (spec, base))
    return hashlib.sha256(json.dumps([base, *context]).encode()).hexdigest()


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
    cache[key] = value
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _plan_check(spec: str, entry_point: str, prelude: str | None) -> tuple[tuple[str, ...], Tests]:
    plan = plan_check(spec, entry_point, prelude)
    return plan.names, plan.tests


def _plan_snippets(spec: tuple[TestSnippet, ...], entry_point: str, prelude: str | None) -> tuple[tuple[str, ...], Tests]:
    plan = plan_snippets([(t.name, t.code) for t in spec], entry_point, prelude)
    return plan.names, plan.tests


def _plan_stdio(spec: StdioCases, entry_point: str, prelude: str | None) -> tuple[tuple[str, ...], Tests]:
    if spec.checker is not None:
        try:
            compile(spec.checker, "<checker>", "exec")
        except SyntaxError as exc:
            raise JobValidationError(f"the checker is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    names = tuple(case.name or f"case {index}" for index, case in enumerate(spec.cases, start=1))
    tests = StdioTests(form="stdio", cases=tuple(messages.StdioCase(input=c.input, output=c.output) for c in spec.cases),
                       comparator=spec.comparator, float_tolerance=spec.float_tolerance, checker=spec.checker,
                       apps_wrap=spec.apps_wrap, capture=spec.capture)
    return names, tests


def _plan_calls(spec: CallCases, entry_point: str, prelude: str | None) -> tuple[tuple[str, ...], Tests]:
    names = tuple(case.name or f"case {index}" for index, case in enumerate(spec.cases, start=1))
    tests = CallTests(form="calls", fn_name=spec.fn_name, class_name=spec.class_name, comparator=spec.comparator,
                      cases=tuple(messages.CallCase(args=tuple(c.args), expected=c.expected) for c in spec.cases))
    return names, tests


def _plan_inline(spec: InlineTestsSpec, entry_point: str, context: tuple[str, str]) -> tuple[tuple[str, ...], Tests]:
    """Tests in the program's language: arranged (the language's finale) to print the nonce after the last one."""
    name, program = context
    entry = language(name)
    if entry.finale is None:
        raise JobValidationError(f"{name} programs cannot take inline tests")
    code, support = entry.finale(spec.code, spec.preamble + program)
    return ("tests",), InlineTests(form="inline", code=code, rule=spec.rule, preamble=spec.preamble, support=support)


def _go_package_hint(job: JobSpec) -> str:
    """What of the program the plan of its inline tests depends on (Go: its package clause)."""
    if job.language != "go":
        return ""
    return next((line.strip() for line in job.source.splitlines() if line.strip().startswith("package ")), "")


# The test forms: a JobSpec field -> how its tests are planned. A new form is a new entry (and a
# judge of the same name in ``sandbox/harness/driver.py``).
FORMS: dict[str, Callable[[Any, str, Any], tuple[tuple[str, ...], Tests]]] = {
    "check": _plan_check, "tests": _plan_snippets, "stdio": _plan_stdio, "calls": _plan_calls, "inline_tests": _plan_inline,
}


def limits_for(policy: Policy) -> Limits:
    return Limits(cpu_time_s=policy.cpu_time_s, wall_time_s=policy.wall_time_s, judge_cpu_time_s=policy.check_cpu_time_s,
                  memory_mib=policy.memory_mib, processes=policy.processes, file_size_mib=policy.file_size_mib,
                  open_files=policy.open_files, output_max_bytes=policy.output_max_kib * 1024,
                  reply_max_bytes=REPLY_MAX_BYTES, case_cpu_time_s=policy.case_cpu_time_s,
                  case_wall_time_s=policy.case_wall_time_s, case_output_max_bytes=policy.case_output_max_kib * 1024,
                  compile_cpu_time_s=policy.compile_cpu_time_s, compile_wall_time_s=policy.compile_wall_time_s,
                  compile_memory_mib=policy.compile_memory_mib, compile_output_max_bytes=policy.compile_output_max_kib * 1024,
                  build_max_bytes=policy.build_max_mib << 20)


def batch_request(batch: list[PreparedJob]) -> BatchRequest:
    first = batch[0]
    inline = first.tests.form == "inline"
    entry = first.language
    samples = []
    for prepared in batch:
        tests_text = prepared.job.inline_tests.code if prepared.job.inline_tests else ""
        source_name, main = entry.source_layout(prepared.job.source + "\n" + tests_text, inline)
        samples.append(SampleProgram(id=prepared.job.id, source=prepared.job.source, source_name=source_name, main=main))
    return BatchRequest(op="run", tests=first.tests.tests, samples=tuple(samples), limits=limits_for(first.policy),
                        stop_on_first_failure=first.job.stop_on_first_failure, toolchain=entry.toolchain(inline))


def batch_deadline_s(policy: Policy, samples: int) -> float:
    """The host's wall-clock backstop for a batch; the queue's job timeout is set above it."""
    return policy.job_wall_time_s * samples + HOST_STARTUP_MARGIN_S
