"""A user's own function, run every N seconds: the seed idea in one line.

``keeper.every("30s", fn)`` or ``[[custom]] call = "package.module:function"``. The function takes
no arguments and returns what it saw: an :class:`~watchkeeper.alerts.Observation`, a string (a
warning with that title), a list of those, or None when all is well. Raising counts as a failed
check (see ``fail_after``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field

from watchkeeper.alerts import Observation
from watchkeeper.errors import ConfigError
from watchkeeper.watchers.base import CheckResult, Watcher, WatcherConfig, register

CheckFunction = Callable[[], Any]


class CustomConfig(WatcherConfig):
    """``[[custom]]``: call a function of yours every ``every``."""

    call: str | None = Field(
        default=None,
        description='The function, as "package.module:function". Set by keeper.every() in code.',
        pattern=r"^[\w.]+:[\w.]+$",
    )


def resolve(target: str) -> CheckFunction:
    """Import ``package.module:function`` with an error that says which part failed."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises as it is imported
        raise ConfigError(
            f"call = {target!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(
                f"call = {target!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"call = {target!r}: {attr_path!r} is not callable")
    result: CheckFunction = obj
    return result


def observations(result: Any) -> list[Observation]:
    """Normalise what a check function returned into a list of observations."""
    if result is None:
        return []
    if isinstance(result, Observation | str):
        result = [result]
    if not isinstance(result, Iterable):
        raise TypeError(
            f"a check must return an Observation, a string, a list of them or None, "
            f"not {type(result).__name__}"
        )
    found = []
    for item in result:
        if isinstance(item, str):
            found.append(Observation(title=item))
        elif isinstance(item, Observation):
            found.append(item)
        else:
            raise TypeError(
                f"a check returned a list holding a {type(item).__name__}; "
                "only Observation and str are allowed"
            )
    return found


@register
class CustomWatcher(Watcher):
    """Runs a function; its return value is the observation list."""

    kind = "custom"
    config_model = CustomConfig
    config: CustomConfig

    def __init__(self, config: CustomConfig, function: CheckFunction | None = None) -> None:
        super().__init__(config)
        if function is None:
            if config.call is None:
                raise ConfigError(f"[[custom]] {config.name!r}: 'call' is required")
            function = resolve(config.call)
        self.function = function

    def check(self, checkpoint: Any) -> CheckResult:
        """Call the function; a custom check has no checkpoint."""
        return CheckResult(observations(self.function()))
