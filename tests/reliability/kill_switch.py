"""Stop a run at a known point, the way a crash or ``kill -9`` would, for the resume tests.

* :class:`StopAtStep` (a Lightning callback, named by recipes): mid-step at a chosen step, after the
  forward pass and before backward.  ``mode="hang"`` writes ``marker`` and sleeps so the test can
  SIGKILL the process; ``mode="raise"`` raises :class:`SimulatedCrash` (in-process tests).
* ``python kill_switch.py MODULE:CLASS.METHOD N MARKER -- <unigen args>`` runs the ``unigen``
  command with that method hanging on its N-th call (after writing MARKER): a kill point inside
  ``unigen eval`` or ``unigen tokenize``.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from pathlib import Path

import lightning as L


class SimulatedCrash(RuntimeError):
    """Not a user error: the CLI lets it through like a real crash."""


class StopAtStep(L.Callback):
    def __init__(self, step: int, mode: str = "raise", marker: str | None = None) -> None:
        if mode not in ("raise", "hang") or (mode == "hang" and not marker):
            raise ValueError("mode is 'raise', or 'hang' with a marker file")
        self.step, self.mode, self.marker = step, mode, marker

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step != self.step:
            return
        if self.mode == "raise":
            raise SimulatedCrash(f"simulated crash at step {self.step}")
        Path(self.marker).write_text(str(self.step))
        time.sleep(600)  # the test sends SIGKILL long before this ends


def hang_on_call(target: str, call: int, marker: str) -> None:
    """Make ``module:Class.method`` write ``marker`` and hang on its ``call``-th call."""
    module_name, _, attr = target.partition(":")
    cls_name, _, method = attr.partition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    original, calls = getattr(cls, method), []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            Path(marker).write_text(str(call))
            time.sleep(600)  # the test sends SIGKILL long before this ends
        return original(*args, **kwargs)

    setattr(cls, method, wrapper)


if __name__ == "__main__":
    target, call, marker, sep, *argv = sys.argv[1:]
    if sep != "--":
        raise SystemExit("usage: kill_switch.py MODULE:CLASS.METHOD N MARKER -- <unigen args>")
    hang_on_call(target, int(call), marker)
    from unigen.cli import main

    sys.exit(main(argv))
