"""Evolution API specifics of the evolution-api profile: its file naming (fixFileName) and how it reads its
environment to choose where auth state lives (defineAuthState in whatsapp.baileys.service.ts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from statekit.audit.entities import Server
from statekit.errors import ConfigError, UsageError

DEFAULT_PREFIX = "evolution-cache"  # env.config.ts: CACHE_REDIS_PREFIX_KEY || 'evolution-cache'
DEFAULT_CLIENT_NAME = "evolution"  # env.config.ts: DATABASE_CONNECTION_CLIENT_NAME || 'evolution'


def fix_file_name(key: str) -> str:
    """Evolution's fixFileName: `/` becomes `__`, then `:` becomes `-` (idempotent)."""
    return key.replace("/", "__").replace(":", "-")


def _fix_file_names(keys: list[str]) -> list[str]:
    """fix_file_name over a whole list: the names joined by NUL, replaced and split again (a list where a
    name holds a NUL itself takes the per-name path)."""
    joined = "\0".join(keys)
    if not keys or joined.count("\0") != len(keys) - 1:
        return [fix_file_name(k) for k in keys]
    return joined.replace("/", "__").replace(":", "-").split("\0")


fix_file_name.many = _fix_file_names  # type: ignore[attr-defined]


def unfix_file_name(name: str) -> str:
    """Best-effort inverse of fix_file_name for keys created from files: `--` was `::` (sender keys), `__`
    was `/` (base64 key ids). A single `-` stays a `-` (Baileys key names use it far more than `:`)."""
    return name.replace("--", "::").replace("__", "/")


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file as Evolution's dotenv reads them (comments, blank lines and `export `
    ignored, matching quotes removed, ` #` starts a comment after an unquoted value)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text .env file") from None
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"`":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].strip()
        env[key.strip()] = value
    return env


def _on(env: Mapping[str, str], key: str) -> bool:
    # env.config.ts compares with === 'true': "1", "yes" or "TRUE" are false to Evolution.
    return env.get(key) == "true"


def mode_of_env(env: Mapping[str, str]) -> str:
    """The auth-state mode a server with this environment runs in (defineAuthState's order: provider,
    then Redis with SAVE_INSTANCES, then the database with Redis or files for the keys)."""
    if _on(env, "PROVIDER_ENABLED"):
        return "provider"
    redis_on = _on(env, "CACHE_REDIS_ENABLED")
    if redis_on and _on(env, "CACHE_REDIS_SAVE_INSTANCES"):
        return "redis"
    if _on(env, "DATABASE_SAVE_DATA_INSTANCE"):
        return "cache" if redis_on else "files"
    return "none"


def prefix_of_env(env: Mapping[str, str]) -> str:
    """CACHE_REDIS_PREFIX_KEY with Evolution's default."""
    return env.get("CACHE_REDIS_PREFIX_KEY") or DEFAULT_PREFIX


def client_name_of_env(env: Mapping[str, str]) -> str:
    """DATABASE_CONNECTION_CLIENT_NAME with Evolution's default."""
    return env.get("DATABASE_CONNECTION_CLIENT_NAME") or DEFAULT_CLIENT_NAME


def server_from_env(path: str) -> Server:
    """The server an Evolution .env describes: its client name, mode and Redis prefix."""
    env = read_env_file(path)
    mode = mode_of_env(env)
    if mode == "none":
        raise ConfigError(
            f"{path}: neither CACHE_REDIS_SAVE_INSTANCES nor DATABASE_SAVE_DATA_INSTANCE is 'true': this Evolution "
            "server keeps no auth state anywhere (every restart asks for a QR code)"
        )
    return Server(client_name_of_env(env), mode, f"env_file {path}", prefix_of_env(env))
