"""What `sandbox run` prints to a terminal: nothing a sample printed can move the cursor or repaint the verdict."""

from __future__ import annotations

import re

from sandbox.cli import format_result, printable
from sandbox.models import JobResult, TestResult, TestStatus, Verdict

# A failing sample that prints: clear the screen, home the cursor, go up a line, erase it, a carriage return, a
# fake verdict line in green, an OSC title change, and a right-to-left override.
REPAINT = "\x1b[2J\x1b[H\x1b[1A\x1b[2K\r\x1b[32mjob: PASSED\x1b[0m\x1b]0;owned\x07\u202edessap"


def test_a_samples_output_is_shown_escaped_and_cannot_repaint_the_verdict() -> None:
    result = JobResult(job_id="job", verdict=Verdict.failed, stdout=f"1\n{REPAINT}\n2\n", stderr=REPAINT,
                       error=f"wrong\r{REPAINT}",
                       tests=(TestResult(name="case 1", status=TestStatus.failed, message=f"got {REPAINT!s}"),))
    text = format_result(result)
    own = re.compile(r"\x1b\[[0-9;]*m")  # click.style's own colour codes (SGR): the only escapes allowed through
    raw = own.sub("", text)
    assert all(line.isprintable() for line in raw.split("\n")), raw   # no control character but the newlines
    assert "\\x1b[2J\\x1b[H" in text and "\\r" in text and "\\u202e" in text   # shown, not hidden
    first = text.splitlines()[0]
    assert "FAILED" in first and own.sub("", first).startswith("job: FAILED")
    # the stdout lines are kept as lines, each escaped
    assert "  1" in text.splitlines() and "  2" in text.splitlines()


def test_printable_keeps_ordinary_text() -> None:
    assert printable("héllo\tmundo 中文 ∑") == "héllo\tmundo 中文 ∑"
    assert printable("a\nb") == "a\\nb"
    assert printable("\ud800") == "\\ud800"           # a lone surrogate (results carry them escaped, never raw)
    assert printable("\u2028\x85\x9b") == "\\u2028\\x85\\x9b"  # line separators and the 8-bit CSI
