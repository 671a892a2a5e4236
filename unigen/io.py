"""Crash-safe file output: everything unigen writes goes through here.

A crash (kill -9, out of disk) while writing must never leave a truncated file where a good one was,
so files are written to a temporary sibling, fsynced, then renamed over the target (rename is atomic
on POSIX).  Directories (``save_pretrained``) are built in a temporary sibling and swapped in whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# safetensors metadata key of the config the weights were saved with (canonical JSON of the object
# written to the config file beside them): loading refuses a config file edited since
CONFIG_RECORD_KEY = "unigen_config"


def canonical_json(obj: Any) -> str:
    """One fixed text per JSON value (sorted keys, no spaces): what :data:`CONFIG_RECORD_KEY` holds."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def save_safetensors(tensors: dict[str, torch.Tensor], target: str | os.PathLike,
                     config: dict[str, Any] | None = None) -> None:
    """Write ``tensors``; ``config`` (the object written to the config file beside them) is
    recorded in the file's metadata, for :func:`check_saved_config` at load time."""
    # safetensors refuses shared storage and non-contiguous tensors; store independent copies
    clean = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
    metadata = None if config is None else {CONFIG_RECORD_KEY: canonical_json(config)}
    with atomic_path(target) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"cannot read weights file {path}: {err}") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata (str -> str) of a safetensors file, read from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"cannot read weights file {path}: {err}") from None


CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # one network's save_pretrained


def save_typed_model(path: str | os.PathLike, module: torch.nn.Module, type_name: str,
                     format_version: int, config: dict[str, Any]) -> None:
    """The ``save_pretrained`` layout of one network: ``config.json`` (registered type, format
    version, constructor arguments; for a type defined outside unigen also its ``module``, only
    to name it in an error: loading never imports it) + ``model.safetensors``; the directory is
    complete or absent."""
    from unigen.registry import saved_module_record

    meta = {"type": type_name, "format_version": format_version, "config": config,
            **saved_module_record(type(module))}
    with atomic_directory(path, marker=CONFIG_FILE) as tmp:
        write_json(tmp / CONFIG_FILE, meta)
        save_safetensors(module.state_dict(), tmp / WEIGHTS_FILE, config=meta)


def load_typed_weights(module: torch.nn.Module, path: str | os.PathLike,
                       config_file: str | os.PathLike, meta: dict[str, Any]) -> torch.nn.Module:
    """:func:`load_weights` for a :func:`save_typed_model` directory: ``meta`` (its config file's
    content) must be the config the weights were saved with; a constructor argument missing on one
    side counts as its default, and ``module`` (only named in errors) may differ."""
    from unigen.saved_config import constructor_defaults

    return load_weights(module, path, config_file, meta,
                        defaults={"config": constructor_defaults(type(module))}, ignore=("module",))


def load_weights(module: torch.nn.Module, path: str | os.PathLike,
                 config_file: str | os.PathLike | None = None, config: dict[str, Any] | None = None,
                 defaults: dict[str, Any] | None = None, ignore: Sequence[str] = ()
                 ) -> torch.nn.Module:
    """Load a safetensors file into ``module``, strictly: any missing, unexpected or mis-shaped
    tensor is one ``ValueError`` naming the file (torch's own error is a page that does not).
    With ``config_file`` (and ``config``, its content as read), first :func:`check_saved_config`:
    the file must hold the config the weights were saved with."""
    if config_file is not None:
        from unigen.saved_config import check_saved_config

        check_saved_config(config_file, config, path, defaults, ignore)
    state = load_safetensors(path)
    expected = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{path} does not match the config: shapes (file vs config) differ for "
                         f"{wrong[:3]}")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return module


def check_replaceable(target: str | os.PathLike, marker: str | Sequence[str] | None) -> None:
    """Refuse, with one line, a ``target`` that :func:`atomic_directory` must not replace: a file
    (or anything not a directory), or a non-empty directory holding none of ``marker`` (the config
    file a save of this kind writes: ``pipeline.json``, ``config.json``, ...).  An earlier save of
    the same kind is swapped for the new one whole; anything else there is the user's, and a save
    that deleted it would lose data.  ``marker=None`` checks only that ``target`` is no file (its
    contents are judged once the save's own files are known)."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise ValueError(f"cannot save to {target}: it is a file, not a directory; give a new "
                         "path or an earlier save's directory")
    if marker is None:
        return
    names = (marker,) if isinstance(marker, str) else tuple(marker)
    if any((target / name).is_file() for name in names):
        return
    if next(target.iterdir(), None) is None:  # an empty directory holds nothing to lose
        return
    what = " or ".join(names) if names else "the files this save writes"
    raise ValueError(f"cannot save to {target}: the directory is not empty and holds no {what} "
                     "(it is not an earlier save of this kind, and saving would replace its "
                     "contents); give a new or empty directory")


def _written_files(folder: Path) -> list[str]:
    """The top-level files a save wrote: what an earlier save of the same kind also holds."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, marker: str | Sequence[str] | None = None
                     ) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it replaces ``target`` only when complete.

    An existing ``target`` is replaced only when it is empty or an earlier save of the same kind:
    it holds ``marker`` (checked before anything is written) or, without a ``marker``, one of the
    top-level files the new save wrote (checked before the swap).  Anything else (a file, a folder
    of other things) is refused with a ``ValueError`` and left untouched (:func:`check_replaceable`).
    """
    target = Path(target)
    check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        # again: the target may have appeared while the save ran, and without a marker this is
        # the first moment the save's own files are known
        check_replaceable(target, _written_files(tmp) if marker is None else marker)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        _fsync_dir(tmp)
        old = None
        if target.exists() or target.is_symlink():
            # a name of our own (the temporary's, unique), never a fixed one another file may hold
            old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def config_diff(saved: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key -> (saved value, our value)`` for every key whose values differ (absent = None); the
    one-line error of a weights/config mismatch quotes it."""
    return {k: (saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours))
            if saved.get(k) != ours.get(k)}


def read_json(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(read_utf8(path, f"{what} file"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} is not valid JSON: {err}") from None


def read_utf8(path: str | os.PathLike, what: str) -> str:
    """A text file's content; bytes that are not UTF-8 are one ``ValueError`` naming ``what`` and
    the file (Python's own error names only the byte)."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_json_object(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """:func:`read_json` for files whose body must be a JSON object (every config unigen writes);
    a list or scalar body is one ``ValueError`` naming the file, not an ``AttributeError`` later."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object, got a JSON "
                         f"{_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def dir_path(path: Any, what: str) -> Path:
    """``path`` as a ``Path``; anything but a str or path is one ``TypeError`` naming ``what``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the {what} directory must be a path (str or os.PathLike), got "
                        f"{type(path).__name__}: {path!r}")
    return Path(path)


def read_model_dir(path: str | os.PathLike, what: str, how_to_make: str,
                   config_name: str = CONFIG_FILE) -> tuple[Path, dict[str, Any]]:
    """The directory and parsed config (a JSON object) of a ``save_pretrained`` folder; a missing
    folder or config is one error naming ``what`` and how to make one (``how_to_make``)."""
    path = dir_path(path, what)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path} ({how_to_make})")
    return path, read_json_object(path / config_name, f"{what} config")


def typed_model_config(config_file: str | os.PathLike, meta: dict[str, Any],
                       what: str) -> tuple[str, dict[str, Any]]:
    """The registered type name and constructor arguments of a :func:`save_typed_model` config,
    checked: a wrong structure is one ``ValueError`` naming the file and the field."""
    name = meta.get("type")
    if not isinstance(name, str) or not name:
        raise ValueError(f'{config_file}: "type" must be the name of a registered {what} (a '
                         f"string), got {name!r}")
    if "config" not in meta:
        raise ValueError(f'{config_file} has no "config" field (the {what} constructor arguments)')
    config = meta["config"]
    if not isinstance(config, dict):
        raise ValueError(f'{config_file}: "config" must be a JSON object of the {what} '
                         f"constructor arguments, got a JSON {_json_kind(config)}")
    return name, config


@contextlib.contextmanager
def config_errors(config_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Build a model from a saved config inside this block: the constructor's own ``TypeError``
    (unknown argument) or ``ValueError`` (bad value) becomes one ``ValueError`` naming the file."""
    try:
        yield
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        # chained, not suppressed: a TypeError can also be a bug, and UNIGEN_DEBUG shows the cause
        raise ValueError(f"bad {what} config in {config_file}: {message}") from err
