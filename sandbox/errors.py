"""The service's exceptions. One base; infrastructure failures are kept apart from bad input.

SandboxError
├── JobValidationError      bad input: malformed job, unknown language, oversized program...
│   └── PolicyViolation     a job asks for more than its policy allows
├── PolicyError             a policy file is missing or invalid (names file and field)
└── InfrastructureError     engine, runtime, image or queue failures; retried, never the program's fault
    ├── ImageMissing        the sandbox image is not built
    ├── RuntimeUnavailable  gVisor (or the policy's runtime) is not registered with the engine
    ├── SandboxCrashed      the sandbox died or broke its protocol while running a batch
    │   └── SandboxTimeout  the sandbox did not answer before the host's wall-clock backstop
    └── SandboxRefused      a request could not be taken (too large for a frame): no program of it ran

Program outcomes (wrong answers, crashes, timeouts) are never exceptions: they are verdicts.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "validation_reasons", "SandboxError", "JobValidationError", "PolicyViolation", "PolicyError", "InfrastructureError",
    "ImageMissing", "RuntimeUnavailable", "SandboxCrashed", "SandboxTimeout", "SandboxRefused",
]


class SandboxError(Exception):
    """Base of every error this package raises."""


class JobValidationError(SandboxError):
    """A job is malformed or not allowed; the message names the problem."""


class PolicyViolation(JobValidationError):
    """A job asked to loosen a limit of its policy."""


class PolicyError(SandboxError):
    """A policy file could not be loaded or validated."""


class InfrastructureError(SandboxError):
    """Something outside the program failed; the job is retried and reported as infra_error."""


class ImageMissing(InfrastructureError):
    """The sandbox image is not present on the engine."""


class RuntimeUnavailable(InfrastructureError):
    """The container runtime a policy requires is not registered with the engine."""


class SandboxCrashed(InfrastructureError):
    """The sandbox container died or spoke out of protocol while running a batch."""

    def __init__(self, message: str, *, oom_killed: bool = False, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.oom_killed = oom_killed
        self.exit_code = exit_code


class SandboxTimeout(SandboxCrashed):
    """The sandbox did not answer before the host's wall-clock backstop; the container was killed."""


class SandboxRefused(InfrastructureError):
    """A request was refused before any program of it ran (larger than a frame may be): never a program's fault."""


def validation_reasons(exc: Any, whole: str = "job") -> str:
    """A pydantic ``ValidationError`` as "field: reason; ..." (``whole`` names errors of the whole object)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())
