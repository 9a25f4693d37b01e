"""Named crash points for fault tests (RELIABILITY.md R2): `CARINA_CRASHPOINT=<name>` makes the process exit
abruptly (as `kill -9` would) when it reaches that point. With `CARINA_CRASHPOINT_ONCE=<file>`, the crash happens
only if the file does not exist yet (it is created first), so a restarted process runs past the point."""

from __future__ import annotations

import os


def crashpoint(name: str) -> None:
    """Exit with status 137 here if the environment names this point (tests only; a no-op otherwise)."""
    if os.environ.get("CARINA_CRASHPOINT") != name:
        return
    marker = os.environ.get("CARINA_CRASHPOINT_ONCE")
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as fh:
            fh.write(name)
    os._exit(137)
