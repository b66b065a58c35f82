"""Resource policies: declarative TOML files in ``policies/``, validated here.

A job names a policy and may tighten any limit (``LimitOverrides``), never loosen one. The
runtime is gVisor (``runsc``) unless a policy file says ``runtime = "runc"`` explicitly, which
logs a loud warning every time such a policy is loaded.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sandbox.errors import PolicyError, PolicyViolation, validation_reasons

__all__ = ["Policy", "LimitOverrides", "load_policy", "load_all_policies", "TIGHTENABLE"]

log = logging.getLogger(__name__)

TIGHTENABLE = ("cpu_time_s", "wall_time_s", "memory_mib", "processes", "scratch_mib", "file_size_mib",
               "open_files", "output_max_kib", "program_max_kib", "case_cpu_time_s", "case_wall_time_s")


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = Field(min_length=1, max_length=2000)
    runtime: Literal["runsc", "runc"] = "runsc"
    cpu_time_s: float = Field(gt=0, le=600, description="CPU seconds one sample may use (all its tests)")
    wall_time_s: float = Field(gt=0, le=1200, description="wall-clock backstop for one sample, inside the sandbox")
    job_wall_time_s: float = Field(gt=0, le=3600, description="wall-clock backstop per sample, enforced by the host")
    check_cpu_time_s: float = Field(default=10, gt=0, le=600,
                                    description="CPU seconds the test driver may spend judging one sample")
    cpus: float = Field(gt=0, le=64, description="CPU share of one sandbox container")
    memory_mib: int = Field(ge=64, le=65536, description="memory of the sandbox and of each process; no swap")
    processes: int = Field(ge=4, le=4096, description="processes and threads the sandbox user may have")
    scratch_mib: int = Field(ge=1, le=65536, description="size of the tmpfs that is the only writable place")
    file_size_mib: int = Field(ge=1, le=65536, description="largest file a program may write")
    shm_mib: int = Field(default=16, ge=1, le=4096, description="size of /dev/shm (POSIX semaphores, shared memory)")
    open_files: int = Field(ge=16, le=65536)
    output_max_kib: int = Field(ge=1, le=65536, description="bytes of stdout and of stderr kept per sample")
    program_max_kib: int = Field(ge=1, le=16384, description="largest program (and largest test code) accepted")
    tests_max_mib: int = Field(default=48, ge=1, le=56, description="largest set of tests one job may carry: its "
                               "cases, expected values, checker and test code, counted as they travel to the sandbox "
                               "(JSON); at most 56, to leave room for programs in the 64 MiB frame a batch travels in")
    case_input_max_mib: int = Field(default=16, ge=1, le=56, description="largest input of one case: a stdio case's "
                                    "stdin, or a call case's arguments (JSON)")
    case_cpu_time_s: float = Field(default=2.0, gt=0, le=600, description="stdio: CPU seconds of one case's run")
    case_wall_time_s: float = Field(default=6.0, gt=0, le=1200, description="stdio: wall-clock backstop of one case")
    case_output_max_kib: int = Field(default=4096, ge=1, le=4096, description="stdio: stdout judged per case; more "
                                     "is 'output limit exceeded'")
    compile_cpu_time_s: float = Field(default=10, gt=0, le=600, description="compiled languages: CPU of a sample's "
                                      "compile step (not counted in cpu_time_s)")
    compile_wall_time_s: float = Field(default=30, gt=0, le=1200, description="wall-clock backstop of a compile step")
    compile_memory_mib: int = Field(default=2048, ge=64, le=65536, description="address space of each compiler process")
    compile_output_max_kib: int = Field(default=64, ge=1, le=4096, description="compiler messages kept")
    build_max_mib: int = Field(default=64, ge=1, le=1024, description="what a compile step may leave for the runs")
    languages: tuple[tuple[str, "LanguageLimits"], ...] = Field(default=(), description="[languages.<name>]: limits "
                                                                "that replace the ones above (a JVM needs more address space)")

    @field_validator("languages", mode="before")
    @classmethod
    def _language_table(cls, value: Any) -> Any:
        return tuple(value.items()) if isinstance(value, dict) else value  # a tuple: policies are hashable

    @model_validator(mode="after")
    def _timeouts_nest(self) -> "Policy":
        if self.wall_time_s < self.cpu_time_s:
            raise ValueError("wall_time_s must be at least cpu_time_s")
        if self.job_wall_time_s <= self.wall_time_s:
            raise ValueError("job_wall_time_s must be greater than wall_time_s (the host's backstop comes last)")
        if self.case_wall_time_s < self.case_cpu_time_s:
            raise ValueError("case_wall_time_s must be at least case_cpu_time_s")
        if self.compile_wall_time_s < self.compile_cpu_time_s:
            raise ValueError("compile_wall_time_s must be at least compile_cpu_time_s")
        from sandbox.languages import canonical_name, known_languages  # the registry imports no policy

        unknown = [name for name, _ in self.languages if canonical_name(name) != name]
        if unknown:
            raise ValueError(f"[languages] names unknown languages {unknown}: use {known_languages()}")
        return self

    def for_language(self, name: str, compiled: bool) -> "Policy":
        """This policy as it applies to programs of one language: its [languages.<name>] limits replace the
        general ones, and the host's per-sample backstop makes room for a compile step."""
        updated: dict[str, Any] = self.model_dump()
        overrides = dict(self.languages).get(name)
        if overrides is not None:
            updated |= overrides.model_dump(exclude_none=True)
        if compiled:
            updated["job_wall_time_s"] = updated["job_wall_time_s"] + updated["compile_wall_time_s"]
        updated["languages"] = ()
        return Policy.model_validate(updated)

    def tightened(self, overrides: "LimitOverrides | None") -> "Policy":
        """This policy with a job's tighter limits applied; loosening any limit is an error."""
        if overrides is None:
            return self
        changes = overrides.model_dump(exclude_none=True)
        for field, value in changes.items():
            allowed = getattr(self, field)
            if value > allowed:
                raise PolicyViolation(
                    f"limit {field}={value} exceeds policy {self.name!r}, which allows at most {allowed}")
        updated = self.model_dump() | changes
        if updated["wall_time_s"] < updated["cpu_time_s"]:
            updated["cpu_time_s"] = updated["wall_time_s"]
        if updated["case_wall_time_s"] < updated["case_cpu_time_s"]:
            updated["case_cpu_time_s"] = updated["case_wall_time_s"]
        return Policy.model_validate(updated)


class LanguageLimits(BaseModel):
    """Limits one language needs instead of the policy's general ones; each says why in the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mib: int | None = Field(default=None, ge=64, le=65536)
    processes: int | None = Field(default=None, ge=4, le=4096)
    open_files: int | None = Field(default=None, ge=16, le=65536)
    cpus: float | None = Field(default=None, gt=0, le=64)
    scratch_mib: int | None = Field(default=None, ge=1, le=65536)
    file_size_mib: int | None = Field(default=None, ge=1, le=65536)
    compile_cpu_time_s: float | None = Field(default=None, gt=0, le=600)
    compile_wall_time_s: float | None = Field(default=None, gt=0, le=1200)
    compile_memory_mib: int | None = Field(default=None, ge=64, le=65536)
    build_max_mib: int | None = Field(default=None, ge=1, le=1024)


class LimitOverrides(BaseModel):
    """Limits a job asks to tighten; each must be at most its policy's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_time_s: float | None = Field(default=None, gt=0)
    wall_time_s: float | None = Field(default=None, gt=0)
    memory_mib: int | None = Field(default=None, ge=64)
    processes: int | None = Field(default=None, ge=4)
    scratch_mib: int | None = Field(default=None, ge=1)
    file_size_mib: int | None = Field(default=None, ge=1)
    open_files: int | None = Field(default=None, ge=16)
    output_max_kib: int | None = Field(default=None, ge=1)
    program_max_kib: int | None = Field(default=None, ge=1)
    case_cpu_time_s: float | None = Field(default=None, gt=0)
    case_wall_time_s: float | None = Field(default=None, gt=0)


def load_policy(name: str, directory: Path) -> Policy:
    path = directory / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.toml"))) or "none"
        raise PolicyError(f"unknown policy {name!r}: no file {path} (known policies: {known})")
    return _load_file(path)


def load_all_policies(directory: Path) -> dict[str, Policy]:
    """Load and validate every policy file (fail fast: the error names the file and the field)."""
    policies = {path.stem: _load_file(path) for path in sorted(directory.glob("*.toml"))}
    if not policies:
        raise PolicyError(f"no policy files (*.toml) in {directory}")
    return policies


def _load_file(path: Path) -> Policy:
    try:
        data = tomllib.loads(path.read_text())
        policy = Policy.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise PolicyError(f"{path}: {validation_reasons(exc, whole='file')}") from exc
    if policy.name != path.stem:
        raise PolicyError(f"{path}: name {policy.name!r} must match the file name {path.stem!r}")
    if policy.runtime != "runsc":
        log.warning("POLICY %s RUNS PROGRAMS WITHOUT gVisor (runtime=%s): only for trusted code", policy.name,
                    policy.runtime)
    return policy


Policy.model_rebuild()
