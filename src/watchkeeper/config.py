"""The agent's TOML config: parsed with tomllib, ``${ENV}`` interpolated, validated by pydantic.

Layout::

    [keeper]            state, shutdown_timeout, retention, max_alerts, dashboard, token,
                        agent, lease, include (a fleet's shared files, see docs/fleet.md)
    [[notify]]          one table per notifier; ``kind`` picks the model from the registry
    [[custom]] ...      one array of tables per watcher kind, named by the kind

Every error names the file, the table (with its index and name), the key and what was wrong, and
all errors of a file are reported together. A value from a secret field (passwords, tokens, URLs,
headers) is never echoed. Relative paths are taken relative to the config file's folder, so a
config means the same thing whatever the working directory; a relative ``state`` under systemd
(``$STATE_DIRECTORY`` set) goes into the service's state directory instead.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from watchkeeper.bind import DEFAULT_BIND, Bind, check_exposure, parse_bind
from watchkeeper.errors import ConfigError
from watchkeeper.notifiers import NOTIFIERS, NotifierConfig
from watchkeeper.units import Duration
from watchkeeper.watchers import WATCHERS, WatcherConfig

_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_WORDS = ("password", "token", "secret", "url", "headers", "key")


STATE_URLS = ("sqlite://", "postgresql://", "postgres://")
"""How a ``state`` that is a URL, not a path, begins."""


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/watchkeeper/state.db`` (``~/.local/state/...`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "watchkeeper" / "state.db"


class KeeperSettings(BaseModel):
    """``[keeper]``: settings of the keeper itself."""

    model_config = ConfigDict(extra="forbid")

    state: Path | str | None = Field(
        default=None,
        description="The state: a SQLite file (a path, or sqlite:///absolute/path) or a "
        "PostgreSQL database shared by a fleet (postgresql://user:${PGPASSWORD}@host/db). "
        "Default: $XDG_STATE_HOME/watchkeeper/state.db. A relative path is taken under "
        "$STATE_DIRECTORY when set (systemd's StateDirectory=), else under the config file's "
        "folder.",
    )

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: object) -> object:
        """A database URL stays a string (a Path would fold its ``//``); anything else is a
        path."""
        if isinstance(value, str) and not value.startswith(STATE_URLS):
            return Path(value)
        return value

    shutdown_timeout: Duration = Field(
        default=5.0, description="How long stopping may take to flush pending alerts."
    )
    retention: Duration = Field(
        default=30 * 86400.0,
        gt=0,
        description="Alerts older than this are deleted once every notifier has them.",
    )
    max_alerts: int = Field(
        default=1_000_000,
        ge=1,
        description="History keeps at most this many alerts (and any still to be delivered).",
    )
    dashboard: str | bool = Field(
        default=DEFAULT_BIND,
        description='Where `watchkeeper run` serves the dashboard, "HOST:PORT", or false for none.',
    )
    token: SecretStr | None = Field(
        default=None,
        description="Required by the dashboard, API and stream when set; needed off loopback "
        "(at least 16 characters there: `watchkeeper token` makes one).",
    )
    tls_cert: FilePath | None = Field(
        default=None, description="Serve the dashboard over HTTPS with this certificate (PEM)."
    )
    tls_key: FilePath | None = Field(default=None, description="The private key (PEM) of tls_cert.")
    agent: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="This agent's name in a fleet (one database, many agents). Default: the "
        "host name. Two live agents may not share a name.",
    )
    lease: Duration = Field(
        default=30.0,
        ge=0.5,
        le=3600.0,
        description="In a fleet: how long a shared watcher stays with an agent that stopped "
        "renewing it (failover time); renewed, and the agent's heartbeat sent, every lease/3.",
    )
    include: list[Path] = Field(
        default_factory=list,
        description="TOML files every agent of a fleet loads too: the shared watchers and "
        "notifiers (no [keeper] table there). The same table in several files is one watcher.",
    )

    @field_validator("dashboard")
    @classmethod
    def _dashboard_address(cls, value: str | bool) -> str | bool:
        if isinstance(value, str):
            parse_bind(value)
        return value

    @model_validator(mode="after")
    def _dashboard_is_safe(self) -> KeeperSettings:
        bind = self.dashboard_bind()
        if bind is not None:
            check_exposure(bind, self.token.get_secret_value() if self.token else None)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither")
        return self

    def agent_name(self) -> str:
        """This agent's name: ``agent``, or the host name when it is not set."""
        return self.agent or socket.gethostname()

    def dashboard_bind(self) -> Bind | None:
        """The dashboard's address, or None when it is turned off."""
        if self.dashboard is False:
            return None
        return parse_bind(DEFAULT_BIND if self.dashboard is True else self.dashboard)


class Config(BaseModel):
    """A whole validated config file."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    keeper: KeeperSettings = Field(default_factory=KeeperSettings)
    notify: list[NotifierConfig] = Field(default_factory=list)
    watchers: list[WatcherConfig] = Field(default_factory=list)
    source: str = "<config>"
    sources: dict[str, str] = Field(default_factory=dict)
    """The file each watcher and notifier came from (``watcher:NAME``, ``notify:NAME``), where
    it is not :attr:`source` (an ``include``)."""

    def source_of(self, what: str, name: str) -> str:
        """The file that defines the watcher (``what="watcher"``) or notifier named ``name``."""
        return self.sources.get(f"{what}:{name}", self.source)


def load_config(path: str | Path) -> Config:
    """Read, interpolate and validate a config file, or raise ConfigError listing every problem."""
    config, errors = validate_config(path)
    if errors:
        raise ConfigError(errors)
    return config


def validate_config(path: str | Path) -> tuple[Config, list[str]]:
    """The tables of a config file that are valid, and a problem per table that is not.

    For ``watchkeeper check``, which builds what is valid to find its problems too (a ``call``
    that does not import, a command that does not exist) and lists them all in one pass. A file
    that cannot be read or is not TOML raises ConfigError: there is nothing to go on.
    """
    path = Path(path)
    data = _read_toml(path)
    try:
        config, errors = _parse(data, source=str(path), base=path.parent)
        for include in config.keeper.include:
            errors += _include(config, include)
    except RecursionError:  # interpolation and validation recurse once per nesting level too
        raise ConfigError(f"{path}: {NESTED}") from None
    errors += _owners(config)
    return config, errors


def _include(config: Config, path: Path) -> list[str]:
    """Merge a fleet's shared file into an agent's config; the problems found.

    The same table in both (same kind, same settings) is one watcher or notifier, so a shared
    watcher may be listed in several agents' own files too; two different tables with one name
    are an error naming both files. An included file has no ``[keeper]``: those settings (the
    agent's name, its dashboard) are each agent's own.
    """
    try:
        data = _read_toml(path)
        shared, errors = _parse(data, source=str(path), base=path.parent)
    except RecursionError:
        return [f"{path}: {NESTED}"]
    except ConfigError as exc:
        return [f"{config.source}: [keeper]: include: {e}" for e in exc.errors]
    if "keeper" in data:
        errors.append(
            f"{path}: [keeper] belongs in each agent's own config, not in an included file"
        )
    for what, mine, theirs in (
        ("notify", config.notify, shared.notify),
        ("watcher", config.watchers, shared.watchers),
    ):
        known: dict[str, NotifierConfig | WatcherConfig] = {m.name: m for m in mine}
        for table in theirs:
            other = known.get(table.name)
            if other is None:
                known[table.name] = table
                mine.append(table)  # type: ignore[arg-type]  # the list of table's own type
                config.sources[f"{what}:{table.name}"] = str(path)
            elif not _same(other, table):
                errors.append(
                    f"{path}: {what} {table.name!r} is also defined, differently, in "
                    f"{config.source_of(what, table.name)}; one name is one {what} across a "
                    "fleet's files: make the tables the same, or rename one"
                )
    return errors


def _same(one: BaseModel, other: BaseModel) -> bool:
    """Two tables that configure the same thing (one watcher or notifier, listed twice)."""
    return type(one) is type(other) and one.model_dump() == other.model_dump()


def _owners(config: Config) -> list[str]:
    """Watchers this agent must not run: dropped when an included file pins them to another
    agent (the fleet's file lists every agent's), an error in the agent's own file or when a
    shared file lists a host-local watcher (a log) without saying which agent's host it is."""
    errors: list[str] = []
    me = config.keeper.agent_name()
    kept: list[WatcherConfig] = []
    for table in config.watchers:
        source = config.source_of("watcher", table.name)
        cls = WATCHERS[table.table_kind] if table.table_kind else WATCHERS.for_model(type(table))
        kind = getattr(cls, "kind", "?")
        where = f"{source}: [[{kind}]] (name {table.name!r})"
        shared_file = source != config.source
        if table.agent is not None and table.agent != me:
            if not shared_file:
                errors.append(
                    f"{where}: agent: pinned to agent {table.agent!r}, but this config is agent "
                    f"{me!r} ([keeper] agent); move it to that agent's config or to a shared file"
                )
            continue
        if shared_file and table.agent is None and cls is not None and cls.local:
            errors.append(
                f"{where}: a {kind} watcher reads its host's files, so in a file every agent "
                'loads it needs agent = "NAME" (or move it to that agent\'s own config)'
            )
            continue
        kept.append(table)
    config.watchers = kept
    return errors


NESTED = "arrays or tables are nested too deeply to be a watchkeeper config"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (watchkeeper init writes a starter one)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per nesting level
        raise ConfigError(f"{path}: {NESTED}") from None


def state_location(path: str | Path) -> Path | str | None:
    """The ``[keeper] state`` a config file names, resolved as :func:`load_config` would, without
    validating the rest: an admin's shell may lack the service's secrets, which only the agent
    needs (``watchkeeper status`` and ``reload`` only need to find the state)."""
    path = Path(path)
    keeper = _read_toml(path).get("keeper")
    raw = keeper.get("state") if isinstance(keeper, dict) else None
    if not isinstance(raw, str):
        return None
    errors: list[str] = []
    state = _interpolate(raw, str(path), ["keeper", "state"], errors)
    if errors:
        raise ConfigError(errors)
    return _state_path(state, path.parent)


def _state_path(state: Path | str, base: Path) -> Path | str:
    """A relative state goes under $STATE_DIRECTORY (systemd's StateDirectory=) when it is set:
    under the unit, the config's folder is read-only; else under the config's folder. A URL
    stays as it is."""
    if isinstance(state, str):
        if state.startswith(STATE_URLS):
            return state
        state = Path(state)
    if state.is_absolute():
        return state
    service_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(service_state) / state if service_state else base / state


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", base: Path | None = None
) -> Config:
    """Validate an already-parsed TOML document, or raise ConfigError listing every problem."""
    config, errors = _parse(data, source, base)
    if errors:
        raise ConfigError(errors)
    return config


def _parse(data: Mapping[str, Any], source: str, base: Path | None) -> tuple[Config, list[str]]:
    """The valid part of a parsed TOML document (relative paths resolved), and the problems."""
    errors: list[str] = []
    config = Config(source=source)
    data = _interpolate(data, source, [], errors)
    if errors:  # a missing variable would only cause confusing follow-on errors
        return config, errors
    for section, value in data.items():
        if section == "keeper":
            where = f"{source}: [keeper]"
            if not isinstance(value, dict):
                errors.append(f"{where}: must be a table")
                continue
            settings = _validate(KeeperSettings, value, where, errors)
            if isinstance(settings, KeeperSettings):
                config.keeper = settings
        elif section == "notify":
            for index, table in _tables(value, f"{source}: [[notify]]", errors):
                where = f"{source}: [[notify]] #{index + 1}{_label(table)}"
                notifier = notifier_config(table, where, errors)
                if notifier is not None:
                    config.notify.append(notifier)
        elif section in WATCHERS:
            for index, table in _tables(value, f"{source}: [[{section}]]", errors):
                where = f"{source}: [[{section}]] #{index + 1}{_label(table)}"
                watcher = watcher_config(section, table, where, errors)
                if watcher is not None:
                    config.watchers.append(watcher)
        else:
            known = ", ".join(["keeper", "notify", *sorted(WATCHERS)])
            errors.append(f"{source}: unknown table [{section}]; known tables are {known}")
    _check_unique(source, "[[notify]]", [n.name for n in config.notify], errors)
    _check_unique(source, "watcher", [w.name for w in config.watchers], errors)
    if base is not None:
        if config.keeper.state is not None:
            config.keeper.state = _state_path(config.keeper.state, base)
        for model in [config.keeper, *config.notify, *config.watchers]:
            resolve_paths(model, base)
    return config, errors


def notifier_config(
    table: Mapping[str, Any], where: str, errors: list[str] | None = None
) -> NotifierConfig | None:
    """Validate one notifier table by its ``kind``; errors are collected or raised."""
    sink: list[str] = [] if errors is None else errors
    kind = table.get("kind")
    result: NotifierConfig | None = None
    if kind is None:
        sink.append(f"{where}: 'kind' is required; one of {', '.join(sorted(NOTIFIERS))}")
    elif kind not in NOTIFIERS:
        sink.append(
            f"{where}: kind: unknown notifier kind {kind!r}; one of {', '.join(sorted(NOTIFIERS))}"
        )
    else:
        model = _validate(NOTIFIERS[kind].config_model, table, where, sink)
        result = model if isinstance(model, NotifierConfig) else None
    if errors is None and sink:
        raise ConfigError(sink)
    return result


def watcher_config(
    kind: str, table: Mapping[str, Any], where: str, errors: list[str] | None = None
) -> WatcherConfig | None:
    """Validate one watcher table of a known kind; errors are collected or raised."""
    sink: list[str] = [] if errors is None else errors
    model = _validate(WATCHERS[kind].config_model, table, where, sink)
    if errors is None and sink:
        raise ConfigError(sink)
    return model.for_kind(kind) if isinstance(model, WatcherConfig) else None


def resolve_paths(model: BaseModel, base: Path) -> None:
    """Make the model's relative Path fields relative to ``base`` (the config file's folder)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(model, name, base / value)
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(model, name, [v if v.is_absolute() else base / v for v in value])


def _validate(
    model: type[BaseModel], table: Mapping[str, Any], where: str, errors: list[str]
) -> BaseModel | None:
    try:
        return model.model_validate(dict(table))
    except ValidationError as exc:
        for err in exc.errors():
            errors.append(f"{where}: {_describe(err)}")
    except ConfigError as exc:
        errors.extend(f"{where}: {e}" for e in exc.errors)
    return None


def _describe(err: Mapping[str, Any]) -> str:
    """``key: what was wrong (got value)`` from one pydantic error, secrets withheld."""
    loc = ".".join(str(p) for p in err.get("loc", ()))
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"{loc}: unknown key"
    if err.get("type") == "missing":
        return f"{loc}: required key is missing"
    value = err.get("input")
    secret = any(word in loc.lower() for word in _SECRET_WORDS)
    if not secret and isinstance(value, str | int | float | bool) and repr(value) not in message:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        message = f"{message} (got {shown})"
    return f"{loc}: {message}" if loc else message


def _label(table: Any) -> str:
    if isinstance(table, dict) and isinstance(table.get("name"), str):
        return f" (name {table['name']!r})"
    if isinstance(table, dict) and isinstance(table.get("kind"), str):
        return f" (kind {table['kind']!r})"
    return ""


def _tables(value: Any, where: str, errors: list[str]) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        errors.append(f"{where}: must be an array of tables, written [[...]]")
        return []
    return list(enumerate(value))


def _check_unique(source: str, what: str, names: list[str], errors: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            errors.append(f"{source}: {what} name {name!r} is used twice; names must be unique")
        seen.add(name)


def _where(path: list[str]) -> str:
    """``[[notify]] #2: to.#1`` from the path of keys down to a value."""
    if len(path) >= 2 and path[1].startswith("#"):
        rest = ".".join(path[2:])
        return f"[[{path[0]}]] {path[1]}" + (f": {rest}" if rest else "")
    if path:
        return f"[{path[0]}]" + (f": {'.'.join(path[1:])}" if len(path) > 1 else "")
    return "(top)"


def _interpolate(value: Any, source: str, path: list[str], errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    if isinstance(value, dict):
        return {k: _interpolate(v, source, [*path, str(k)], errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, source, [*path, f"#{i + 1}"], errors) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is None:
            if default is not None:
                return default
            errors.append(
                f"{source}: {_where(path)}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )
            return ""
        return found

    return _ENV.sub(substitute, value)
