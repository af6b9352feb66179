"""`statekit list`, `statekit prune` and `statekit unlock`: looking after a repository of archives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from statekit import textfmt
from statekit.cli._app import App, cli, common_options, exit_status_epilog, human_bytes
from statekit.config import RepositoryConfig
from statekit.errors import UsageError
from statekit.ops.jobs import LockOptions, PruneReport, prune_repository
from statekit.repo import LocalRepository, open_repository
from statekit.repo.base import ArchiveInfo, Repository
from statekit.repo.lock import list_locks, remove_stale_locks
from statekit.repo.retention import RetentionPolicy

F = TypeVar("F", bound=Callable[..., Any])
_KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def keep_options(func: F) -> F:
    """--keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly N, --keep-within."""
    for rule in reversed(_KEEP_RULES):
        what = "newest archives" if rule == "last" else f"newest archive of each of the last N {rule} periods"
        func = click.option(
            f"--keep-{rule}", f"keep_{rule}", type=click.IntRange(min=0), metavar="N", help=f"Keep the {what}."
        )(func)
    func = click.option(
        "--keep-within",
        metavar="DURATION",
        help="Keep every archive younger than DURATION (e.g. 2d3h; units y m w d h) counted from the newest.",
    )(func)
    return func


def policy_from(kw: dict[str, Any], repo_cfg: RepositoryConfig) -> RetentionPolicy:
    """The retention policy from keep flags; without any flag, the config's keep_* values."""
    given = {rule: kw.pop(f"keep_{rule}", None) for rule in _KEEP_RULES}
    within = kw.pop("keep_within", None)
    if not any(v is not None for v in given.values()) and within is None:
        given = {rule: getattr(repo_cfg, f"keep_{rule}") for rule in _KEEP_RULES}
        within = repo_cfg.keep_within
    return RetentionPolicy(**{k: v or 0 for k, v in given.items()}, within=within)


def _repository(app: App, location: str | None) -> Repository:
    target = location or app.config().repository.to
    if not target:
        raise UsageError("no repository: pass REPO or set [repository] to")
    repo = open_repository(target)
    if isinstance(repo, LocalRepository):
        repo.check()
    return repo


def _tiers_text(info: ArchiveInfo) -> str:
    tiers = (info.sidecar or {}).get("tiers") or {}
    if not tiers:
        return "-" if info.sidecar is None else ""
    parts = []
    for tier, counts in tiers.items():
        shown = [f"{textfmt.count(v)} {k}" for k, v in counts.items() if k in ("rows", "tables", "keys", "files")]
        parts.append(f"{tier}: {' '.join(shown) or '-'}")
    return "; ".join(parts)


@cli.command("list", epilog=exit_status_epilog())
@click.argument("repo", metavar="[REPO]", required=False)
@click.option("--name", help="Only archives with this name prefix.")
@common_options
def list_archives(app: App, repo: str | None, name: str | None) -> None:
    """List the archives in a repository (a directory or s3://bucket/prefix), oldest first.

    Reads only the non-secret sidecars: no identity is needed."""
    repository = _repository(app, repo)
    archives = repository.list_archives(name)
    stale_after = app.config().repository.lock_stale_after
    locks = list_locks(repository)
    doc = {
        "repository": repository.url,
        "archives": [a.to_json() for a in archives],
        "locks": [lk.to_json(stale_after) for lk in locks],
    }
    lines = [f"{'CREATED (UTC)':<21} {'SIZE':>10}  {'ARCHIVE':<44} TIERS"]
    for a in archives:
        created = a.to_json()["created_at"]
        lines.append(f"{created:<21} {human_bytes(a.size):>10}  {a.archive:<44} {_tiers_text(a)}")
    lines.append(
        f"{textfmt.counted(len(archives), 'archive')}, {human_bytes(sum(a.size for a in archives))} in {repository.url}"
    )
    for lk in locks:
        state = lk.stale_reason(stale_after)
        lines.append(f"lock '{lk.name}': {lk.describe()}" + (f" - STALE: {state}" if state else ""))
    app.result(doc, lines)


def render_prune(report: PruneReport) -> list[str]:
    """What prune kept and why, and what it removed."""
    lines = []
    verb = "would remove" if report.dry_run else "removed"
    for g in report.groups:
        lines.append(f"{g.name}: keep {len(g.keep)}, {verb} {len(g.remove)}")
        rows = [(e, "keep", ", ".join(e["reasons"])) for e in g.keep] + [(e, verb, "") for e in g.remove]
        rows.sort(key=lambda r: r[0]["created_at"], reverse=True)
        for entry, action, why in rows:
            lines.append(f"  {action:<12} {entry['archive']:<44} {why}")
    if not report.groups:
        lines.append(f"no archives in {report.repository}")
    return lines


@cli.command(epilog=exit_status_epilog())
@click.argument("repo", metavar="[REPO]", required=False)
@keep_options
@click.option("--name", help="Only archives with this name prefix (default: every name, each judged apart).")
@click.option("--dry-run", is_flag=True, help="Print what would be kept and removed; remove nothing.")
@click.option("--lock-wait", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Wait this long for a running snapshot's lock (default [repository] lock_wait).")  # fmt: skip
@common_options
def prune(app: App, repo: str | None, name: str | None, dry_run: bool, lock_wait: float | None, **keep: Any) -> None:
    """Remove archives that a restic-style retention policy does not keep, with their sidecars and signatures.

    Rules are applied per archive name, newest first; an archive is kept if any rule keeps it, and every
    reason is printed. Time periods are UTC calendar hours, days, ISO weeks, months and years."""
    cfg = app.config().repository
    policy = policy_from(keep, cfg)
    repository = _repository(app, repo)
    report = prune_repository(
        repository,
        policy,
        name=name,
        dry_run=dry_run,
        lock=LockOptions(wait=cfg.lock_wait if lock_wait is None else lock_wait, stale_after=cfg.lock_stale_after),
        warn=app.warn,
    )
    app.result(report.to_json(), render_prune(report))


@cli.command(epilog=exit_status_epilog())
@click.argument("repo", metavar="[REPO]", required=False)
@click.option("--name", help="Only the lock of this archive name (default: every lock in the repository).")
@click.option("--stale-after", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Heartbeat age that makes a lock stale (default [repository] lock_stale_after, 300).")  # fmt: skip
@common_options
def unlock(app: App, repo: str | None, name: str | None, stale_after: float | None) -> None:
    """Remove stale locks (their process is gone or their heartbeat is too old).

    A live lock is never removed: unlock then exits with the lock code (7)."""
    cfg = app.config().repository
    repository = _repository(app, repo)
    removed = remove_stale_locks(repository, name, cfg.lock_stale_after if stale_after is None else stale_after)
    lines = [f"removed stale lock {r['key']}: {r['reason']}" for r in removed] or ["no stale locks"]
    app.result({"repository": repository.url, "removed": removed}, lines)
