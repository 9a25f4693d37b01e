"""`make bench`: run every benchmark and print its figures (nothing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        sys.stdout.write(f"\n=== {script.stem} ===\n")
        sys.stdout.flush()
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(script.stem)
    if failed:
        sys.stdout.write(f"\nbenchmarks that failed to run: {', '.join(failed)}\n")
    raise SystemExit(1 if failed else 0)
