"""Configuration: statekit.toml, STATEKIT_* environment variables and flags.

Precedence, highest first: command-line flags, STATEKIT_* environment variables, the config file, defaults.
The file is found as --config FILE, else $STATEKIT_CONFIG, else ./statekit.toml (optional).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from statekit.errors import ConfigError

DEFAULT_CONFIG_NAME = "statekit.toml"


@dataclass
class ArchiveConfig:
    """[archive]: how archives are named, compressed and encrypted."""

    name: str = "statekit"
    recipients: list[str] = field(default_factory=list)
    recipients_file: str | None = None
    identity: str | None = None
    compression_level: int = 1
    sign_key: str | None = None
    signers: list[str] = field(default_factory=list)  # statekit-sign1… keys whose signed archives are trusted


@dataclass
class FilesConfig:
    """[files]: one root directory of key files."""

    root: str | None = None
    include: list[str] = field(default_factory=lambda: ["**"])
    exclude: list[str] = field(default_factory=list)
    skip_unreadable: bool = False


@dataclass
class DbConfig:
    """[db]: a SQL database reached through SQLAlchemy."""

    url: str | None = None
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    jobs: int = 1
    copy_format: str = "binary"  # PostgreSQL: "binary" (tables whose types allow it) or "text" COPY


@dataclass
class RedisConfig:
    """[redis]: a Redis server or Cluster."""

    url: str | None = None
    dbs: list[int] = field(default_factory=list)
    match: list[str] = field(default_factory=lambda: ["*"])
    types: list[str] = field(default_factory=list)
    big_key_elements: int = 10_000
    big_key_bytes: int = 32 * 1024 * 1024
    scan_count: int = 1000
    atomic_pages: bool = False


@dataclass
class RepositoryConfig:
    """[repository]: where archives are kept and how long."""

    to: str | None = None
    lock_wait: float = 0.0
    lock_stale_after: float = 300.0
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    pre_hook: str | None = None
    post_hook: str | None = None
    metrics_file: str | None = None


@dataclass
class Config:
    """The whole configuration; `source` names the file it came from (or None)."""

    source: Path | None = None
    profile: str | None = None
    profile_options: dict[str, Any] = field(default_factory=dict)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    db: DbConfig = field(default_factory=DbConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)


_SECTIONS: dict[str, type[Any]] = {
    "archive": ArchiveConfig,
    "files": FilesConfig,
    "db": DbConfig,
    "redis": RedisConfig,
    "repository": RepositoryConfig,
}

# Environment variables that override a config value: STATEKIT_<SECTION>_<KEY>, plus these short names.
_ENV_ALIASES: dict[str, tuple[str, str]] = {
    "STATEKIT_DB_URL": ("db", "url"),
    "STATEKIT_REDIS_URL": ("redis", "url"),
    "STATEKIT_FILES_ROOT": ("files", "root"),
    "STATEKIT_RECIPIENTS": ("archive", "recipients"),
    "STATEKIT_IDENTITY": ("archive", "identity"),
    "STATEKIT_REPOSITORY": ("repository", "to"),
}


def find_config_file(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """Return the config file to read: --config, else $STATEKIT_CONFIG, else ./statekit.toml if present."""
    env = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not _is_file(path, explicit):
            raise ConfigError(f"config file {explicit}: not found")
        return path
    from_env = env.get("STATEKIT_CONFIG")
    if from_env:
        path = Path(from_env)
        if not _is_file(path, f"{from_env} (from STATEKIT_CONFIG)"):
            raise ConfigError(f"config file {from_env} (from STATEKIT_CONFIG): not found")
        return path
    local = Path(DEFAULT_CONFIG_NAME)
    try:
        return local if local.is_file() else None
    except PermissionError:
        # A working directory this user may not search (cron, sudo -u) cannot hold a config it could read.
        return None


def _is_file(path: Path, shown: str) -> bool:
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(f"config file {shown}: cannot access: {exc.strerror}") from None


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file (if any) and apply STATEKIT_* environment overrides."""
    env = os.environ if environ is None else environ
    path = find_config_file(explicit, env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: TOML syntax error: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    cfg = config_from_mapping(raw, str(path) if path else "<defaults>")
    cfg.source = path
    apply_environment(cfg, env)
    return cfg


def config_from_mapping(raw: Mapping[str, Any], origin: str) -> Config:
    """Validate a parsed TOML document and build a Config; errors name the file and the key."""
    cfg = Config()
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config file {origin}: [{key}] must be a table")
            setattr(cfg, key, _load_section(_SECTIONS[key], value, origin, key))
        elif key == "profile":
            if not isinstance(value, str):
                raise ConfigError(f"config file {origin}: key 'profile' must be a string")
            cfg.profile = value
        elif key == "profile_options":
            if not isinstance(value, dict):
                raise ConfigError(f"config file {origin}: [profile_options] must be a table")
            cfg.profile_options = dict(value)
        elif key == "entity":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"config file {origin}: [entity.NAME] sections must be tables")
            cfg.entities = {name: dict(v) for name, v in value.items()}
        else:
            known = ", ".join(sorted([*_SECTIONS, "profile", "profile_options", "entity"]))
            raise ConfigError(f"config file {origin}: unknown key '{key}' (known: {known})")
    return cfg


def _load_section(cls: type[Any], table: Mapping[str, Any], origin: str, section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(
                f"config file {origin}: unknown key '{section}.{key}' (known: {', '.join(sorted(names))})"
            )
        values[key] = _check_type(value, hints[key], f"{origin}: key '{section}.{key}'")
    return cls(**values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str) and inner is str:
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"config file {where} must be a list of {_type_name(inner)}")
        return [_check_type(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config file {where} must be a table")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config file {where} must be a number, not {type(value).__name__}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config file {where} must be an integer, not {type(value).__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config file {where} must be true or false, not {type(value).__name__}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config file {where} must be a string, not {type(value).__name__}")
        return value
    return value


def apply_environment(cfg: Config, environ: Mapping[str, str]) -> None:
    """Apply STATEKIT_<SECTION>_<KEY> overrides (lists are comma-separated)."""
    overrides: dict[tuple[str, str], tuple[str, str]] = {}
    for var, value in sorted(environ.items()):
        if not var.startswith("STATEKIT_"):
            continue
        if var in _ENV_ALIASES:
            overrides[_ENV_ALIASES[var]] = (var, value)
            continue
        rest = var[len("STATEKIT_") :].lower()
        for section, cls in _SECTIONS.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                # The long name wins over a short alias for the same key.
                if key in {f.name for f in dataclasses.fields(cls)}:
                    overrides[(section, key)] = (var, value)
    if environ.get("STATEKIT_PROFILE"):
        cfg.profile = environ["STATEKIT_PROFILE"]
    for (section, key), (var, text) in overrides.items():
        obj = getattr(cfg, section)
        tp = typing.get_type_hints(type(obj))[key]
        setattr(obj, key, parse_env_value(text, tp, f"environment variable {var} ({section}.{key})"))


def parse_env_value(text: str, tp: Any, where: str) -> Any:
    """Turn an environment string into the type a config key expects."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return parse_env_value(text, args[0], where) if text != "" else None
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [parse_env_value(p.strip(), inner, where) for p in text.split(",") if p.strip()]
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: {text!r} is not true/false")
    return text


def redact_url(url: str | None) -> str | None:
    """Return the URL with any password replaced by '***' (safe to log, print or archive)."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and "@" not in parts.netloc:  # a password may still be in the query
        query = _redact_query(parts.query)
        return url if query == parts.query else urlunsplit(parts._replace(query=query))
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = quote(unquote(user), safe="") if user else ""
    if parts.password is not None:
        userinfo += ":***"
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), parts.fragment))


def _redact_query(query: str) -> str:
    if "password" not in query.lower():
        return query
    out = []
    for item in query.split("&"):
        k, _, _v = item.partition("=")
        out.append(f"{k}=***" if "password" in k.lower() else item)
    return "&".join(out)


STARTER_CONFIG = """\
# statekit configuration. Precedence: command-line flags > STATEKIT_* environment > this file > defaults.
# Every key can also be set as STATEKIT_<SECTION>_<KEY> (lists comma-separated), e.g. STATEKIT_DB_URL.

# profile = "evolution-api"      # built-in entity model for audit/reconcile

[archive]
name = "statekit"                 # archives are named <name>-<UTC timestamp>.statekit
recipients = []                   # age public keys (age1...); `statekit keygen` makes one
# recipients_file = "recipients.txt"
# identity = "/secure/place/identity.txt"   # needed to read archives, not to write them
compression_level = 1             # zstd level (1-19); 1 is as small as 3 on table data, at half the CPU

[files]
# root = "/evolution/instances"   # one directory of key files; paths are stored relative to it
include = ["**"]
exclude = []

[db]
# password: in the URL, STATEKIT_DB_PASSWORD or ~/.pgpass
# url = "postgresql+psycopg://postgres@127.0.0.1:5432/evolution"
include = ["*"]                   # table globs (schema.table or table)
exclude = []
jobs = 1                          # parallel PostgreSQL workers sharing one snapshot
copy_format = "binary"            # PostgreSQL rows as binary COPY where every column's type allows, or "text"

[redis]
# url = "redis://127.0.0.1:6379/0"   # redis://, rediss://, unix://; password: URL or STATEKIT_REDIS_PASSWORD
dbs = []                          # empty: the URL's database (/N), or every non-empty one
match = ["*"]
big_key_elements = 10000          # keys with more elements are read and restored in chunks
big_key_bytes = 33554432          # and strings longer than this (32 MiB)
scan_count = 1000                 # keys per SCAN page (large string values are fetched in parts)

[repository]
# to = "/var/backups/statekit"    # or s3://bucket/prefix
lock_wait = 0                     # seconds to wait for another run's lock
# keep_daily = 7
# keep_weekly = 4
"""
