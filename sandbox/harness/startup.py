"""What ``site`` would have done, done cheaply (stdlib only; first import of each harness process).

Harness processes start with ``python3 -I -S``: under gVisor the ``site`` module costs about
12 ms per process. Programs still see Debian's dist-packages (numpy) and the ``exit``/``quit``/
``help`` builtins that ``site`` normally installs.
"""

from __future__ import annotations

import builtins
import sys

import _sitebuiltins

DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def like_site() -> None:
    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
