"""Make ``benchmarks`` importable however pytest is started (it is a top-level folder, not part of
the installed ``unigen`` package)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
