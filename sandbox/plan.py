"""Preparing jobs: job + policy -> a prepared job that knows its limits, tests, batch and cache key.

Done once where a job enters a process (the client before queueing, the worker for what comes
out of Redis), never more; this module imports neither docker nor redis.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sandbox.errors import JobValidationError
from sandbox.harness.messages import BatchRequest, Limits, SampleProgram
from sandbox.imagedef import image_tag
from sandbox.models import JobSpec, TestSnippet
from sandbox.policy import Policy
from sandbox.testprogram import TestPlan, defined_names_of, plan_check, plan_snippets

__all__ = ["PreparedJob", "Planner", "batch_request", "batch_deadline_s", "limits_for", "REPLY_MAX_BYTES"]

REPLY_MAX_BYTES = 16 << 20          # largest single answer the driver accepts from a sample
HOST_STARTUP_MARGIN_S = 10.0


@dataclass(frozen=True)
class PreparedJob:
    job: JobSpec
    policy: Policy          # the job's policy with its tighter limits applied
    tests: TestPlan
    prelude: str | None     # the problem's own prompt: trusted, run by the driver
    image: str              # the sandbox image tag (a digest of its definition and the harness)

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one batch: same tests, prelude, limits and image."""
        return (self.tests, self.job.entry_point, self.prelude, self.policy, self.image)

    @property
    def cache_key(self) -> str:
        """Everything that can change the verdict: the code, the tests, every limit, the image and harness."""
        material = {"job": self.job.model_dump(mode="json", exclude={"id", "metadata"}),
                    "policy": self.policy.model_dump(mode="json"), "image": self.image}
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
        policy = self.policy(job.policy).tightened(job.limits)
        limit = policy.program_max_kib * 1024
        size = len(job.source.encode())
        if size > limit:
            raise JobValidationError(f"program is {size} bytes, policy {policy.name!r} accepts at most {limit} "
                                     "(program_max_kib)")
        test_size = len((job.check or "").encode()) + sum(len(t.code.encode()) for t in job.tests or ())
        if test_size > limit:
            raise JobValidationError(f"tests are {test_size} bytes, at most {limit} accepted")
        prelude = _trusted_prelude(job)
        return PreparedJob(job, policy, _plan(job.check, job.tests, job.entry_point, prelude), prelude,
                           image_tag(self.images_dir, policy.image))


def _trusted_prelude(job: JobSpec) -> str | None:
    """The prompt is the problem's own text: trusted to define helpers (like HumanEval's ``poly``)."""
    if job.program is not None or not job.prompt.strip():
        return None
    return job.prompt if defined_names_of(job.prompt) else None


@lru_cache(maxsize=512)
def _plan(check: str | None, tests: tuple[TestSnippet, ...] | None, entry_point: str, prelude: str | None) -> TestPlan:
    if check is not None:
        return plan_check(check, entry_point, prelude)
    assert tests is not None
    return plan_snippets([(t.name, t.code) for t in tests], entry_point, prelude)


def limits_for(policy: Policy) -> Limits:
    return Limits(cpu_time_s=policy.cpu_time_s, wall_time_s=policy.wall_time_s, judge_cpu_time_s=policy.check_cpu_time_s,
                  memory_mib=policy.memory_mib, processes=policy.processes, file_size_mib=policy.file_size_mib,
                  open_files=policy.open_files, output_max_bytes=policy.output_max_kib * 1024,
                  reply_max_bytes=REPLY_MAX_BYTES)


def batch_request(batch: list[PreparedJob]) -> BatchRequest:
    first = batch[0]
    return BatchRequest(op="run", form=first.tests.form, entry_point=first.job.entry_point, prelude=first.prelude,
                        program_names=first.tests.program_names, units=first.tests.units,
                        samples=tuple(SampleProgram(id=p.job.id, source=p.job.source) for p in batch),
                        limits=limits_for(first.policy))


def batch_deadline_s(policy: Policy, samples: int) -> float:
    """The host's wall-clock backstop for a batch; the queue's job timeout is set above it."""
    return policy.job_wall_time_s * samples + HOST_STARTUP_MARGIN_S
