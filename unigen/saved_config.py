"""The config a model's weights were saved with, checked when they load: the safetensors file
records the config file's content (:data:`unigen.io.CONFIG_RECORD_KEY`, written by
:func:`unigen.io.save_safetensors`), and a config file edited since is one error line naming the
first differing key.  Edits that keep every weight shape (FSQ ``levels`` ``[8, 5, 5, 5]`` ->
``[5, 5, 5, 8]``, attention ``heads``) would otherwise load silently into a model whose codes or
outputs mean something else.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import Any, Sequence

from unigen.io import CONFIG_RECORD_KEY, read_json_object, safetensors_metadata

_ABSENT = object()


def constructor_defaults(cls: type) -> dict[str, Any]:
    """``argument -> default`` (as JSON values) of what ``cls(**config)`` fills in for a key the
    config lacks: a dataclass's field defaults, else the keyword defaults of ``__init__``, followed
    through ``**kwargs`` into the base classes' ``__init__``.  Used by :func:`check_saved_config`:
    a key that one side lacks and the other holds at its default is no difference."""
    found: dict[str, Any] = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                found[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                found[f.name] = f.default_factory()
    else:
        seen: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            try:
                params = list(inspect.signature(init).parameters.values())[1:]  # not self
            except (TypeError, ValueError):
                break
            for p in params:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in seen:
                    continue
                seen.add(p.name)
                if p.default is not p.empty:
                    found[p.name] = p.default
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break  # the rest of the arguments go nowhere further up
    out = {}
    for name, value in found.items():
        try:
            out[name] = json.loads(json.dumps(value))  # tuples -> lists, as JSON holds them
        except (TypeError, ValueError):
            pass  # not a JSON value: a config never holds it
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 4 == 4.0, but true != 1 (Python's ``==`` says so); NaN == NaN."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (a != a and b != b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def first_config_difference(saved: dict[str, Any], written: dict[str, Any],
                            defaults: dict[str, Any] | None = None, ignore: Sequence[str] = (),
                            _prefix: str = "") -> tuple[str, Any, Any] | None:
    """``(dotted key, value in saved, value in written)`` of the first key (sorted, depth first)
    whose values differ, a missing value being ``_ABSENT``; None when none does.  ``defaults``
    (nested like the configs) holds what the reader fills in for a missing key: a key that one side
    lacks and the other holds at that value is no difference.  ``ignore``: dotted keys skipped."""
    defaults = defaults if isinstance(defaults, dict) else {}
    for key in sorted(set(saved) | set(written), key=str):
        name = f"{_prefix}{key}"
        if name in ignore:
            continue
        a, b = saved.get(key, _ABSENT), written.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_config_difference(a, b, defaults.get(key), ignore, f"{name}.")
            if found:
                return found
            continue
        default = defaults.get(key, _ABSENT)
        a_eff, b_eff = (default if v is _ABSENT else v for v in (a, b))
        if a_eff is _ABSENT or b_eff is _ABSENT or not _same(a_eff, b_eff):
            return name, a, b
    return None


def _shown(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_saved_config(config_file: str | os.PathLike, config: dict[str, Any] | None,
                       weights_file: str | os.PathLike, defaults: dict[str, Any] | None = None,
                       ignore: Sequence[str] = ()) -> None:
    """Refuse, with one ``ValueError`` line, a config file that differs from the config the weights
    were saved with (recorded by :func:`save_safetensors`): an edit that keeps every weight shape
    (FSQ ``levels`` ``[8, 5, 5, 5]`` -> ``[5, 5, 5, 8]``, attention ``heads``) would otherwise load
    silently into a model whose codes or outputs mean something else.  ``config`` is the file's
    content as written (read here when None), never a model's in-memory config; ``defaults`` and
    ``ignore`` as in :func:`first_config_difference`.  Weights saved before the record existed hold
    none and load as they always did; so does a reformatted file (indentation, key order)."""
    config_file, weights_file = Path(config_file), Path(weights_file)
    record = safetensors_metadata(weights_file).get(CONFIG_RECORD_KEY)
    if record is None:
        return
    try:
        saved = json.loads(record)
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"{weights_file}: the record of the config it was saved with "
                         f"({CONFIG_RECORD_KEY!r} in its metadata) is not a JSON object")
    if config is None:
        config = read_json_object(config_file)
    found = first_config_difference(saved, config, defaults, ignore)
    if found is None:
        return
    key, was, now = found
    weights = weights_file.name if weights_file.parent == config_file.parent else str(weights_file)
    now_text = "missing" if now is _ABSENT else _shown(now)
    was_text = "without it" if was is _ABSENT else f"with {_shown(was)}"
    raise ValueError(f"{config_file}: {key!r} is {now_text} but the weights in {weights} were "
                     f"saved {was_text} (edit it back, or retrain)")
