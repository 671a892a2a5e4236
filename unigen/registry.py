"""A tiny name -> class registry so recipes can name components without edits to the core.

A name that is not registered yet may come from a plugin (:mod:`unigen.plugins`): a lookup that
misses loads the plugins named by ``UNIGEN_PLUGINS`` and the ``unigen.plugins`` entry points once,
then tries again; the error of a real miss says how to load a custom component.  This module
imports nothing from unigen at import time (everything else imports it).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

PLUGIN_HINT = ("a custom one must be imported first: `--plugin MODULE`, UNIGEN_PLUGINS or a "
               "`unigen.plugins` entry point")


def defining_module(obj: Any) -> str | None:
    """The module that defines a registered component, as a saved config records it: None for
    unigen's own components (found without plugins) and for ``__main__`` (not importable by name)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or not module or module == "__main__":
        return None
    if module == "unigen" or module.startswith("unigen."):
        return None
    return module


def saved_module_record(obj: Any) -> dict[str, str]:
    """``{"module": ...}`` for a component defined outside unigen (what a config saves next to its
    registered name), else ``{}``."""
    module = defining_module(obj)
    return {"module": module} if module else {}


def _load_plugins() -> None:
    from unigen.plugins import load_plugins  # lazily: plugins may import registries

    load_plugins()


class Registry(Generic[T]):
    """Maps short names (used in recipes) to classes or factories.

    >>> SAMPLERS = Registry("sampler")
    >>> @SAMPLERS.register("maskgit")
    ... class MaskGIT: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str, saved_by: str | None = None) -> T:
        """The component registered as ``name``; on a miss the plugins are loaded and the lookup
        tried again.  ``saved_by``: the module a saved config recorded for it (named in the error,
        never imported)."""
        try:
            return self._items[name]
        except KeyError:
            pass
        except TypeError:  # unhashable: no name at all
            raise KeyError(self.unknown(name, saved_by)) from None
        _load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown(name, saved_by)) from None

    def unknown(self, name: Any, saved_by: str | None = None) -> str:
        """The one-line error for an unknown ``name``: the known names and how to load a custom
        one (``saved_by``: the module a saved config recorded for it)."""
        known = ", ".join(sorted(self._items)) or "none"
        if isinstance(saved_by, str) and saved_by:
            hint = (f"saved by module {saved_by!r}: pass --plugin {saved_by} or set "
                    f"UNIGEN_PLUGINS={saved_by}")
        else:
            hint = PLUGIN_HINT
        return f"unknown {self.kind} {name!r}; known: {known} ({hint})"

    def module_of(self, name: str) -> str | None:
        """The module defining a registered component outside unigen (None for built-ins)."""
        return defining_module(self._items[name])

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        _load_plugins()
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
