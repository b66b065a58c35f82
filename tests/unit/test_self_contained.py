"""The repository stands on its own: nothing in it reads the developers' ``../shared`` folder, which a
user's clone does not have beside it (the README's test command must pass in such a clone)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a path into a `shared` folder beside the checkout, however it is spelled
OUTSIDE = re.compile(r"""\.\./shared|["']shared["']\s*/\s*["']data["']"""
                     r"""|parents\[\d\]\s*/\s*["']shared["']|parent\s*/\s*["']shared["']""")


def test_no_code_or_test_reads_the_shared_folder_beside_the_checkout() -> None:
    offenders = []
    for folder in ("sandbox", "worker", "tests", ".ci", "images"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".toml", "") and path != Path(__file__).resolve():
                text = path.read_text(errors="replace")
                offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not offenders, offenders


def test_the_pattern_finds_the_spellings_it_is_for() -> None:
    for spelling in ('REPO.parent / "shared" / "data"', "Path(__file__).parents[3] / 'shared'", "open('../shared/x')"):
        assert OUTSIDE.search(spelling), spelling
