"""The HTTP service driven by clients other people wrote, against the real stack: `sandbox serve` as a
subprocess on loopback (random port, a token), a private Redis, a real worker running programs in gVisor.

Clients: the `sandbox-fusion` 0.3.7 SDK, the `judge0` 0.0.8 SDK (dev dependencies), and verl 0.9.1's
`verl/utils/reward_score/sandbox_fusion` package, fetched from the published wheel by a fixture and
loaded without the rest of verl (nothing of it is committed). Test plans C1, C2 and C5 of
shared/notes/http-compat.md, plus attacks through /run_code and Judge0, and bad requests.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import docker
import judge0
import pytest
import redis
import requests
import sandbox_fusion as sf

from sandbox.imagedef import load_definition
from sandbox.images import build_image
from sandbox.settings import REPO_ROOT
from tests.integration.services import RedisServer, Worker, free_port, wait_for

pytestmark = pytest.mark.integration

TOKEN = "http-test-token-" + uuid.uuid4().hex
# The caller's window (compile + run + 10 s) decides when /run_code answers 504. On this shared machine a job can
# wait minutes in the queue, so SDK and raw requests ask for a long compile_timeout, which only widens the window
# (the compile limits are the policy's). verl's own calls keep verl's window and its three tries on 504.
PATIENCE_S = 240
VERL_TIMEOUT_S = 20


@dataclass
class Stack:
    port: int
    redis: RedisServer
    worker: Worker

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sf(self) -> str:
        """SandboxFusion clients send no headers: the token travels as a path prefix."""
        return f"{self.base}/token/{TOKEN}"

    def metrics(self) -> dict[str, int]:
        return requests.get(f"{self.base}/v1/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()

    def run_code(self, timeout: float = 400, **body: Any) -> requests.Response:
        body.setdefault("compile_timeout", PATIENCE_S)
        return requests.post(f"{self.sf}/run_code", json=body, timeout=timeout)


def _start_worker(redis_server: RedisServer, client: docker.DockerClient, log: Path, pins: list[Any]) -> Worker:
    """A worker on freshly built images. Other checkouts on this machine build their own harness's images and
    prune older tags that no container uses: build again and retry if ours went away before it started."""
    for _ in range(5):
        _build(client, "python", pins)
        worker = Worker(redis_server.url, log)
        try:
            worker.wait_ready(redis.Redis.from_url(redis_server.url), timeout_s=300)
            return worker
        except RuntimeError:
            worker.close()
            continue
    raise RuntimeError(f"the worker did not start: {log.read_text()[-2000:]}")


def _build(client: docker.DockerClient, name: str, pins: list[Any]) -> None:
    """Build the image and pin it with a stopped container (removed by id at the end): other checkouts on this
    machine build their harness's images and prune older tags that no container uses."""
    for _ in range(5):
        try:
            tag = build_image(client, load_definition(REPO_ROOT / "images", name), say=lambda _: None)
            pins.append(client.containers.create(tag, command=["true"], labels={"io.sandbox-exec.test-pin": "http"}))
            return
        except docker.errors.NotFound:  # pruned by another checkout's build between our import and our pin
            continue
    raise RuntimeError(f"could not keep the {name} image built")


@pytest.fixture(scope="module")
def stack(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("http")
    pins: list[Any] = []
    _build(client, "gcc", pins)
    redis_server = RedisServer(directory)
    redis_server.start()
    worker = server = None
    log = (directory / "server.log").open("ab")
    try:
        worker = _start_worker(redis_server, client, directory / "worker.log", pins)
        port = free_port()
        env = {**os.environ, "SANDBOX_REDIS_URL": redis_server.url, "SANDBOX_SERVE_TOKEN": TOKEN}
        server = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "serve", "--port", str(port)], env=env,
                                  cwd=REPO_ROOT, stdout=log, stderr=log)

        def pong() -> bool:
            assert server is not None and server.poll() is None, (directory / "server.log").read_text()[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/v1/ping", timeout=5).json() == "pong"
            except requests.ConnectionError:
                return False
        wait_for(pong, 120, "the server to answer /v1/ping")
        yield Stack(port, redis_server, worker)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
        log.close()
        if worker is not None:
            worker.close()
        redis_server.stop()
        for pin in pins:
            pin.remove(force=True)


@pytest.fixture(scope="module")
def verl_sf(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """verl 0.9.1's sandbox_fusion reward package, from the published wheel, without the rest of verl (whose
    __init__ imports torch). Fetched by pip at test time; a failed download fails the test."""
    where = tmp_path_factory.mktemp("verl")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "verl==0.9.1", "-d", str(where)],
                   check=True, capture_output=True)
    wheel = next(where.glob("verl-0.9.1-*.whl"))
    prefix = "verl/utils/reward_score/sandbox_fusion/"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(where, [name for name in archive.namelist() if name.startswith(prefix)])
    package = where / prefix
    spec = importlib.util.spec_from_file_location("verl_sf", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["verl_sf"] = module
    spec.loader.exec_module(module)
    return module


def _sf(stack: Stack, attempts: int = 1, **fields: Any) -> sf.RunCodeResponse:
    fields.setdefault("compile_timeout", PATIENCE_S)
    return sf.run_code(sf.RunCodeRequest(**fields), endpoint=stack.sf, max_attempts=attempts, client_timeout=400)


def _innocent_still_judged(stack: Stack) -> None:
    """The server answers another caller, and the next innocent program is judged right."""
    assert requests.get(f"{stack.base}/v1/ping", timeout=10).json() == "pong"
    marker = uuid.uuid4().hex
    response = _sf(stack, code=f"print(input(), {marker!r})", stdin="ok", language="python")
    assert response.status == sf.RunStatus.Success and response.run_result.stdout == f"ok {marker}\n"


# -- C1: SandboxFusion /run_code through the sandbox-fusion SDK -------------------------------------------
def test_sdk_success_fields(stack: Stack) -> None:
    response = _sf(stack, code="print(input())", stdin="hi", language="python")
    assert response.status == sf.RunStatus.Success and response.message == ""
    assert response.compile_result is None
    run = response.run_result
    assert run.status == sf.CommandRunStatus.Finished and run.stdout == "hi\n" and run.return_code == 0
    assert isinstance(run.execution_time, float)


def test_sdk_exit_status_and_timeout(stack: Stack) -> None:
    exited = _sf(stack, code="raise SystemExit(3)", language="python")
    assert exited.status == sf.RunStatus.Failed and exited.run_result.return_code == 3
    assert sf.summary_run_code_result(exited, sf.SummaryMapping(RunFailed="RE")) == "RE"
    looped = _sf(stack, code="while True: pass", language="python", run_timeout=1)
    assert looped.status == sf.RunStatus.Failed
    assert looped.run_result.status == sf.CommandRunStatus.TimeLimitExceeded and looped.run_result.return_code is None
    assert sf.summary_run_code_result(looped, sf.SummaryMapping(RunTimeout="TLE")) == "TLE"


def test_sdk_signal_is_negative_return_code(stack: Stack) -> None:
    response = _sf(stack, code="import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", language="python")
    assert response.status == sf.RunStatus.Failed
    assert response.run_result.status == sf.CommandRunStatus.Finished and response.run_result.return_code == -11


def test_sdk_cpp_compile_error_and_success(stack: Stack) -> None:
    broken = _sf(stack, code="int main({", language="cpp")
    assert broken.status == sf.RunStatus.Failed and broken.run_result is None
    assert broken.compile_result.status == sf.CommandRunStatus.Finished and broken.compile_result.return_code != 0
    assert "error" in broken.compile_result.stderr
    assert sf.summary_run_code_result(broken, sf.SummaryMapping(CompileFailed="CE")) == "CE"
    fine = _sf(stack, code="#include <cstdio>\nint main(){int a,b;scanf(\"%d %d\",&a,&b);printf(\"%d\\n\",a+b);}",
               language="cpp", stdin="1 2\n")
    assert fine.status == sf.RunStatus.Success and fine.run_result.stdout == "3\n"
    assert fine.compile_result.return_code == 0


def test_sdk_unsupported_language_is_422(stack: Stack) -> None:
    with pytest.raises(Exception, match="422|Unprocessable"):
        _sf(stack, code="<?php echo 1;", language="php")
    raw = stack.run_code(code="x", language="php")
    assert raw.status_code == 422 and "language" in json.dumps(raw.json()["detail"])


def test_identical_concurrent_requests_run_once(stack: Stack) -> None:
    before = stack.metrics()
    marker = uuid.uuid4().hex  # new code: no earlier result to reuse

    async def all_at_once() -> list[sf.RunCodeResponse]:
        request = sf.RunCodeRequest(code=f"print({marker!r})", language="python", compile_timeout=PATIENCE_S)
        return await asyncio.gather(*[sf.run_code_async(request, endpoint=stack.sf, max_attempts=1) for _ in range(16)])
    responses = asyncio.run(all_at_once())
    assert all(r.status == sf.RunStatus.Success and r.run_result.stdout == f"{marker}\n" for r in responses)
    after = stack.metrics()
    assert after.get("jobs", 0) - before.get("jobs", 0) == 1  # one execution served all 16


def test_raw_memory_limit_is_applied(stack: Stack) -> None:
    """The SDK cannot send memory_limit_MB (its model lacks it); verl and raw clients do."""
    code = "x = bytearray(256 << 20)\nprint('allocated')"
    limited = stack.run_code(code=code, language="python", memory_limit_MB=64).json()
    assert limited["status"] == "Failed" and limited["run_result"]["return_code"] != 0
    roomy = stack.run_code(code=code, language="python", memory_limit_MB=1024).json()
    assert roomy["status"] == "Success" and roomy["run_result"]["stdout"] == "allocated\n"


# -- attacks through /run_code: the right statuses, never SandboxError, the server still serves --------------
ATTACKS = {
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", 2),
    "memory bomb": ("x = bytearray(4 << 30)\nprint(len(x))", 5),
    "output flood": ("import sys\nsys.stdout.write('y' * (10 << 20))", 5),
    "infinite loop": ("while True:\n    pass", 1),
    "forged expected output": ("print('3', flush=True)\nimport os\nos._exit(0)", 5),
    "write outside scratch": ("open('/etc/forged', 'w').write('x')", 5),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attacks_through_run_code(stack: Stack, attack: str) -> None:
    code, run_timeout = ATTACKS[attack]
    body = stack.run_code(code=code, language="python", run_timeout=run_timeout, stdin="1 2\n")
    assert body.status_code == 200
    response = sf.RunCodeResponse(**body.json())
    assert response.status != sf.RunStatus.SandboxError, response.message
    run = response.run_result
    if attack == "infinite loop":
        assert run.status == sf.CommandRunStatus.TimeLimitExceeded and run.return_code is None
    elif attack == "output flood":
        assert response.status == sf.RunStatus.Failed and run.status == sf.CommandRunStatus.Finished
        assert body.json()["run_result"]["stdout_truncated"] is True and len(run.stdout) <= 1 << 20
    elif attack == "memory bomb":
        assert response.status == sf.RunStatus.Failed and run.return_code != 0 and "MemoryError" in run.stderr
    elif attack == "forged expected output":
        assert response.status == sf.RunStatus.Success and run.stdout == "3\n"  # it is the program's own output
    elif attack == "write outside scratch":
        assert response.status == sf.RunStatus.Failed and run.return_code == 1 and "/etc/forged" in run.stderr
    else:
        assert response.status == sf.RunStatus.Failed
    _innocent_still_judged(stack)


# -- bad requests: a 4xx naming the problem -----------------------------------------------------------------
def test_bad_requests(stack: Stack) -> None:
    broken = requests.post(f"{stack.sf}/run_code", data=b'{"code": "x", "language":',
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert broken.status_code == 422 and "JSON" in broken.text
    outside = stack.run_code(code="print(1)", language="python", files={"../x": "eA=="})
    assert outside.status_code == 422 and "outside the scratch" in outside.text
    absolute = stack.run_code(code="print(1)", language="python", files={"/etc/x": "eA=="})
    assert absolute.status_code == 422 and "outside the scratch" in absolute.text
    oversized_code = stack.run_code(code="#" * (2 << 20), language="python")
    assert oversized_code.status_code == 422 and "program_max_kib" in oversized_code.text
    oversized_body = stack.run_code(code="#" * (9 << 20), language="python")
    assert oversized_body.status_code == 413 and "larger than" in oversized_body.text
    wrong = requests.post(f"{stack.base}/token/wrong-token/run_code", json={"code": "print(1)", "language": "python"},
                          timeout=30)
    assert wrong.status_code == 401 and "token" in wrong.text
    unauthenticated = requests.post(f"{stack.base}/run_code", json={"code": "print(1)", "language": "python"}, timeout=30)
    assert unauthenticated.status_code == 401
    _innocent_still_judged(stack)


# -- C2: verl 0.9.1's reward code ---------------------------------------------------------------------------
def test_verl_compute_score(stack: Stack, verl_sf: Any) -> None:
    url, semaphore = f"{stack.sf}/run_code", threading.Semaphore(8)
    cases = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    score, meta = verl_sf.compute_score(url, semaphore, 1024, "```python\nprint(sum(map(int,input().split())))\n```",
                                        cases, continuous=True, timeout=VERL_TIMEOUT_S)
    assert score == 1.0 and [m["status"] for m in meta] == ["success", "success"]
    assert all(m["api_status"] == "Success" for m in meta)
    score, meta = verl_sf.compute_score(url, semaphore, 1024, "```python\nprint(0)\n```", cases, continuous=True,
                                        timeout=VERL_TIMEOUT_S)
    assert score == 0.0 and [m["status"] for m in meta] == ["wrong_answer", "wrong_answer"]
    score, meta = verl_sf.compute_score(url, semaphore, 1024, "```python\nimport sys; sys.exit(1)\n```", cases,
                                        timeout=VERL_TIMEOUT_S)
    assert score == 0.0 and {m["status"] for m in meta} == {"runtime_error"}
    score, meta = verl_sf.compute_score(url, semaphore, 1024, "```python\nwhile True: pass\n```", cases, timeout=1)
    assert score == 0.0 and {m["status"] for m in meta} == {"timeout"}


def test_verl_check_correctness_forms(stack: Stack, verl_sf: Any) -> None:
    url = f"{stack.sf}/run_code"
    results, meta = verl_sf.utils.check_correctness(url, {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]},
                                                    "int main(){", timeout=VERL_TIMEOUT_S, language="cpp")
    # verl sends both cases at once, and both requests share one job: each sees the compile error itself (verl
    # marks a case "skipped" only when an earlier case's compile error came back before it was sent)
    assert results == [-4, -4] and meta[0]["status"] == "compile_error"
    assert {m["status"] for m in meta} <= {"compile_error", "compile_error_skipped"}
    semaphore = threading.Semaphore(8)
    score, _ = verl_sf.compute_score(url, semaphore, 1024, "```python\ndef add(a, b):\n    return a + b\n```",
                                     {"inputs": ["1\n2"], "outputs": ["3"], "fn_name": "add"}, timeout=VERL_TIMEOUT_S)
    assert score == 1.0
    score, _ = verl_sf.compute_score(url, semaphore, 1024, "```python\ndef add(a, b):\n    return a + b\n```",
                                     {"assert_case": ["assert add(1,2)==3", "assert add(1,1)==3"]}, timeout=VERL_TIMEOUT_S)
    assert score == 0.5


def test_verl_apps_problems_concurrently_match_sequential(stack: Stack, verl_sf: Any) -> None:
    """verl's fan-out (one request per case, same code) over real APPS problems, 32 at once: no api_error, the
    same scores as one at a time, and far fewer jobs than requests (grouping)."""
    with (REPO_ROOT / "tests/data/stdio/apps_codechain_minival.jsonl").open() as lines:
        rows = [json.loads(line) for line in lines]
    problems = [row for row in rows if not row["input_output"].get("fn_name") and len(row["input_output"]["inputs"]) >= 10][:4]
    url = f"{stack.sf}/run_code"
    work = [(f"```python\n{row['solutions'][0]}\n```", {"inputs": row["input_output"]["inputs"][:10],
                                                       "outputs": row["input_output"]["outputs"][:10]})
            for row in problems]
    sequential = [verl_sf.compute_score(url, threading.Semaphore(1), 1024, code, cases, timeout=VERL_TIMEOUT_S)[0]
                  for code, cases in work]
    before = stack.metrics()
    semaphore = threading.Semaphore(32)
    scores: list[float] = [0.0] * len(work)
    metas: list[Any] = [None] * len(work)

    def score(index: int) -> None:
        scores[index], metas[index] = verl_sf.compute_score(url, semaphore, 1024, *work[index], timeout=VERL_TIMEOUT_S)
    threads = [threading.Thread(target=score, args=(index,)) for index in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = stack.metrics()
    assert not any(m["status"] == "api_error" for meta in metas for m in meta)
    assert scores == sequential and sum(scores) > 0
    requests_made = sum(len(cases["inputs"]) for _, cases in work)
    jobs = after.get("jobs", 0) - before.get("jobs", 0)
    assert jobs < requests_made, (jobs, requests_made)


# -- C5: Judge0 through the judge0 SDK ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def j0(stack: Stack) -> judge0.Client:
    return judge0.Client(stack.base, headers={"X-Auth-Token": TOKEN})


def test_judge0_client_and_run(stack: Stack, j0: judge0.Client) -> None:
    assert j0.version == "1.13.1" and j0.config.max_submission_batch_size == 20
    result = judge0.run(client=j0, source_code="print(input())", language=judge0.PYTHON, stdin="hi")
    assert result.status == judge0.Status.ACCEPTED and result.stdout == "hi\n"
    assert isinstance(result.time, float) and uuid.UUID(str(result.token)).version == 4
    assert result.created_at is not None
    cases = judge0.run(client=j0, source_code="a, b = map(int, input().split())\nprint(a + b)", language=71,
                       test_cases=[("1 2", "3"), ("3 4", "8")])
    assert [case.status for case in cases] == [judge0.Status.ACCEPTED, judge0.Status.WRONG_ANSWER]


def test_judge0_failures(stack: Stack, j0: judge0.Client) -> None:
    for language in (54, judge0.CPP):
        broken = judge0.run(client=j0, source_code="int main({", language=language)
        assert broken.status == judge0.Status.COMPILATION_ERROR and broken.compile_output
    looped = judge0.run(client=j0, source_code="while True: pass", language=judge0.PYTHON, cpu_time_limit=1)
    assert looped.status == judge0.Status.TIME_LIMIT_EXCEEDED
    exited = judge0.run(client=j0, source_code="raise SystemExit(3)", language=judge0.PYTHON)
    assert exited.status == judge0.Status.RUNTIME_ERROR_NZEC and exited.exit_code == 3
    crashed = judge0.run(client=j0, source_code="int main(){ *(volatile int*)0 = 1; return 0; }", language=judge0.CPP)
    assert crashed.status == judge0.Status.RUNTIME_ERROR_SIGSEGV and crashed.exit_signal == 11
    forged = judge0.run(client=j0, source_code="print('3', flush=True)\nimport os\nos._exit(0)", language=judge0.PYTHON,
                        stdin="1 2", expected_output="4")
    assert forged.status == judge0.Status.WRONG_ANSWER  # the expected output never reached the program


def test_judge0_batch_of_one_source_compiles_rarely(stack: Stack, j0: judge0.Client) -> None:
    before = stack.metrics()
    source = "#include <cstdio>\nint main(){int a;scanf(\"%d\",&a);printf(\"%d\\n\",2*a);}\n// " + uuid.uuid4().hex
    results = judge0.run(client=j0, source_code=source, language=judge0.CPP,
                         test_cases=[(str(i), str(2 * i)) for i in range(45)])
    assert all(result.status == judge0.Status.ACCEPTED for result in results)
    after = stack.metrics()
    compiles = after.get("compiles", 0) - before.get("compiles", 0)
    assert 1 <= compiles <= 3, compiles   # 45 submissions, chunked into 3 batches of at most 20: at most 3


def test_judge0_async_and_raw(stack: Stack, j0: judge0.Client) -> None:
    submissions = judge0.async_run(client=j0, source_code="print(6 * 7)", language=judge0.PYTHON)
    judge0.wait(client=j0, submissions=submissions)
    assert submissions.status == judge0.Status.ACCEPTED and submissions.stdout == "42\n"
    headers = {"X-Auth-Token": TOKEN}
    for path in ("/submissions", "/submissions/"):
        raw = requests.post(f"{stack.base}{path}?base64_encoded=false&wait=true", headers=headers, timeout=120,
                            json={"source_code": "print(input())", "language_id": 71, "stdin": "x"})
        assert raw.status_code == 201 and raw.json()["stdout"] == "x\n"
        assert set(raw.json()) == {"token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status"}
    encoded = requests.post(f"{stack.base}/submissions?base64_encoded=true&wait=true", headers=headers, timeout=120,
                            json={"source_code": base64.b64encode(b"print(5)").decode(), "language_id": 71}).json()
    assert base64.b64decode(encoded["stdout"]) == b"5\n" and encoded["status"] == {"id": 3, "description": "Accepted"}
    token = raw.json()["token"]
    batch = requests.get(f"{stack.base}/submissions/batch?tokens={token},unknown", headers=headers, timeout=30).json()
    assert batch["submissions"][0]["token"] == token and batch["submissions"][1] is None
    unknown = requests.post(f"{stack.base}/submissions?wait=true", headers=headers, timeout=30,
                            json={"source_code": "x", "language_id": 9999})
    assert unknown.status_code == 422 and "language_id" in unknown.json()


def test_judge0_wrong_token(stack: Stack) -> None:
    with pytest.raises(RuntimeError, match="Authentication failed"):
        judge0.Client(stack.base, headers={"X-Auth-Token": "wrong"})


# -- infrastructure down: the only way to SandboxError / Internal Error (last: it stops Redis) --------------
def test_infrastructure_down_is_sandbox_error_and_internal_error(stack: Stack, j0: judge0.Client) -> None:
    stack.redis.stop()
    try:
        raw = stack.run_code(code=f"print({uuid.uuid4().hex!r})", language="python")
        assert raw.status_code == 200 and raw.json()["status"] == "SandboxError" and raw.json()["message"]
        with pytest.raises(Exception, match="Sandbox responded with error"):
            _sf(stack, code=f"print({uuid.uuid4().hex!r})", language="python")
        created = requests.post(f"{stack.base}/submissions?wait=true", headers={"X-Auth-Token": TOKEN}, timeout=120,
                                json={"source_code": f"print({uuid.uuid4().hex!r})", "language_id": 71}).json()
        assert created["status"]["id"] == 13
    finally:
        stack.redis.start()
    time.sleep(1)
