"""`statekit doctor` for Evolution API: read its .env and the live servers, and explain settings that lose
sessions (each warning with the reason and the fix)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from statekit.errors import StatekitError
from statekit.profiles.evolution.profile import client_name_of_env, mode_of_env, prefix_of_env
from statekit.profiles.evolution.profile import read_env_file as read_env_file

LIVE_CREDS = {"redis": "redis", "cache": "db", "files": "db"}
LIVE_KEYS = {"redis": "redis", "cache": "redis", "files": "files"}


@dataclass
class Diagnosis:
    """One check: ok, warn or skip, with why and what to do (`commands`: to run in this order)."""

    check: str
    status: str
    reason: str
    fix: str = ""
    commands: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {"check": self.check, "status": self.status, "reason": self.reason, "fix": self.fix,
                "commands": list(self.commands)}  # fmt: skip


def _flag(env: Mapping[str, str], key: str) -> bool:
    # Evolution compares with === 'true' (env.config.ts).
    return env.get(key) == "true"


def db_url_from_env(env: Mapping[str, str]) -> str | None:
    """DATABASE_CONNECTION_URI as a SQLAlchemy URL (Prisma's ?schema= parameter dropped)."""
    uri = env.get("DATABASE_CONNECTION_URI")
    if not uri:
        return None
    parts = urlsplit(uri)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def diagnose(
    env: Mapping[str, str], *, redis_client: Any = None, db_engine: Any = None, files_root: str | None = None
) -> list[Diagnosis]:
    """Run every check that the .env and the reachable servers allow."""
    out: list[Diagnosis] = []
    prefix = prefix_of_env(env)
    client_name = client_name_of_env(env)
    mode = mode_of_env(env)
    save_instances = _flag(env, "CACHE_REDIS_SAVE_INSTANCES")
    if mode == "redis" and _flag(env, "DATABASE_SAVE_DATA_INSTANCE"):
        out.append(Diagnosis(
            "save-instances-twice", "warn",
            "CACHE_REDIS_SAVE_INSTANCES=true with DATABASE_SAVE_DATA_INSTANCE=true: the instance list comes from "
            "the database but creds and keys only from Redis, so a Redis that lost or changed them forces a new "
            "QR code",
            "set CACHE_REDIS_SAVE_INSTANCES=false (the database holds the creds), after copying every instance's "
            "creds into \"Session\": run doctor again with the new .env for the exact commands",
        ))  # fmt: skip
    elif mode == "none":
        out.append(Diagnosis(
            "mode", "warn",
            "neither CACHE_REDIS_SAVE_INSTANCES nor DATABASE_SAVE_DATA_INSTANCE is 'true': Evolution keeps no auth "
            "state, every restart asks for a QR code",
            "set DATABASE_SAVE_DATA_INSTANCE=true",
        ))  # fmt: skip
    else:
        out.append(Diagnosis("save-instances-twice", "ok", f"{mode} mode: auth state has one home"))
    if redis_client is not None:
        out.extend(_redis_checks(redis_client, prefix, save_instances))
    else:
        out.append(Diagnosis("redis", "skip", "no Redis to check (give --redis-url or CACHE_REDIS_URI in the .env)"))
    if db_engine is not None:
        out.append(_client_name_check(db_engine, client_name))
        if mode in LIVE_CREDS:
            out.append(data_mode_check(db_engine, redis_client, files_root, client_name, prefix, mode))
    else:
        out.append(Diagnosis("client-name", "skip", "no database to check (give --db-url or DATABASE_CONNECTION_URI)"))
    return out


@dataclass
class _Where:
    """Where one instance's auth state is found."""

    creds: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)


def data_mode_check(
    engine: Any, client: Any, files_root: str | None, client_name: str, prefix: str, mode: str
) -> Diagnosis:
    """Does the data of this server's paired instances sit where `mode` reads it? If not, the mode the data
    was written in and the exact statekit commands that move it, to run before Evolution restarts."""
    import sqlalchemy as sa

    inst = sa.table("Instance", sa.column("id"), sa.column("connectionStatus"), sa.column("clientName"))
    sess = sa.table("Session", sa.column("sessionId"), sa.column("creds"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(inst.c.id, inst.c.connectionStatus).where(inst.c.clientName == client_name))
            status = {str(r[0]): str(r[1]) for r in rows}
            ids = list(status)
            with_creds = {str(r[0]) for r in conn.execute(sa.select(sess.c.sessionId).where(sess.c.creds.is_not(None)))}
    except Exception as exc:
        raise StatekitError(f'doctor: cannot read "Instance"/"Session" ({type(exc).__name__})') from None
    where = {i: _Where() for i in ids}
    for i in ids:
        if i in with_creds:
            where[i].creds.add("db")
    if client is not None:
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            pipe = client.pipeline(transaction=False)
            for i in part:
                pipe.hexists(f"{prefix}:instance:{i}", "creds")
                pipe.hlen(f"{prefix}:instance:{i}")
            replies = pipe.execute()
            for j, i in enumerate(part):
                has_creds, n = bool(replies[2 * j]), int(replies[2 * j + 1])
                if has_creds:
                    where[i].creds.add("redis")
                if n - has_creds > 0:
                    where[i].keys.add("redis")
    if files_root:
        for i in ids:
            try:
                if any(name.endswith(".json") for name in os.listdir(os.path.join(files_root, i))):
                    where[i].keys.add("files")
            except OSError:
                pass
    # Paired: creds somewhere, or open. A logged-out instance (cache mode keeps its keys in the hash) is not.
    paired = [w for i, w in where.items() if w.creds or status.get(i) == "open"]
    if not paired:
        return Diagnosis("mode-vs-data", "ok", f"no auth state yet for clientName {client_name!r}")
    lost = [w for w in paired if LIVE_CREDS[mode] not in w.creds or LIVE_KEYS[mode] not in w.keys]
    if not lost:
        return Diagnosis(
            "mode-vs-data", "ok", f"{len(paired)} instances have creds and keys where {mode} mode reads them"
        )
    written = _written_mode(lost, client is not None, bool(files_root))
    if written is None:
        return Diagnosis(
            "mode-vs-data", "warn",
            f"{len(lost)} of {len(paired)} instances lack creds or keys where {mode} mode reads them, and no other "
            "mode's places hold them either: they will ask for a new QR code",
            "restore them from a snapshot (statekit restore ARCHIVE), or pair them again",
        )  # fmt: skip
    commands = migration_commands(client_name, written, mode)
    return Diagnosis(
        "mode-vs-data", "warn",
        f"the .env says {mode} mode, but {len(lost)} of {len(paired)} instances of clientName {client_name!r} have "
        f"their auth state where {written} mode keeps it: after a restart they would ask for a new QR code",
        f"before restarting Evolution with this .env, run in order (Evolution stopped, or still in {written} mode):",
        commands,
    )  # fmt: skip


def _written_mode(lost: list[_Where], have_redis: bool, have_files: bool) -> str | None:
    """The mode whose places hold the auth state of (most of) these instances."""
    votes: dict[str, int] = {}
    for w in lost:
        for m in ("redis", "cache", "files"):
            if LIVE_CREDS[m] in w.creds and LIVE_KEYS[m] in w.keys:
                votes[m] = votes.get(m, 0) + 1
                break
    return max(votes, key=lambda m: votes[m]) if votes else None


def migration_commands(server: str, old: str, new: str) -> list[str]:
    """The statekit commands that move a server's auth state from `old` mode's places to `new` mode's, in
    order, each copying FROM the live copy of the old mode (declared with --mode), then the check."""
    out: list[str] = []
    declare = f"--mode {server}={old}"
    if LIVE_CREDS[old] != LIVE_CREDS[new]:
        out.append(f"statekit reconcile --profile evolution-api {declare} --from {LIVE_CREDS[old]} "
                   f"--to {LIVE_CREDS[new]} --entity creds --yes -r AGE1…")  # fmt: skip
    if LIVE_KEYS[old] != LIVE_KEYS[new]:
        out.append(f"statekit reconcile --profile evolution-api {declare} --from {LIVE_KEYS[old]} "
                   f"--to {LIVE_KEYS[new]} --entity keys --yes -r AGE1…")  # fmt: skip
    out.append(f"statekit audit --profile evolution-api --mode {server}={new}   # must be clean, or only stale copies")
    out.append(f"then restart Evolution with the new .env (and set statekit's profile_options to mode {new!r})")
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
