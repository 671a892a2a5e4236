"""Benchmarks: scripts that print ratios measured in one run and save JSON under benchmarks/results/.

Run one as ``python benchmarks/<name>.py`` (or ``python -m benchmarks.<name>``), all of them at CPU
sizes with ``python benchmarks/run_all.py`` (``make bench``).  See docs/performance.md.
"""
