"""Built-in profiles: entity models for known applications, as data (TOML) plus small name transforms.

A profile file `<name with - as _>.toml` holds `[profile]`, `[options]` (defaults for `profile_options`),
`[functions]`/`[inverses]` (name transforms as "module:function"), `[entity.NAME]` tables and `[[check]]`
rules. Adding a profile is adding a file here; the engines never change.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from statekit.audit.entities import Model, build_model
from statekit.audit.templates import NameTransform
from statekit.config import Config
from statekit.errors import ConfigError


def available_profiles() -> list[str]:
    """Names of the built-in profiles."""
    names = []
    for item in resources.files(__name__).iterdir():
        if item.name.endswith(".toml"):
            names.append(item.name[: -len(".toml")].replace("_", "-"))
    return sorted(names)


def profile_document(name: str) -> dict[str, Any]:
    """The parsed TOML of a built-in profile; ConfigError for an unknown name."""
    filename = name.replace("-", "_") + ".toml"
    item = resources.files(__name__).joinpath(filename)
    if not item.is_file():
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
    """The profile's option defaults with the user's `profile_options` applied."""
    doc = profile_document(name)
    opts = {k: str(v) for k, v in doc.get("options", {}).items()}
    for key, value in overrides.items():
        if key not in opts:
            raise ConfigError(f"profile_options.{key}: not an option of profile {name} (known: {', '.join(opts)})")
        opts[key] = str(value)
    return opts


def load_model(cfg: Config, profile: str | None = None) -> Model:
    """The entity model of a configuration: the profile's entities (if any) plus `[entity.NAME]` tables,
    which override a profile entity of the same name."""
    name = profile or cfg.profile
    tables: dict[str, Any] = {}
    functions: dict[str, NameTransform] = {}
    inverses: dict[str, NameTransform] = {}
    checks: list[Mapping[str, Any]] = []
    constants: dict[str, str] = {str(k): str(v) for k, v in cfg.profile_options.items()}
    source = "config"
    if name:
        doc = profile_document(name)
        constants = profile_options(name, cfg.profile_options)
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
                       source=source)  # fmt: skip
