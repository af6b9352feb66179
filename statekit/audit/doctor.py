"""`statekit doctor` for Evolution API: read its .env and the live servers, and explain settings that lose
sessions (each warning with the reason and the fix)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from statekit.errors import StatekitError, UsageError


@dataclass
class Diagnosis:
    """One check: ok, warn or skip, with why and what to do."""

    check: str
    status: str
    reason: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        """A JSON-ready description."""
        return {"check": self.check, "status": self.status, "reason": self.reason, "fix": self.fix}


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments, blank lines and `export ` ignored, quotes removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].strip()
        env[key.strip()] = value
    return env


def _flag(env: Mapping[str, str], key: str, default: bool = False) -> bool:
    value = env.get(key)
    return default if value is None else value.strip().lower() in ("true", "1", "yes", "on")


def db_url_from_env(env: Mapping[str, str]) -> str | None:
    """DATABASE_CONNECTION_URI as a SQLAlchemy URL (Prisma's ?schema= parameter dropped)."""
    uri = env.get("DATABASE_CONNECTION_URI")
    if not uri:
        return None
    parts = urlsplit(uri)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def diagnose(env: Mapping[str, str], *, redis_client: Any = None, db_engine: Any = None) -> list[Diagnosis]:
    """Run every check that the .env and the reachable servers allow."""
    out: list[Diagnosis] = []
    prefix = env.get("CACHE_REDIS_PREFIX_KEY", "evolution")
    redis_on = _flag(env, "CACHE_REDIS_ENABLED")
    save_instances = _flag(env, "CACHE_REDIS_SAVE_INSTANCES")
    db_instances = _flag(env, "DATABASE_SAVE_DATA_INSTANCE")
    if redis_on and save_instances and db_instances:
        out.append(Diagnosis(
            "save-instances-twice", "warn",
            "CACHE_REDIS_SAVE_INSTANCES=true with DATABASE_SAVE_DATA_INSTANCE=true: the instance list comes from "
            "the database but creds and keys from Redis, so a Redis that lost or changed them forces a new QR code",
            "set CACHE_REDIS_SAVE_INSTANCES=false (the database is the source of truth) and run "
            "`statekit reconcile --profile evolution-api --from db --to redis`",
        ))  # fmt: skip
    else:
        out.append(Diagnosis("save-instances-twice", "ok", "auth state has one home"))
    if redis_client is not None:
        out.extend(_redis_checks(redis_client, prefix, save_instances))
    else:
        out.append(Diagnosis("redis", "skip", "no Redis to check (give --redis-url or CACHE_REDIS_URI in the .env)"))
    if db_engine is not None:
        out.append(_client_name_check(db_engine, env.get("DATABASE_CONNECTION_CLIENT_NAME", "evolution")))
    else:
        out.append(Diagnosis("client-name", "skip", "no database to check (give --db-url or DATABASE_CONNECTION_URI)"))
    return out


def _redis_checks(client: Any, prefix: str, save_instances: bool) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    ours = next(iter(client.scan_iter(match=f"{prefix}:instance:*", count=1000)), None)
    if ours is None:
        others = {
            k.decode("utf-8", "replace").split(":instance:", 1)[0]
            for _, k in zip(range(1000), client.scan_iter(match="*:instance:*", count=1000))
        }
        if others:
            out.append(Diagnosis(
                "prefix", "warn",
                f"CACHE_REDIS_PREFIX_KEY is {prefix!r} but the instance hashes in Redis use "
                f"{', '.join(sorted(others)[:5])!s}",
                f"set CACHE_REDIS_PREFIX_KEY (and statekit's profile_options.prefix) to {sorted(others)[0]!r}",
            ))  # fmt: skip
        else:
            out.append(Diagnosis("prefix", "ok", f"no {prefix}:instance:* hashes (and no other prefix in use)"))
    else:
        out.append(Diagnosis("prefix", "ok", f"instance hashes found under {prefix}:instance:*"))
    auth_in_redis = ours is not None or save_instances
    try:
        save = client.config_get("save").get("save", "")
        aof = client.config_get("appendonly").get("appendonly", "no")
    except Exception:
        out.append(Diagnosis("persistence", "skip", "CONFIG GET is not allowed on this Redis"))
        return out
    if isinstance(save, bytes):
        save = save.decode()
    if isinstance(aof, bytes):
        aof = aof.decode()
    if auth_in_redis and not str(save).strip() and str(aof) != "yes":
        out.append(Diagnosis(
            "persistence", "warn",
            "Redis holds auth state but has no persistence (save \"\" and appendonly no): a restart loses every "
            "session kept there",
            "enable `appendonly yes` (or RDB save rules) on this Redis, or keep auth state in the database",
        ))  # fmt: skip
    else:
        out.append(Diagnosis("persistence", "ok", f"save {save!r}, appendonly {aof}"))
    return out


def _client_name_check(engine: Any, client_name: str) -> Diagnosis:
    import sqlalchemy as sa

    t = sa.table("Instance", sa.column("clientName"))
    try:
        with engine.connect() as conn:
            names = [r[0] for r in conn.execute(sa.select(t.c.clientName).distinct().limit(50))]
    except Exception as exc:
        raise StatekitError(f'doctor: cannot read "Instance" ({type(exc).__name__})') from None
    if client_name in names:
        return Diagnosis("client-name", "ok", f"Instance rows exist for clientName {client_name!r}")
    shown = ", ".join(repr(n) for n in names[:5]) or "none"
    return Diagnosis(
        "client-name", "warn",
        f"DATABASE_CONNECTION_CLIENT_NAME is {client_name!r} but no Instance row has it (clientNames: {shown}): "
        "Evolution starts with no instances",
        "set DATABASE_CONNECTION_CLIENT_NAME to the clientName of your instances",
    )  # fmt: skip
