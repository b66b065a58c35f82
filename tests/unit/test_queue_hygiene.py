"""Pure parts of the queue's trust and hygiene: job input fit to travel, signed cache entries, compact
results, tenants' key patterns and ACL rules, the RQ job guard, the worker's last-resort result."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from rq.job import Job

from sandbox import broker
from sandbox.errors import InfrastructureError
from sandbox.jsonl import check_jobs, read_lines
from sandbox.models import METADATA_MAX_BYTES, JobResult, JobSpec, TestResult, TestStatus, Verdict, unfit_for_json
from sandbox.settings import Settings
from sandbox.signing import CacheSigner, load_signer
from worker.tasks import last_resort

BASE = {"program": "def f(x):\n    return x\n", "check": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"}


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


# -- metadata and every value of a job: strict UTF-8, bounded depth and size ---------------------------
@pytest.mark.parametrize("metadata, reason", [
    ({"who": "\ud800"}, "metadata.who: not valid UTF-8 text (a lone surrogate"),
    ({"k": ["ok", {"deep": "x\udfff"}]}, "metadata.k[1].deep: not valid UTF-8"),
    ({"\ud83d": 1}, "metadata[key]: not valid UTF-8"),
    (nested(300), "nested more than 20 levels deep"),
    ({"x": float("nan")}, "metadata.x: nan is not a JSON number"),
    ({"x": {1, 2}}, "metadata.x: a set is not a JSON value"),
    ({"x": "y" * METADATA_MAX_BYTES}, f"at most {METADATA_MAX_BYTES} accepted"),
])
def test_metadata_that_could_not_travel_is_refused_naming_the_problem(metadata: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({**BASE, "metadata": metadata})
    assert reason in str(caught.value)


def test_fit_metadata_passes_and_serialises() -> None:
    metadata = {"task_id": "HumanEval/0", "scores": [1, 2.5, None, True], "nested": nested(15), "text": "é 漢 🙂"}
    job = JobSpec.model_validate({**BASE, "metadata": metadata})
    assert json.loads(job.model_dump_json())["metadata"] == metadata
    assert JobResult(job_id=job.id, verdict=Verdict.passed, metadata=job.metadata).model_dump_json()


def test_call_arguments_too_deep_or_not_utf8_are_refused() -> None:
    calls = {"fn_name": "f", "cases": [{"args": [nested(150)], "expected": 1}]}
    with pytest.raises(ValidationError, match="nested more than 100 levels deep"):
        JobSpec.model_validate({"program": "def f(x):\n    return 1\n", "calls": calls})
    calls = {"fn_name": "f", "cases": [{"args": ["\udc80"], "expected": 1}]}
    with pytest.raises(ValidationError, match=r"calls\.cases\[0\]\.args\[0\]: not valid UTF-8"):
        JobSpec.model_validate({"program": "def f(x):\n    return 1\n", "calls": calls})


def test_the_walk_does_not_recurse() -> None:
    deep: list[object] = []
    for _ in range(200_000):
        deep = [deep]
    assert "nested more than 100 levels deep" in str(unfit_for_json(deep))


def test_bad_lines_of_a_job_file_are_reported_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl.gz"
    good = json.dumps({**BASE, "id": "good"})
    lines = [good,
             json.dumps({**BASE, "id": "surrogate", "metadata": {"m": "\ud800"}}),   # json escapes it: "\ud800"
             json.dumps({**BASE, "id": "deep300", "metadata": nested(300)}),
             "[" * 100_000 + "]" * 100_000,
             json.dumps({**BASE, "id": "good2"})]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    parsed = list(read_lines(path))
    assert parsed[3][0] == 4 and parsed[3][1] is None and "nested too deeply" in parsed[3][2]
    check = check_jobs(path, lambda job: None)
    assert check.good == 2 and check.bad_lines == 3
    reasons = dict(problem.split(": ", 1) for problem in check.problems)
    assert "metadata.m: not valid UTF-8" in reasons["2"]
    assert "nested more than 20 levels deep" in reasons["3"]
    assert "nested too deeply to parse" in reasons["4"]


# -- the worker's last resort ---------------------------------------------------------------------------
def test_the_last_resort_result_serialises_whatever_the_job_carried() -> None:
    result = last_resort("job-\ud800", "worker failure: \udcff cannot be encoded")
    body = json.loads(result.model_dump_json())
    assert body["verdict"] == "infra_error" and body["metadata"] == {} and body["job_id"] == "job-\\ud800"


# -- signed cache entries -------------------------------------------------------------------------------
def test_a_sealed_entry_opens_only_unchanged_under_its_own_key() -> None:
    signer = CacheSigner(b"k" * 32)
    body = JobResult(job_id="j", verdict=Verdict.failed).model_dump_json()
    entry = signer.seal("sandbox:cache:abc", body)
    assert signer.open("sandbox:cache:abc", entry.encode()) == body
    assert signer.open("sandbox:cache:abc", entry.replace('"failed"', '"passed"')) is None       # forged verdict
    assert signer.open("sandbox:cache:other", entry) is None                                      # copied elsewhere
    assert signer.open("sandbox:cache:abc", body) is None                                         # unsigned (old format)
    assert signer.open("sandbox:cache:abc", b"\xff\xfe") is None
    assert CacheSigner(b"x" * 32).open("sandbox:cache:abc", entry) is None                        # another key
    with pytest.raises(InfrastructureError):
        CacheSigner(b"short")


def test_the_key_file_is_made_once_private_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    settings = Settings(cache_key_file=tmp_path / "state" / "cache-key")
    first = load_signer(settings)
    mode = (tmp_path / "state" / "cache-key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert load_signer(settings).key_id == first.key_id              # kept, not made again
    os.chmod(tmp_path / "state" / "cache-key", 0o644)
    with pytest.raises(InfrastructureError, match="readable by no one else"):
        load_signer(settings)
    assert load_signer(Settings(cache_key="s" * 32, cache_key_file=tmp_path / "none")).key_id != first.key_id
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(cache_key="short")


# -- what results hold in Redis -------------------------------------------------------------------------
def test_compact_bounds_what_a_sample_chose_and_keeps_every_status() -> None:
    flood = "\x01" * (64 * 1024)
    result = JobResult(job_id="j", verdict=Verdict.failed, stdout=flood, stderr=flood, error="\x02" * 100_000,
                       tests=tuple(TestResult(name=f"t{i}", status=TestStatus.failed, message="\x03" * 10_000)
                                   for i in range(1000)))
    assert len(result.model_dump_json()) > 60_000_000
    small = broker.compact(result)
    quiet = result.model_copy(update={"stdout": "", "stderr": "", "error": "",
                                      "tests": tuple(t.model_copy(update={"message": ""}) for t in result.tests)})
    chosen = len(small.model_dump_json().encode()) - len(quiet.model_dump_json().encode())
    assert chosen < 80_000  # what the sample printed and said, escaped 6-fold: bounded whatever it was
    assert [t.status for t in small.tests] == [t.status for t in result.tests] and small.verdict is Verdict.failed
    assert small.stdout_truncated and small.stderr_truncated and len(small.stdout) <= broker.KEPT_OUTPUT_CHARS
    untouched = JobResult(job_id="j", verdict=Verdict.passed, stdout="hi\n")
    assert broker.compact(untouched) == untouched


@pytest.mark.parametrize("update, cacheable", [
    ({}, True), ({"verdict": Verdict.infra_error}, False), ({"anomalies": ("timeout under load: not final",)}, False),
    ({"reused": True}, False), ({"verdict": Verdict.timeout}, True),
    ({"verdict": Verdict.timeout, "provisional": "wall-clock kill on a loaded machine"}, False)])
def test_only_final_results_are_cached(update: dict[str, object], cacheable: bool) -> None:
    assert broker.cacheable(JobResult(job_id="j", verdict=Verdict.failed).model_copy(update=update)) is cacheable


# -- tenants --------------------------------------------------------------------------------------------
def test_tenants_key_patterns_never_overlap_and_bad_names_are_refused() -> None:
    a, ab = broker.batch_id("a"), broker.batch_id("a-b")
    assert broker.tenant_of_batch(a) == "a" and broker.tenant_of_batch(ab) == "a-b"
    assert broker.tenant_of_batch("batch-" + "0" * 32) is None and broker.tenant_of_batch("batch_a_x") is None
    assert "~rq:job:batch_a_*" in broker.client_acl("a")
    assert not ab.startswith("batch_a_")  # tenant "a"'s pattern does not reach tenant "a-b"'s jobs
    for bad in ("A", "a_b", "a:b", "a*", "-a", "", "x" * 33):
        with pytest.raises(ValueError):
            broker.client_acl(bad)
        with pytest.raises(ValidationError):
            Settings(tenant=bad)


def test_a_client_user_has_no_write_on_the_cache_or_other_tenants_keys() -> None:
    rules = broker.client_acl("team-a")
    assert "~sandbox:*" not in rules and "sandbox:cache" not in rules and "@scripting" not in rules
    assert "+@write" not in rules and "+@all" not in rules and "~*" not in rules
    assert broker.client_user("default") == "sandbox-client" and broker.client_user("team-a") == "sandbox-client-team-a"
    acl = broker.acl_file("w" * 8, {"default": "c" * 8, "team-a": "t" * 8})
    assert acl.count("\nuser sandbox-client") == 2 and acl.startswith("user default off\n")


# -- the RQ job guard -----------------------------------------------------------------------------------
def rq_job(func: str, args: list[object], job_id: str | None = None, **options: object) -> Job:
    return Job.create(func, args=args, connection=redis.Redis(), id=job_id or broker.batch_id("default"), **options)


def test_workers_refuse_rq_jobs_that_are_not_batches() -> None:
    payload = {"submission": "s", "result_ttl_s": 60, "jobs": []}
    assert broker.foreign_job(rq_job(broker.TASK, [payload])) is None
    assert "os.system" in str(broker.foreign_job(rq_job("os.system", ["touch /tmp/x"])))
    assert "not one batch payload" in str(broker.foreign_job(rq_job(broker.TASK, ["x", "y"])))
    assert "failure callback" in str(broker.foreign_job(rq_job(broker.TASK, [payload], on_failure="os.system")))
    assert "names no tenant" in str(broker.foreign_job(rq_job(broker.TASK, [payload], job_id="batch-" + "0" * 32)))


# -- Redis memory in `sandbox status` -------------------------------------------------------------------
def pool_state(used: int, limit: int, maxmemory: int) -> dict[str, object]:
    return {"time": 0.0, "alerts": [], "workers": [], "running_batches": [], "orphan_containers": [], "disks": [],
            "queues": [], "verdicts_last_15_min": {}, "completed_per_min": 0.0,
            "redis_memory": {"used": used, "limit": limit, "maxmemory": maxmemory, "policy": "noeviction"}}


@pytest.mark.parametrize("used, limit, maxmemory, warned", [
    (900 << 20, 1 << 30, 1 << 30, True), (100 << 20, 1 << 30, 1 << 30, False),
    (30 << 30, 32 << 30, 0, True), (0, 0, 0, False)])
def test_status_warns_when_redis_memory_nears_its_limit(used: int, limit: int, maxmemory: int, warned: bool) -> None:
    from sandbox.monitor import _warnings, render

    state = pool_state(used, limit, maxmemory)
    state["warnings"] = _warnings(state, 1.0)
    assert any(w["kind"] == "redis_memory" for w in state["warnings"]) is warned  # type: ignore[attr-defined]
    assert "REDIS MEMORY: " in render(state)
