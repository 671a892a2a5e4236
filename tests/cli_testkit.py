"""What the command-line tests share: running ``unigen`` and reading its one error line."""

from __future__ import annotations

from typing import Sequence

import pytest

from unigen.cli import main


def fails_with(argv: Sequence[object], capsys, code: int = 1) -> str:
    """Run the CLI, expect ``SystemExit(code)`` and exactly one ``unigen: error:`` line on stderr,
    no traceback; return that line."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("unigen:")]
    assert len(lines) == 1 and lines[0].startswith("unigen: error: "), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    return lines[0]
