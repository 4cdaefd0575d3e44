"""A registry of kinds that imports a kind's module only when that kind is looked up.

The watcher and notifier registries map a kind (``"page"``, ``"smtp"``) to its class. Filling
them by importing every built-in module would make a program that only watches web pages pay for
the log tailer's regex engine, the port scanner and the email package. So each registry starts
knowing the built-in kinds by *name* only (kind -> module path); the module is imported, and its
``@register`` decorator fills in the class, the first time the kind is looked up.

As a :class:`~collections.abc.Mapping`: ``in``, ``len``, iteration and ``keys()`` never import
(config parsing uses them to recognise ``[[log]]`` and to list the known kinds in errors);
``registry[kind]``, ``get``, ``values()`` and ``items()`` import what they return (the reference
generator imports everything that way). A class registered at run time by a third party is just
there, like a built-in that was already imported.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

C = TypeVar("C", bound=type[Any])


class Registry(Mapping[str, C]):
    """Kind -> class, with built-in kinds imported on first lookup."""

    def __init__(self, what: str, builtins: Mapping[str, str]) -> None:
        self._what = what
        self._modules = dict(builtins)
        self._classes: dict[str, C] = {}

    def register(self, cls: C) -> None:
        """Record ``cls`` under its ``kind`` (each kind's module does, as it is imported)."""
        self._classes[cls.kind] = cls

    def __getitem__(self, kind: str) -> C:
        found = self._classes.get(kind)
        if found is not None:
            return found
        module = self._modules.get(kind)
        if module is None:
            raise KeyError(kind)
        importlib.import_module(module)  # thread-safe: a second thread waits for the first
        found = self._classes.get(kind)
        if found is None:
            raise LookupError(f"{module} was imported but registered no {self._what} {kind!r}")
        return found

    def __contains__(self, kind: object) -> bool:
        return kind in self._classes or kind in self._modules

    def __iter__(self) -> Iterator[str]:
        yield from self._modules
        yield from (kind for kind in self._classes if kind not in self._modules)

    def __len__(self) -> int:
        return len(self._modules.keys() | self._classes.keys())

    def loaded(self) -> list[C]:
        """The classes imported so far, without importing any."""
        return list(self._classes.values())

    def for_model(self, model: type[Any]) -> C | None:
        """The class whose ``config_model`` is ``model``, importing every kind only if no loaded
        class takes it (a config model may live apart from its class, as the log watcher's does).
        """
        candidates = itertools.chain(self.loaded(), self.values())  # values() imports lazily
        return next((cls for cls in candidates if cls.config_model is model), None)
