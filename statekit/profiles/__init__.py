"""Built-in profiles: entity models for known applications, as data (TOML) plus small name transforms.

A profile file `<name with - as _>.toml` holds `[profile]`, `[options]` (defaults for `profile_options`),
`[functions]`/`[inverses]` (name transforms as "module:function"), `[entity.NAME]` tables and `[[check]]`
rules. Adding a profile is adding a file here; the engines never change.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from statekit.audit.entities import Model, Modes, Server, build_model
from statekit.audit.templates import NameTransform
from statekit.config import Config
from statekit.errors import ConfigError


def _profile_files() -> dict[str, Traversable]:
    """Every built-in profile file by profile name: `<name>.toml` in this package or in one of its
    sub-packages (an application's profile sits beside its code, e.g. `evolution/evolution_api.toml`)."""
    found: dict[str, Traversable] = {}
    top = resources.files(__name__)
    for folder in [top, *(d for d in top.iterdir() if d.is_dir() and d.joinpath("__init__.py").is_file())]:
        for item in folder.iterdir():
            if item.name.endswith(".toml") and item.is_file():
                found[item.name[: -len(".toml")].replace("_", "-")] = item
    return found


def available_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(_profile_files())


def profile_document(name: str) -> dict[str, Any]:
    """The parsed TOML of a built-in profile; ConfigError for an unknown name."""
    item = _profile_files().get(name)
    if item is None:
        raise ConfigError(f"unknown profile {name!r} (available: {', '.join(available_profiles())})")
    return tomllib.loads(item.read_text("utf-8"))


def _function(ref: str, where: str) -> NameTransform:
    module, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ConfigError(f"{where}: cannot load {ref!r}") from None
    if not callable(fn):
        raise ConfigError(f"{where}: {ref!r} is not a function")
    return fn  # type: ignore[no-any-return]


def profile_options(name: str, overrides: Mapping[str, Any]) -> dict[str, str]:
    """The profile's option defaults with the user's `profile_options` applied (`servers`, a table, is read
    by `resolve_modes`)."""
    doc = profile_document(name)
    opts = {k: str(v) for k, v in doc.get("options", {}).items()}
    known = [*opts, "servers"] if "modes" in doc else list(opts)
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"profile_options.{key}: not an option of profile {name} (known: {', '.join(known)})")
        if key != "servers":
            opts[key] = str(value)
    return opts


def resolve_modes(
    name: str, doc: Mapping[str, Any], options: dict[str, str], user: Mapping[str, Any], override: Sequence[str] = ()
) -> Modes:
    """The servers of a profile with modes, from `profile_options` (mode / env_file / client_name, and the
    `servers` table: server name -> mode or { mode, env_file }); `override` holds `--mode MODE` or
    `--mode SERVER=MODE` values, which win. Fills options["prefix"] from the env file unless set."""
    spec = doc["modes"]
    names = [str(m) for m in spec.get("names", [])]
    allowed = [*names, *[str(m) for m in spec.get("not_covered", [])]]
    reader = _function(str(spec["env_reader"]), f"profile {name} modes.env_reader") if spec.get("env_reader") else None

    def check(mode: str, where: str) -> str:
        if mode not in allowed:
            raise ConfigError(f"{where}: {mode!r} is not a mode of profile {name} ({', '.join(allowed)})")
        return mode

    def from_env(path: str, where: str) -> Server:
        if reader is None:
            raise ConfigError(f"{where}: profile {name} cannot read an env file")
        server = reader(path)
        assert isinstance(server, Server)
        check(server.mode, f"{where} {path}")
        return server

    if options.get("env_file"):
        main = from_env(options["env_file"], "profile_options.env_file")
        if "prefix" not in user and main.prefix:
            options["prefix"] = main.prefix
    else:
        origin = "profile_options.mode" if "mode" in user else "the profile's default mode"
        main = Server(options.get("client_name", "evolution"), check(options.get("mode", names[0]),
                      "profile_options.mode"), origin)  # fmt: skip
    main.prefix = options.get("prefix")
    servers: dict[str, Server] = {}
    table = user.get("servers", {})
    if not isinstance(table, Mapping):
        raise ConfigError("profile_options.servers must be a table: server name = mode or { mode, env_file }")
    for server_name, value in table.items():
        where = f"profile_options.servers.{server_name}"
        if isinstance(value, str):
            servers[str(server_name)] = Server(str(server_name), check(value, where), "profile_options.servers")
        elif isinstance(value, Mapping) and value.get("env_file"):
            s = from_env(str(value["env_file"]), f"{where}.env_file")
            s.name = str(server_name)
            servers[s.name] = s
        elif isinstance(value, Mapping) and isinstance(value.get("mode"), str):
            servers[str(server_name)] = Server(str(server_name), check(value["mode"], where), "profile_options.servers")
        else:
            raise ConfigError(f"{where} must be a mode or {{ mode = ..., env_file = ... }}")
    # One prefix for all: the user's, else the main server's .env, else the first server .env's.
    if "prefix" not in user and not options.get("env_file"):
        from_envs = [sv.prefix for sv in servers.values() if sv.prefix]
        if from_envs:
            options["prefix"] = main.prefix = from_envs[0]
    for server_name, sv in servers.items():
        if sv.prefix not in (None, options.get("prefix")):
            raise ConfigError(
                f"profile_options.servers.{server_name}: CACHE_REDIS_PREFIX_KEY {sv.prefix!r} differs from "
                f"{options.get('prefix')!r}; audit servers with different prefixes with one config each"
            )
        sv.prefix = options.get("prefix")
    explicit_main = bool(user.get("mode") or user.get("env_file"))
    default: Server | None = None
    if not servers:
        default = main
    elif explicit_main:
        servers.setdefault(main.name, main)
    for item in override:
        target, _, mode = item.rpartition("=")
        check(mode, f"--mode {item}")
        if target:
            servers[target] = Server(target, mode, "--mode", options.get("prefix"))
            continue
        servers = {k: Server(k, mode, "--mode", v.prefix) for k, v in servers.items()}
        if default is not None:
            default = Server(default.name, mode, "--mode", default.prefix)
    nouns = spec.get("tier_nouns", {})
    return Modes(names, [m for m in allowed if m not in names], str(spec["entity"]), str(spec["column"]), servers,
                 default, [str(x) for x in spec.get("ready_needs", [])], {str(k): str(v) for k, v in nouns.items()},
                 str(spec.get("root_noun", "ids")))  # fmt: skip


def load_model(cfg: Config, profile: str | None = None, modes: Sequence[str] = ()) -> Model:
    """The entity model of a configuration: the profile's entities (if any) plus `[entity.NAME]` tables,
    which override a profile entity of the same name. `modes`: `--mode` values (see resolve_modes)."""
    name = profile or cfg.profile
    tables: dict[str, Any] = {}
    functions: dict[str, NameTransform] = {}
    inverses: dict[str, NameTransform] = {}
    checks: list[Mapping[str, Any]] = []
    constants: dict[str, str] = {str(k): str(v) for k, v in cfg.profile_options.items()}
    source = "config"
    resolved: Modes | None = None
    if modes and not (name and "modes" in profile_document(name)):
        raise ConfigError("--mode needs a profile with modes (e.g. --profile evolution-api)")
    if name:
        doc = profile_document(name)
        constants = profile_options(name, cfg.profile_options)
        if "modes" in doc:
            resolved = resolve_modes(name, doc, constants, cfg.profile_options, modes)
            for key in ("mode", "env_file", "client_name"):
                constants.pop(key, None)
        for key, ref in doc.get("functions", {}).items():
            functions[key] = _function(ref, f"profile {name} functions.{key}")
        for key, ref in doc.get("inverses", {}).items():
            inverses[key] = _function(ref, f"profile {name} inverses.{key}")
        tables.update(doc.get("entity", {}))
        checks = list(doc.get("check", []))
        source = f"profile {name}"
    tables.update(cfg.entities)
    if not tables:
        raise ConfigError(
            'no entity model: set profile = "evolution-api" (or --profile), or define [entity.NAME] tables'
        )
    return build_model(tables, constants=constants, functions=functions, inverses=inverses, checks=checks,
                       source=source, modes=resolved)  # fmt: skip
