"""Preparing jobs: job + policy -> a prepared job that knows its limits, tests, batch and cache key.

Done once where a job enters a process (the client before queueing, the worker for what comes
out of Redis), never more; this module imports neither docker nor redis.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import astuple, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from sandbox.errors import JobValidationError
from sandbox.harness import messages, protocol
from sandbox.harness.messages import (JUDGED_MAX_BYTES, MAX_TESTS, BatchRequest, CallTests, InlineTests, Limits,
                                      SampleProgram, StdioTests, Tests)
from sandbox.imagedef import image_tag
from sandbox.languages import Language, language
from sandbox.models import CallCases, InlineTests as InlineTestsSpec, JobSpec, StdioCases, TestSnippet
from sandbox.policy import Policy
from sandbox.testprogram import defined_names_of, plan_check, plan_snippets

__all__ = ["PreparedJob", "Planner", "PlanKey", "batch_request", "batch_deadline_s", "limits_for", "REPLY_MAX_BYTES",
           "host_code_digest", "check_size", "frame_batches", "sizes_of", "reply_bound_bytes"]

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
    tenant: str = ""        # whose job it is: jobs of different tenants never share a batch

    @property
    def language(self) -> Language:
        return language(self.job.language)

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one batch: same tenant, tests, limits, language and image, and the same
        sandbox key (re-run rounds run in sandboxes of their own)."""
        return (self.tenant, self.tests.digest, self.job.stop_on_first_failure, self.policy, self.image, self.job.language,
                self.job.sandbox_key)

    @property
    def cache_key(self) -> str:
        """Everything that can change the verdict: the code, the tests, every limit, the image and harness, and
        the host's own judging code (a verdict of a since-fixed bug is not reused)."""
        material = {"code": self.job.source, "tests": self.tests.digest, "stop": self.job.stop_on_first_failure,
                    "policy": self.policy.model_dump(mode="json"), "image": self.image, "language": self.job.language,
                    "host": host_code_digest()}
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

    def prepare(self, job: JobSpec, tenant: str = "") -> PreparedJob:
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
        prepared = PreparedJob(job, policy, plan_tests(job), image_tag(self.images_dir, entry.image), tenant)
        check_size(prepared)
        return prepared


# The host modules whose code decides a verdict (the harness's is in the image tag): part of every cache key.
JUDGING_MODULES = ("plan.py", "testprogram.py", "verdict.py", "languages.py", "lexer.py", "runner.py")


@cache
def host_code_digest() -> str:
    """Digest of the host's judging code, read once per process."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in JUDGING_MODULES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _trusted_prelude(job: JobSpec) -> str | None:
    """The prompt, when the job says it is the problem's own trusted text (HumanEval's, with ``poly``): the driver
    runs it before the tests. Never inferred from the prompt's shape: an untrusted prompt is program only."""
    if not job.prompt_trusted or not job.prompt.strip():
        return None
    return job.prompt if defined_names_of(job.prompt) else None


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan is made of besides the tests themselves; with them, its cache key. A form's planning
    function receives the tests and this key, never the job: what it could read, the key covers."""

    form: str
    language: str
    entry_point: str = ""
    prelude: str | None = None                # check / tests: the trusted prompt the driver runs
    program_names: tuple[str, ...] = ()       # check / tests: what the tests may take from the program
    facts: str = ""                           # inline tests: what the language's finale needs of the program


_PLANS: OrderedDict[str, TestPlan] = OrderedDict()     # digest -> plan (test planning parses code: done once)
_DIGESTS: OrderedDict[int, tuple[Any, str]] = OrderedDict()  # id(spec) -> (spec, digest): jobs sharing a spec
CACHE_SIZE = 512


def plan_key(job: JobSpec, field: str) -> PlanKey:
    """What the plan of ``job``'s ``field`` tests depends on, taken from the job here and only here."""
    if field in ("check", "tests"):
        return PlanKey(field, job.language, job.entry_point, _trusted_prelude(job), job.program_names)
    if field == "inline_tests":
        assert job.inline_tests is not None
        entry = language(job.language)
        facts = entry.facts(job.inline_tests.code, job.inline_tests.preamble + job.source) if entry.facts else ""
        return PlanKey(field, job.language, facts=facts)
    return PlanKey(field, job.language)


def plan_tests(job: JobSpec) -> TestPlan:
    """The job's test form, planned once per distinct set of tests and key (the forms registry: ``FORMS``)."""
    field = next(name for name in FORMS if getattr(job, name) is not None)
    spec = getattr(job, field)
    key = plan_key(job, field)
    digest = _digest(spec, astuple(key))
    plan = _PLANS.get(digest)
    if plan is None:
        names, tests = FORMS[field](spec, key)
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


def _plan_check(spec: str, key: PlanKey) -> tuple[tuple[str, ...], Tests]:
    plan = plan_check(spec, key.entry_point, key.prelude, key.program_names)
    return plan.names, plan.tests


def _plan_snippets(spec: tuple[TestSnippet, ...], key: PlanKey) -> tuple[tuple[str, ...], Tests]:
    plan = plan_snippets([(t.name, t.code) for t in spec], key.entry_point, key.prelude, key.program_names)
    return plan.names, plan.tests


def _plan_stdio(spec: StdioCases, key: PlanKey) -> tuple[tuple[str, ...], Tests]:
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


def _plan_calls(spec: CallCases, key: PlanKey) -> tuple[tuple[str, ...], Tests]:
    names = tuple(case.name or f"case {index}" for index, case in enumerate(spec.cases, start=1))
    tests = CallTests(form="calls", fn_name=spec.fn_name, class_name=spec.class_name, comparator=spec.comparator,
                      cases=tuple(messages.CallCase(args=tuple(c.args), expected=c.expected) for c in spec.cases))
    return names, tests


def _plan_inline(spec: InlineTestsSpec, key: PlanKey) -> tuple[tuple[str, ...], Tests]:
    """Tests in the program's language: arranged (the language's finale) to print the nonce after the last one."""
    entry = language(key.language)
    if entry.finale is None:
        raise JobValidationError(f"{key.language} programs cannot take inline tests")
    code, support = entry.finale(spec.code, key.facts)
    return ("tests",), InlineTests(form="inline", code=code, rule=spec.rule, preamble=spec.preamble, support=support)


# The test forms: a JobSpec field -> how its tests are planned from the tests and their PlanKey. A new form
# is a new entry (and a judge of the same name in ``sandbox/harness/driver.py``).
FORMS: dict[str, Callable[[Any, PlanKey], tuple[tuple[str, ...], Tests]]] = {
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
                  build_max_bytes=policy.build_max_mib << 20, cpus=policy.cpus)


# -- sizes: every job is bounded up front, every batch fits the frame it travels in ----------------------------
FRAME_MARGIN_BYTES = 1 << 20        # a request's limits, toolchain and framing, with room to spare


@dataclass(frozen=True)
class TestSizes:
    """A plan's tests as they travel to the sandbox."""

    __test__ = False
    encoded: int              # bytes of the tests in a request (JSON as ``protocol.pack`` writes it)
    largest_input: int        # the largest case input: a stdio case's stdin (UTF-8), a call case's arguments (JSON)
    largest_case: int         # which case that is (1-based; 0 if the tests have no cases)


_SIZES: OrderedDict[str, TestSizes] = OrderedDict()   # plan digest -> its sizes (measured once)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))  # ASCII: as protocol.pack encodes frames


def sizes_of(plan: TestPlan) -> TestSizes:
    known = _SIZES.get(plan.digest)
    if known is not None:
        return known
    tests = plan.tests
    inputs: list[int] = []
    if isinstance(tests, StdioTests):
        inputs = [len(case.input.encode("utf-8", "surrogatepass")) for case in tests.cases]
    elif isinstance(tests, CallTests):
        inputs = [_json_bytes(list(case.args)) for case in tests.cases]
    largest = max(range(len(inputs)), key=inputs.__getitem__, default=-1)
    sizes = TestSizes(_json_bytes(messages.to_dict(tests)), inputs[largest] if inputs else 0, largest + 1)
    return _remember(_SIZES, plan.digest, sizes)  # type: ignore[no-any-return]


def sample_bytes(prepared: PreparedJob) -> int:
    """What one sample adds to a request (its id and program as JSON, and its file names)."""
    return _json_bytes([prepared.job.id, prepared.job.source]) + 1024


def reply_bound_bytes(policy: Policy) -> int:
    """The most one sample adds to a batch's reply: its report (bounded by the driver), and stdout and stderr, whose
    bytes JSON may escape 6-fold."""
    return JUDGED_MAX_BYTES + 12 * policy.output_max_kib * 1024 + (256 << 10)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def check_size(prepared: PreparedJob) -> None:
    """Refuse a job whose tests or request could not reach a sandbox whole: ``JobValidationError`` naming the limit."""
    policy, sizes = prepared.policy, sizes_of(prepared.tests)
    if sizes.largest_input > policy.case_input_max_mib << 20:
        raise JobValidationError(f"case {sizes.largest_case}'s input is {_mib(sizes.largest_input)}; policy "
                                 f"{policy.name!r} accepts at most {policy.case_input_max_mib} MiB per case "
                                 "(case_input_max_mib)")
    if sizes.encoded > policy.tests_max_mib << 20:
        raise JobValidationError(f"the tests are {_mib(sizes.encoded)} as they travel to the sandbox (cases, expected "
                                 f"values, checker and test code, as JSON); policy {policy.name!r} accepts at most "
                                 f"{policy.tests_max_mib} MiB (tests_max_mib): split the job")
    alone = sizes.encoded + sample_bytes(prepared) + FRAME_MARGIN_BYTES
    if alone > protocol.MAX_FRAME_BYTES:
        raise JobValidationError(f"the job is {_mib(alone)} with its program (as JSON), more than the "
                                 f"{protocol.MAX_FRAME_BYTES >> 20} MiB a request to a sandbox may be (the frame limit)")


def frame_batches(group: list[PreparedJob]) -> list[list[PreparedJob]]:
    """Jobs of one group key in batches whose request, and whose largest possible reply, fit one frame: the tests
    travel once per batch, each program with it, and each sample's report comes back."""
    if not group:
        return []
    budget = protocol.MAX_FRAME_BYTES - FRAME_MARGIN_BYTES
    tests, reply = sizes_of(group[0].tests).encoded, reply_bound_bytes(group[0].policy)
    batches: list[list[PreparedJob]] = []
    current: list[PreparedJob] = []
    request = tests
    for prepared in group:
        size = sample_bytes(prepared)
        if current and (request + size > budget or (len(current) + 1) * reply > budget):
            batches.append(current)
            current, request = [], tests
        current.append(prepared)
        request += size
    batches.append(current)
    return batches


def batch_request(batch: list[PreparedJob]) -> BatchRequest:
    """One request for jobs that share their tests, limits, language and image (one ``group_key``)."""
    first = batch[0]
    if any(prepared.group_key != first.group_key for prepared in batch):
        raise ValueError("a batch must not mix jobs whose tests, limits, language or image differ")
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
