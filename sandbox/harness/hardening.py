"""Process hardening shared by the supervisor and the zygote (stdlib only; runs inside the sandbox)."""

from __future__ import annotations

import ctypes

PR_SET_DUMPABLE = 4


def make_unreachable() -> None:
    """Non-dumpable: processes of the same uid can neither ptrace this one nor read its memory."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
