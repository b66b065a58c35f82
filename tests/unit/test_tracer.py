"""The CI tracer (sandbox/harness/tracer.py) on a fixture project written for the purpose.

The fixture (tests/data/ci-trace/fixture_project) is this repository's own code, so its tests run on the
host here, in a child interpreter; real projects only ever run in the sandbox (tests/integration)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "sandbox" / "harness"
FIXTURE = ROOT / "tests" / "data" / "ci-trace" / "fixture_project"
sys.path.insert(0, str(HARNESS))
import tracer  # noqa: E402
import values  # noqa: E402

RUN = """
import json, sys
sys.path.insert(0, {harness!r})
import tracer
report, status = tracer.trace_project({project!r}, [], 60, {home!r})
sys.stdout = sys.__stdout__
print("@@REPORT@@" + json.dumps({{"report": report, "status": status}}))
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("trace")
    project = home / "project"
    shutil.copytree(FIXTURE, project)
    code = RUN.format(harness=str(HARNESS), project=str(project), home=str(home))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=home)
    line = next(line for line in done.stdout.splitlines() if line.startswith("@@REPORT@@"))
    return json.loads(line[len("@@REPORT@@"):])


def functions(traced: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["qualname"]: f for f in traced["report"]["functions"]}


def decoded(call: dict[str, Any], key: str = "args") -> list[Any]:
    return [values.decode(item) for item in call[key]]


def test_returns_raises_and_none(traced: dict[str, Any]) -> None:
    fns = functions(traced)
    add = {tuple(decoded(c)): values.decode(c["value"]) for c in fns["add"]["calls"]}
    assert add[(1, 2)] == 3 and add[("a", "b")] == "ab" and type(add[(1.5, 2.0)]) is float
    parse = {decoded(c)[0]: c for c in fns["parse_int"]["calls"]}
    assert parse["x"]["outcome"] == "raised" and parse["x"]["exception"][0] == "ValueError"
    assert values.decode(parse["12"]["value"]) == 12
    # a project exception: its own name first, then its builtin ancestors
    sqrt = {decoded(c)[0]: c for c in fns["checked_sqrt"]["calls"]}
    assert sqrt[-1]["exception"][:2] == ["NegativeError", "ValueError"]
    assert all(c["outcome"] == "returned" and values.decode(c["value"]) is None for c in fns["nothing"]["calls"])


def test_only_passing_tests_and_test_bodies(traced: dict[str, Any]) -> None:
    fns = functions(traced)
    assert traced["status"]["tests"] == {"passed": 13, "failed": 1}
    args = [tuple(decoded(c)) for c in fns["add"]["calls"]]
    assert (100, 200) not in args            # made by a failing test
    assert (1, 1) not in args                # made at import (a class body), not by a test
    assert "77" not in [decoded(c)[0] for c in fns["parse_int"]["calls"]]
    assert all(c["test"].startswith("tests/test_fixture.py::") for f in fns.values() for c in f["calls"])


def test_threads_recursion_and_exclusions(traced: dict[str, Any]) -> None:
    fns = functions(traced)
    assert (10, 20) in [tuple(decoded(c)) for c in fns["add"]["calls"]]   # called in a thread the test started
    assert sorted(decoded(c)[0] for c in fns["factorial"]["calls"]) == [1, 2, 3, 4, 5]
    assert not {"Box", "__init__", "get", "Box.get"} & set(fns)             # methods and class bodies
    assert not [name for name in fns if name.startswith("test_")]           # the tests themselves
    assert traced["report"]["faults"] == 0


def test_generators_finished_and_abandoned(traced: dict[str, Any]) -> None:
    calls = {decoded(c)[0]: c for c in functions(traced)["count_up"]["calls"]}
    assert calls[3]["end"] == "finished" and decoded(calls[3], "items") == [0, 1, 2]
    assert calls[0]["end"] == "finished" and calls[0]["items"] == []
    assert calls[10]["end"] == "abandoned" and decoded(calls[10], "items") == [0, 1]


def test_mutation_recorded_with_the_snapshot_before(traced: dict[str, Any]) -> None:
    calls = functions(traced)["sort_in_place"]["calls"]
    first = next(c for c in calls if decoded(c)[0] == [3, 1, 2])     # the argument as it was at call time
    assert first["mutated"][0][0] == 0 and values.decode(first["mutated"][0][1]) == [1, 2, 3]
    assert not any("mutated" in c for c in functions(traced)["nothing"]["calls"])


def test_iterator_arguments_refused_not_consumed(traced: dict[str, Any]) -> None:
    first = functions(traced)["first"]
    # the test itself asserts that the rest of the iterator is still there (it passed: 13 passed)
    assert first["refused"] == {"argument: an iterator (not consumed)": 1}
    assert [decoded(c)[0] for c in first["calls"]] == [[4, 5]]


def test_impure_calls_marked(traced: dict[str, Any]) -> None:
    fns = functions(traced)
    assert fns["stamp"]["calls"][0]["impure"] == ["time.time"]
    assert fns["roll"]["calls"][0]["impure"][0].startswith("random.")
    assert not any("impure" in c for c in fns["add"]["calls"])


def test_caps(traced: dict[str, Any]) -> None:
    hot = functions(traced)["hot"]
    assert hot["attempts"] == tracer.MAX_ATTEMPTS        # 2000 calls, 500 looked at
    assert len(hot["calls"]) == tracer.MAX_CALLS
    assert traced["report"]["sources"].keys() == {"fixturepkg/__init__.py"}


def test_encode_without_draining() -> None:
    it = iter([1, 2, 3])
    assert values.encode(it, drain=False)["t"] == "unsupported"
    assert list(it) == [1, 2, 3]
    assert values.encode([1, (x for x in [1])], drain=False)["v"][1]["t"] == "unsupported"
    assert values.decode(values.encode(iter([1, 2])))  # the driver's default still drains


def _tar(entries: list[tuple[str, bytes | None, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, link, data in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
            else:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if link is None else None)
    return buffer.getvalue()


def test_unpack_bounds(tmp_path: Path) -> None:
    project = tracer.unpack(_tar([("p-1/a.py", None, b"x = 1\n"), ("p-1/link", b"/etc/passwd", b"")]), str(tmp_path / "1"))
    assert project.endswith("p-1") and os.listdir(project) == ["a.py"]      # links are never created
    for bad in ("../evil.py", "/abs.py", "p/../../x.py"):
        with pytest.raises(tracer.ArchiveError, match="unsafe path"):
            tracer.unpack(_tar([(bad, None, b"")]), str(tmp_path / "2"))
    with pytest.raises(tracer.ArchiveError, match="not a tar"):
        tracer.unpack(b"PK\x03\x04 not a tar", str(tmp_path / "3"))
    old = tracer.MAX_MEMBERS
    tracer.MAX_MEMBERS = 3
    try:
        with pytest.raises(tracer.ArchiveError, match="more than 3 entries"):
            tracer.unpack(_tar([(f"p/{i}.py", None, b"") for i in range(4)]), str(tmp_path / "4"))
    finally:
        tracer.MAX_MEMBERS = old


def test_package_roots_leave_out_tests(tmp_path: Path) -> None:
    for name in ("pkg/__init__.py", "tests/__init__.py", "setup.py", "test_top.py", "mod.py", "conftest.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert [os.path.basename(r) for r in tracer.package_roots(str(tmp_path))] == ["mod.py", "pkg"]
    assert tracer.is_test_file("titlecase/tests.py") and tracer.is_test_file("pkg/tests/x.py")
    assert not tracer.is_test_file("pkg/core.py")
