"""One clear error line for bad input, instead of a traceback or a page of usage text."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

# errors that mean "the user's input is wrong", not "unigen has a bug"
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, FloatingPointError, NotADirectoryError,
               PermissionError)


def _first_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.strip().split("\n")[0].split()) or type(err).__name__


@contextlib.contextmanager
def user_errors_as_one_line() -> Iterator[None]:
    """Print ``unigen: error: <message>`` and exit 1 on user errors (``UNIGEN_DEBUG=1`` re-raises)."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("UNIGEN_DEBUG"):
            raise
        print(f"unigen: error: {_first_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None


@contextlib.contextmanager
def one_line_parser_errors() -> Iterator[None]:
    """jsonargparse reports bad recipes with usage text and nested messages; keep the one line
    that names the problem (unknown key, wrong type, missing file)."""
    from jsonargparse import ArgumentParser

    original = ArgumentParser.error

    def error(self, message: str, *args, **kwargs):
        if os.environ.get("UNIGEN_DEBUG"):
            return original(self, message, *args, **kwargs)
        lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
        print(f"unigen: error: {_summarise(lines)}", file=sys.stderr)
        raise SystemExit(2)

    ArgumentParser.error = error
    try:
        with user_errors_as_one_line():
            yield
    finally:
        ArgumentParser.error = original


_DETAIL_MARKERS = ("is not accepted", "Expected a", "No action for key", "does not exist",
                   "nrecognized arguments", "Not a valid", "not a valid", "must be", "unknown")


def _summarise(lines: list[str]) -> str:
    """Compress a jsonargparse message to one line: which key, what is wrong, in which class."""
    import re

    if not lines:
        return "invalid arguments"
    text = " ".join(lines)
    key = re.search(r'Parser key "([^"]+)"', lines[0])
    cls = re.search(r"class_path '([^']+)'", text)
    details = [ln.lstrip("- ") for ln in lines[1:] if any(m in ln for m in _DETAIL_MARKERS)
               and "NoneType" not in ln]
    if key is None and not details:
        return lines[0]
    detail = details[0] if details else lines[0].split(":", 1)[-1].strip()
    where = f'"{key.group(1)}"' if key else "recipe"
    suffix = f" (in {cls.group(1)})" if cls else ""
    return f"bad value for {where}: {detail}{suffix}".replace(": :", ":")
