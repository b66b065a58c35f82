"""What the supervisor takes from a compile step's out/ (pure file-system logic, on a temporary directory).

The compile step ran as a uid of its own and could leave anything in out/, out/ itself included: links to
files root owns must never have their owner or mode changed through them, and are never read."""

from __future__ import annotations

import os
import pathlib
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sandbox" / "harness"))
import supervisor  # noqa: E402  (the harness imports its siblings as top-level modules)

COMPILE_UID = 54321

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the supervisor's chown needs root, as in the sandbox")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def root_owned(tmp_path: Path) -> tuple[Path, Path]:
    """A directory and a file root owns, outside the build (in the sandbox: a slot's scratch root, the harness)."""
    directory = tmp_path / "trusted"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    secret = directory / "secret"
    secret.write_text("root's own\n")
    os.chmod(secret, 0o644)
    return directory, secret


def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("target", ["directory", "file"])
def test_an_out_that_is_a_link_changes_nothing_it_points_at(tmp_path: Path, target: str) -> None:
    directory, secret = root_owned(tmp_path)
    out = scratch(tmp_path) / "out"
    out.symlink_to(directory if target == "directory" else secret)
    os.lchown(out, COMPILE_UID, COMPILE_UID)
    assert supervisor.harvest_build(str(out), 1 << 20) == "the compile step left no output"
    # before: os.chmod(out, 0o700) followed the link and made root's directory (or file) 0700
    assert mode_of(directory) == 0o755 and mode_of(secret) == 0o644
    assert os.stat(directory).st_uid == 0 and secret.read_text() == "root's own\n"


def test_links_inside_the_build_are_skipped_and_their_targets_untouched(tmp_path: Path) -> None:
    directory, secret = root_owned(tmp_path)
    out = scratch(tmp_path) / "out"
    (out / "sub").mkdir(parents=True)
    (out / "main").write_bytes(b"\x7fELF binary")
    os.chmod(out / "main", 0o700)
    (out / "sub" / "data").write_text("table\n")
    os.chmod(out / "sub" / "data", 0o600)
    (out / "link").symlink_to(secret)
    (out / "dirlink").symlink_to(directory)
    (out / "sub" / "up").symlink_to("../../../trusted/secret")
    for path in (out, out / "sub", out / "main", out / "sub" / "data", out / "link", out / "dirlink", out / "sub" / "up"):
        os.lchown(path, COMPILE_UID, COMPILE_UID)
    build = supervisor.harvest_build(str(out), 1 << 20)
    assert build == {"main": (0o555, b"\x7fELF binary"), "sub/data": (0o444, b"table\n")}
    assert mode_of(directory) == 0o755 and mode_of(secret) == 0o644 and os.stat(secret).st_uid == 0
    assert os.lstat(out / "main").st_uid == 0 and mode_of(out / "main") == 0o500  # taken back, read-only


def test_a_build_over_its_size_limit_is_refused(tmp_path: Path) -> None:
    out = scratch(tmp_path) / "out"
    out.mkdir()
    (out / "big").write_bytes(b"x" * 4096)
    assert supervisor.harvest_build(str(out), 1024) == "the build is larger than 0 MiB"
