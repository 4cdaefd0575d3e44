"""From config to parts: the notifiers and watchers a config (or a spec) names, built.

Building can fail beyond validation (a ``call`` that does not import, a command that is not
there, a notifier's library missing); every such problem is a :class:`ConfigError` that names the
file and the table, like validation errors do, and all of a config's problems come at once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from watchkeeper.config import Config, notifier_config
from watchkeeper.errors import ConfigError
from watchkeeper.notifiers import NOTIFIERS, Notifier, NotifierConfig
from watchkeeper.runtime import close_watcher
from watchkeeper.watchers import WATCHERS, Watcher, WatcherConfig

NotifierSpec = Mapping[str, Any] | NotifierConfig | Notifier


def build_notifier(spec: NotifierSpec, where: str = "notify") -> Notifier:
    """A notifier from a dict (as in TOML), a validated config, or a ready instance."""
    if isinstance(spec, Notifier):
        return spec
    config = spec if isinstance(spec, NotifierConfig) else notifier_config(spec, where)
    assert config is not None
    return NOTIFIERS[config.kind](config)


def build_from_config(config: Config) -> tuple[list[Notifier], list[Watcher]]:
    """Every notifier and watcher of a config, or one ConfigError listing every problem.

    Building can fail beyond validation (a ``call`` that does not import, a notifier's library
    missing); each message names the file and the table, like validation errors do.
    """
    problems: list[str] = []
    notifiers: list[Notifier] = []
    watchers: list[Watcher] = []
    source = Path(config.source)
    if source.is_file():  # `call = "checks:fn"` may name a module next to the config file
        folder = str(source.resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
    for spec in config.notify:
        try:
            notifiers.append(build_notifier(spec))
        except ConfigError as exc:
            problems += [
                f"{config.source}: [[notify]] (name {spec.name!r}): {e}" for e in exc.errors
            ]
    for table in config.watchers:
        kind = table.table_kind or getattr(WATCHERS.for_model(type(table)), "kind", "?")
        try:
            watchers.append(build_watcher(table))
        except ConfigError as exc:
            where = f"{config.source}: [[{kind}]] (name {table.name!r})"
            problems += [f"{where}: {e}" for e in exc.errors]
    if problems:
        for built in notifiers:
            built.close()
        raise ConfigError(problems)
    return notifiers, watchers


def build_watcher(config: WatcherConfig) -> Watcher:
    """A watcher from its validated config: the class of its table's kind, else of its model."""
    kind = config.table_kind
    cls = WATCHERS[kind] if kind is not None else WATCHERS.for_model(type(config))
    if cls is None:
        raise ConfigError(f"no watcher kind takes a {type(config).__name__}")
    return cls(config)


def unique_names(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{what} name {name!r} is used twice; give each a distinct name")
        seen.add(name)


def close_all(notifiers: Sequence[Notifier], watchers: Sequence[Watcher]) -> None:
    """Close parts built for a reload that will not run."""
    for notifier in notifiers:
        notifier.close()
    for watcher in watchers:
        close_watcher(watcher)
