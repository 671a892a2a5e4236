"""One clear error line for bad input, instead of a traceback or a page of usage text.

Exit codes: 2 when the command line or recipe does not parse (unknown verb, option or key, a value
of the wrong type: what argparse / jsonargparse reject before anything is built); 1 for everything
found after that: a value a class, a verb or Lightning rejects (``loss: foo``, ``batch_size: 0``,
``max_steps: -5``, ``--steps 0``), bad data and files, and failures while running."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterator

# errors that mean "the user's input is wrong", not "unigen has a bug"
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, FloatingPointError, NotADirectoryError,
               PermissionError)

# jsonargparse's wrapper around an error raised while it instantiates a recipe's class (the model
# or data ``class_path``): "Does not validate against any of the Union subtypes\nSubtypes: [...,
# NoneType]\nErrors:\n  - <the constructor's message>\n  - Expected a <class 'NoneType'>\n..."
_UNION_WRAPPER = "Does not validate against any of the Union subtypes"


# torch re-raises an error from a DataLoader worker as the same type with the message "Caught X in
# DataLoader worker process N.\nOriginal Traceback (most recent call last):\n  ...\nX: <message>"
_WORKER_WRAPPER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.")
_RAISED_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.+)$", re.M)


def _plain_first_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if _WORKER_WRAPPER.match(text):  # the worker's own message, not torch's wrapper
        raised = _RAISED_LINE.findall(text)
        text = raised[-1] if raised else text
    return " ".join(text.strip().split("\n")[0].split()) or type(err).__name__


def _union_cause(err: BaseException) -> str | None:
    """The real message inside jsonargparse's Union wrapper (the constructor's own error, not the
    ``NoneType`` alternative), with the class it came from; None for any other error."""
    text = str(err)
    if not text.startswith(_UNION_WRAPPER):
        return None
    cause = err.__cause__
    if cause is not None:
        message = _first_line(cause)
        if not isinstance(cause, USER_ERRORS) and _union_cause(cause) is None:
            message = f"{type(cause).__name__}: {message}"
    else:
        block = re.search(r"\nErrors:\n(.*?)(?:\nGiven value|\Z)", text, re.S)
        items = re.findall(r"^\s*- (.+)$", block.group(1), re.M) if block else []
        items = [i.strip() for i in items if "NoneType" not in i]
        if not items:
            return None
        message = items[0].strip("\"'") if items[0][:1] == items[0][-1:] else items[0]
    cls = re.search(r"class_path='([^']+)'", text)
    return f"{message} (in {cls.group(1)})" if cls and cls.group(1) not in message else message


def _first_line(err: BaseException) -> str:
    return _union_cause(err) or _plain_first_line(err)


def _lightning_user_error(err: BaseException) -> bool:
    """Lightning's ``MisconfigurationException`` (a Trainer argument it rejects: ``max_steps: -5``,
    ``accelerator: gpu`` without one, a loop the model has no step for); checked by name in the
    loaded module, so this file never imports Lightning."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return module is not None and isinstance(err, module.MisconfigurationException)


def _missing_accelerator_package(err: BaseException) -> bool:
    """Lightning's accelerators raise ``ModuleNotFoundError("Requirement 'torch_xla>=1.13' not
    met ...")`` when their package is absent (``--trainer.accelerator tpu``)."""
    if not isinstance(err, ModuleNotFoundError) or not str(err).startswith("Requirement "):
        return False
    tb = err.__traceback__
    while tb is not None:
        if "accelerator" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _conflicting_hparams(err: BaseException) -> str | None:
    """Lightning refuses to log a run whose model and data module share a hyperparameter name with
    different values (``seed`` in every unigen recipe): say which, and how to agree them."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not text.startswith("Error while merging hparams"):
        return None
    found = re.search(r"keys \[([^\]]*)\]", text)
    keys = [k.strip(" '\"") for k in found.group(1).split(",")] if found else ["?"]
    example = " ".join(f"--model.init_args.{k} V --data.init_args.{k} V" for k in keys)
    return (f"the model and the data module set {', '.join(repr(k) for k in keys)} to different "
            f"values; give both the same ({example})")


def _one_line(err: BaseException) -> str | None:
    """The line to print for a user error; None when ``err`` is not one (a bug: keep the traceback)."""
    if isinstance(err, USER_ERRORS) or _lightning_user_error(err):
        return _first_line(err)
    conflict = _conflicting_hparams(err)
    if conflict:
        return conflict
    if _missing_accelerator_package(err):
        return f"the requested accelerator needs a package that is not installed: {_plain_first_line(err)}"
    return None


@contextlib.contextmanager
def user_errors_as_one_line() -> Iterator[None]:
    """Print ``unigen: error: <message>`` and exit 1 on user errors (``UNIGEN_DEBUG=1`` re-raises)."""
    try:
        yield
    except Exception as err:
        line = _one_line(err)
        if line is None or os.environ.get("UNIGEN_DEBUG"):
            raise
        print(f"unigen: error: {line}", file=sys.stderr)
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


def _unknown_option(lines: list[str], argv: list[str]) -> str | None:
    """jsonargparse names an unknown nested key by its last part only ("Option 'dimm' is not
    accepted"); give the whole key when the command line has it, else say it is in a recipe file."""
    found = re.fullmatch(r"Option '([^']+)' is not accepted", lines[0]) if len(lines) == 1 else None
    if found is None:
        return None
    name = found.group(1)
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key.startswith("--") and (key == f"--{name}" or key.endswith(f".{name}")):
            return f"unknown recipe key {key[2:]!r} (on the command line)"
    return f"unknown recipe key {name!r} (in one of the --config files)"


def _summarise(lines: list[str]) -> str:
    """Compress a jsonargparse message to one line: which key, what is wrong, in which class."""
    if not lines:
        return "invalid arguments"
    unknown = _unknown_option(lines, sys.argv[1:])
    if unknown:
        return unknown
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
