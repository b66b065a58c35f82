import sandbox


def test_public_api_is_pinned() -> None:
    assert sorted(sandbox.__all__) == sorted([
        "Client", "Submission", "JobSpec", "JobResult", "TestSnippet", "TestResult", "TestStatus", "Verdict",
        "Policy", "LimitOverrides", "Settings", "pass_at_k", "SandboxError", "JobValidationError",
        "InfrastructureError",
    ])
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None


def test_library_never_imports_the_worker() -> None:
    import pathlib

    root = pathlib.Path(sandbox.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "import worker" in p.read_text() or "from worker" in p.read_text()]
    assert offenders == []
