"""Plugins: your own registered components on the ``unigen`` command line.

A plugin is any importable Python module that registers components when it is imported (a sampler
with ``@SAMPLERS.register``, a head, an image tokenizer, a metric, a shard source, a verb with
``unigen.commands.register_verb`` ...).  unigen imports plugins from three places, the way pytest
and friends do:

* ``unigen --plugin my_pkg.my_mod <verb> ...``: the global option, repeatable, before or after
  the verb;
* the environment variable ``UNIGEN_PLUGINS=my_mod,other_mod`` (comma-separated module names);
* the Python entry points of the group ``unigen.plugins`` that installed packages declare::

      # pyproject.toml of your package
      [project.entry-points."unigen.plugins"]
      mine = "my_pkg.unigen_plugin"          # a module: imported
      # or "my_pkg.setup:register", a function: imported, then called once with no arguments

The command line loads the last two at start (:func:`load_plugins`) for every verb; from Python,
a registry lookup that misses (``Registry.get``) loads them once and tries again, so loading a
saved folder finds an installed plugin's components too.

Saved folders never import code: a config that names a component from a plugin also records the
module that defined it (``"module": "my_head"``), but only to name it in the error when that
module is not loaded, the reason diffusers and transformers ask for ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

ENV_VAR = "UNIGEN_PLUGINS"
ENTRY_POINT_GROUP = "unigen.plugins"


class PluginError(ImportError):
    """A plugin could not be imported; the message is one line naming the module and its source."""


_imported: dict[str, str] = {}  # module (or entry point) -> where it came from
_entry_points_scanned = False
_loading = False  # a plugin's own import may look a name up: no recursion


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).strip().split("\n")[0].split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _path_hint(err: Exception, name: str) -> str:
    """For the plugin itself not being found (not one of its own imports): where Python looks."""
    missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
    if missing and (name == missing or name.startswith(f"{missing}.")):
        return " (install it, or put its folder on PYTHONPATH, e.g. PYTHONPATH=. unigen ...)"
    return ""


def import_plugin(module: str, source: str = "--plugin") -> ModuleType:
    """Import one plugin module (again a no-op once imported); ``source`` says where it was named
    (``--plugin``, the environment variable ...) for the error."""
    name = str(module).strip()
    if not name:
        raise PluginError(f"empty plugin module name (from {source})")
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # not found, a syntax error, or the module's own code failing
        raise PluginError(f"cannot import plugin module {name!r} (from {source}): "
                          f"{_one_line(err)}{_path_hint(err, name)}") from err
    _imported.setdefault(name, source)
    return mod


def env_plugins() -> list[str]:
    """The module names in ``UNIGEN_PLUGINS``."""
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep: Any) -> None:
    dist = getattr(getattr(ep, "dist", None), "name", None)
    source = f"entry point {ep.name!r} of the {ENTRY_POINT_GROUP} group" + \
        (f" in distribution {dist!r}" if dist else "")
    module = ep.value.split(":", 1)[0].strip()
    try:
        obj = ep.load()
    except Exception as err:
        raise PluginError(f"cannot import plugin module {module!r} (from {source}): "
                          f"{_one_line(err)}") from err
    if callable(obj) and not isinstance(obj, ModuleType):
        try:
            obj()
        except Exception as err:
            raise PluginError(f"plugin {ep.value!r} (from {source}) failed: {_one_line(err)}") from err
    _imported.setdefault(ep.value, source)


def load_plugins() -> list[str]:
    """Import every module named in ``UNIGEN_PLUGINS`` and every ``unigen.plugins`` entry point
    not imported yet (idempotent: the entry points are read once per process, the environment
    variable at every call).  Returns what was newly imported; a failure is a :class:`PluginError`
    whose message names the module and where it was named."""
    global _entry_points_scanned, _loading
    if _loading:
        return []
    _loading = True
    new: list[str] = []
    try:
        for name in env_plugins():
            if name not in _imported:
                import_plugin(name, f"the {ENV_VAR} environment variable")
                new.append(name)
        if not _entry_points_scanned:
            for ep in _entry_points():
                if ep.value not in _imported:
                    _load_entry_point(ep)
                    new.append(ep.value)
            _entry_points_scanned = True
    finally:
        _loading = False
    return new


def loaded() -> dict[str, str]:
    """The plugins imported so far: module (or entry point value) -> where it was named."""
    return dict(_imported)
