"""sandbox-exec: run untrusted programs against their tests in gVisor sandboxes, at scale.

The public API is what this module exports; everything else may change.
"""

from sandbox.client import Client, Submission
from sandbox.errors import InfrastructureError, JobValidationError, SandboxError
from sandbox.models import JobResult, JobSpec, TestResult, TestSnippet, TestStatus, Verdict
from sandbox.policy import LimitOverrides, Policy
from sandbox.scoring import pass_at_k
from sandbox.settings import Settings

__all__ = [
    "Client", "Submission", "JobSpec", "JobResult", "TestSnippet", "TestResult", "TestStatus", "Verdict",
    "Policy", "LimitOverrides", "Settings", "pass_at_k", "SandboxError", "JobValidationError", "InfrastructureError",
]
