"""The redis tier: snapshot keys of a Redis server or Cluster into archive members, and restore them.

Member format: docs/FORMAT.md ("redis members") (records.py); the member decoder: members.py. Wire: resp.py.
Cross-version payloads: portable.py. `snapshot_redis`, `plan_redis_restore` and `restore_redis` are imported
on first use, so a snapshot does not load the restore code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from statekit.model import MemberSink, Progress, RestoreOptions, RestoreReport, TierSummary, UndoSink, Warn
from statekit.tiers.base import Tier, same_server

if TYPE_CHECKING:
    from statekit.archive.reader import Archive
    from statekit.config import Config
    from statekit.tiers.redis.members import RedisDecoder
    from statekit.tiers.redis.restore import plan_redis_restore, restore_redis
    from statekit.tiers.redis.snapshot import snapshot_redis
    from statekit.tiers.rehearsal import RehearsalReport


class RedisTier(Tier):
    """The redis tier's adapter (see statekit.tiers.base.Tier)."""

    name = "redis"
    section = "redis"
    title = "Redis"
    password_per_server = True

    def target(self, cfg: Config) -> str | None:
        return cfg.redis.url

    def describe_target(self, target: str | None) -> dict[str, Any]:
        return {**super().describe_target(target), "dbs": []}

    def undo_target(self, target: dict[str, Any], members: Sequence[str], summary: TierSummary) -> dict[str, Any]:
        from statekit.tiers.redis.records import parse_member_db

        target = dict(target)
        # Its members are named by the target databases they were read from.
        dbs = {parse_member_db(name) for name in members}
        named = summary.details.get("target_dbs", [])
        dbs |= {d for d in named if isinstance(d, int)} if isinstance(named, list) else set()
        target["dbs"] = sorted(d for d in dbs if d is not None)
        # With --flush the undo archive holds the whole databases: it goes back with a flush too.
        target["flush"] = str(summary.details.get("undo_of", "")).endswith("--flush")
        return target

    def undo_options(self, opts: RestoreOptions, recorded: dict[str, Any], same_server: bool) -> RestoreOptions:
        new = replace(opts)
        if opts.target is None or same_server:
            dbs = [d for d in recorded.get("dbs", []) if isinstance(d, int) and not isinstance(d, bool) and d >= 0]
            # Its members already carry the target's database numbers: each goes back where it came from.
            if not opts.db_map:
                new.db_map = {d: d for d in dbs}
            if recorded.get("flush") is True:
                new.flush = True
        return new

    def same_target(self, shown: str, recorded: str) -> bool:
        from statekit.tiers.redis.keyspace import url_db

        return same_server(shown, recorded) and url_db(shown) == url_db(recorded)

    def snapshot(
        self, cfg: Config, writer: MemberSink, *, jobs: int | None, progress: Progress, warn: Warn
    ) -> TierSummary:
        from statekit.tiers.redis.snapshot import snapshot_redis

        return snapshot_redis(cfg.redis, writer, progress=progress, warn=warn)

    def plan_restore(self, archive: Archive, opts: RestoreOptions, cfg: Config) -> RestoreReport:
        from statekit.tiers.redis.restore import plan_redis_restore

        return plan_redis_restore(archive, opts, cfg.redis)

    def restore(
        self,
        archive: Archive,
        opts: RestoreOptions,
        cfg: Config,
        *,
        undo: UndoSink | None,
        progress: Progress,
        warn: Warn,
    ) -> RestoreReport:
        from statekit.tiers.redis.restore import restore_redis

        return restore_redis(archive, opts, cfg.redis, undo=undo, progress=progress, warn=warn)

    def decoder(self) -> RedisDecoder:
        from statekit.tiers.redis.members import RedisDecoder

        return RedisDecoder()

    def rehearse(self, archive: Archive, report: RehearsalReport, *, trusted: bool, warn: Warn) -> None:
        from statekit.tiers.redis.rehearse import rehearse_redis

        rehearse_redis(archive, report, warn=warn)


def __getattr__(name: str) -> Any:
    if name == "snapshot_redis":
        from statekit.tiers.redis.snapshot import snapshot_redis

        return snapshot_redis
    if name in ("plan_redis_restore", "restore_redis"):
        from statekit.tiers.redis import restore

        return getattr(restore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RedisTier", "plan_redis_restore", "restore_redis", "snapshot_redis"]
