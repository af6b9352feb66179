"""`statekit snapshot`: every configured tier into one archive in a repository, ready for one cron line."""

from __future__ import annotations

import time
from typing import Any

import click

from statekit import textfmt
from statekit.cli._app import App, cli, common_options, exit_status_epilog, human_bytes, sigterm_raises
from statekit.cli._keys import recipient_options, resolve_recipients
from statekit.cli._signing import load_sign_key, sign_archive_file, sign_key_options
from statekit.cli.repo_cmd import keep_options, policy_from, render_prune
from statekit.errors import Interrupted, StatekitError, UsageError
from statekit.ops.hooks import DEFAULT_TIMEOUT_S
from statekit.ops.jobs import LockOptions, SnapshotJobOptions, SnapshotJobResult, repository_for, snapshot_job
from statekit.ops.metrics import read_value, snapshot_metrics, write_snapshot_metrics_file
from statekit.snapshot import SnapshotOptions
from statekit.tiers import names as tier_names


@cli.command(epilog=exit_status_epilog())
@click.option("--to", "dest", metavar="DIR|FILE|s3://BUCKET/PREFIX",
              help="Repository (a directory or s3://bucket/prefix) for <name>-<UTC time>.statekit, or an archive "
                   "file name (default [repository] to).")  # fmt: skip
@click.option("--tier", "tiers", multiple=True, type=click.Choice(tier_names()),
              help="Only these tiers (repeatable; default: every configured tier).")  # fmt: skip
@click.option("--db-url", help="Database URL (overrides [db] url).")
@click.option("--redis-url", help="Redis URL (overrides [redis] url).")
@click.option("--files-root", metavar="DIR", help="Key-file root (overrides [files] root).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel PostgreSQL workers (one shared snapshot).")
@click.option("--level", type=click.IntRange(1, 22), help="zstd level (default 1).")
@click.option("--name", help="Archive name prefix (default [archive] name or 'statekit'); also names the lock.")
@click.option("--lock-wait", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Wait this long for another run's lock, then exit 7 (default [repository] lock_wait).")  # fmt: skip
@click.option("--lock-stale-after", type=click.FloatRange(min=1), metavar="SECONDS",
              help="A lock with an older heartbeat is stale (default [repository] lock_stale_after).")  # fmt: skip
@click.option("--pre-hook", metavar="CMD", help="Shell command run before the snapshot; if it fails, no archive.")
@click.option("--post-hook", metavar="CMD",
              help="Shell command run afterwards, also after a failure (STATEKIT_RESULT=success|failure).")  # fmt: skip
@click.option("--hook-timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S, show_default=True,
              metavar="SECONDS", help="Stop a hook that runs longer than this (counts as failed).")  # fmt: skip
@click.option("--prune", "do_prune", is_flag=True,
              help="Then prune this name's archives (keep flags, else [repository] keep_*).")  # fmt: skip
@keep_options
@click.option("--metrics-file", metavar="PATH",
              help="Write Prometheus text metrics here (success and failure), e.g. for node_exporter.")  # fmt: skip
@sign_key_options
@recipient_options
@common_options
def snapshot(
    app: App,
    dest: str | None,
    tiers: tuple[str, ...],
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    jobs: int | None,
    level: int | None,
    name: str | None,
    lock_wait: float | None,
    lock_stale_after: float | None,
    pre_hook: str | None,
    post_hook: str | None,
    hook_timeout: float,
    do_prune: bool,
    metrics_file: str | None,
    recipients: tuple[str, ...],
    recipients_files: tuple[str, ...],
    passphrase_file: str | None,
    ask_passphrase: bool,
    no_encryption: bool,
    sign_key: str | None,
    **keep: Any,
) -> None:
    """Snapshot the database, Redis and key files into one encrypted archive.

    The archive is written 0600 under a temporary name and renamed only when complete and fsynced (on S3:
    a multipart upload that only becomes visible when complete). One run per repository and name holds the
    lock; without a terminal only errors and one summary line are printed."""
    started = time.time()
    metrics_path = metrics_file
    archive_name = name or "statekit"
    result: SnapshotJobResult | None = None
    target: str | None = dest
    try:
        with sigterm_raises(lambda: Interrupted("terminated by SIGTERM")):
            cfg = app.config()
            rcfg = cfg.repository
            metrics_path = metrics_file or rcfg.metrics_file
            archive_name = name or cfg.archive.name
            if db_url:
                cfg.db.url = db_url
            if redis_url:
                cfg.redis.url = redis_url
            if files_root:
                cfg.files.root = files_root
            target = dest or rcfg.to
            if not target:
                raise UsageError("no destination: pass --to DIR|FILE|s3://bucket/prefix or set [repository] to")
            if no_encryption and (recipients or recipients_files or passphrase_file or ask_passphrase):
                raise UsageError("--no-encryption conflicts with --recipient/--recipients-file/--passphrase-file")
            policy = policy_from(keep, rcfg) if do_prune else None
            if not do_prune and any(v is not None for v in keep.values()):
                raise UsageError("--keep-* flags need --prune on snapshot (or use `statekit prune`)")
            keys = (
                []
                if no_encryption
                else resolve_recipients(app, recipients, recipients_files, passphrase_file, ask_passphrase)
            )
            signing_key = load_sign_key(sign_key, cfg.archive.sign_key, warn=app.warn)
            opts = SnapshotOptions(
                tiers=list(tiers) or None,
                jobs=jobs,
                level=level or cfg.archive.compression_level,
                name=archive_name,
                allow_unencrypted=no_encryption,
            )
            job = SnapshotJobOptions(
                to=target,
                lock=LockOptions(
                    wait=rcfg.lock_wait if lock_wait is None else lock_wait,
                    stale_after=rcfg.lock_stale_after if lock_stale_after is None else lock_stale_after,
                ),
                pre_hook=pre_hook or rcfg.pre_hook,
                post_hook=post_hook or rcfg.post_hook,
                hook_timeout=hook_timeout,
                prune=policy,
                sign=(lambda path: sign_archive_file(path, signing_key)) if signing_key is not None else None,
            )
            result = snapshot_job(cfg, keys, opts, job, progress=app.progress(), warn=_quiet_warn(app))
    except BaseException as exc:
        if metrics_path:
            code = (
                exc.exit_code if isinstance(exc, StatekitError) else 130 if isinstance(exc, KeyboardInterrupt) else 19
            )
            _write_snapshot_metrics(app, metrics_path, archive_name, started, result, code, target)
        raise
    if metrics_path:
        _write_snapshot_metrics(app, metrics_path, archive_name, started, result, 0, target)
    doc = result.to_json()
    doc["warnings"] = list(app.warnings)  # engine warnings plus the run's own (stale locks, hooks)
    app.result(doc, _summary(app, result))


def _quiet_warn(app: App) -> Any:
    """Warnings go to stderr on a terminal, with -v or as JSON log lines; a cron run only counts them in the
    summary line (they are all in --json)."""

    def warn(message: str) -> None:
        if app.interactive or app.verbose or app.log_format == "json":
            app.warn(message)
        else:
            app.warnings.append(message)

    return warn


def _summary(app: App, result: SnapshotJobResult) -> list[str]:
    snap = result.snapshot
    counts = ", ".join(f"{t.tier}: " + _counts(t.counts) for t in snap.tiers)
    took = textfmt.duration(snap.finished_at - snap.started_at)
    line = f"snapshot {result.location} ({human_bytes(snap.size)}, {took}) {counts}"
    extras = []
    if result.stale_locks_removed:
        extras.append(f"removed {textfmt.counted(len(result.stale_locks_removed), 'stale lock')}")
    if result.prune is not None:
        removed = sum(len(g.remove) for g in result.prune.groups)
        kept = sum(len(g.keep) for g in result.prune.groups)
        extras.append(f"pruned {removed}, kept {kept}")
    if app.warnings and not (app.interactive or app.verbose):
        extras.append(f"{textfmt.counted(len(app.warnings), 'warning')}, -v shows them")
    if extras:
        line += f" [{'; '.join(extras)}]"
    lines = [line]
    if result.prune is not None and (app.interactive or app.verbose):
        lines += render_prune(result.prune)
    return lines


def _write_snapshot_metrics(
    app: App,
    path: str,
    name: str,
    started: float,
    result: SnapshotJobResult | None,
    exit_code: int,
    target: str | None,
) -> None:
    """The run's metrics file; failing to write it is a warning, never the run's result."""
    finished = time.time()
    snap = result.snapshot if result is not None else None
    if snap is not None:
        last_success: float | None = snap.finished_at
    else:
        last_success = read_value(path, "statekit_snapshot_last_success_timestamp_seconds", {"name": name})
    metrics = snapshot_metrics(
        name=name,
        result="success" if exit_code == 0 else "failure",
        exit_code=exit_code,
        started=started,
        finished=finished,
        size=snap.size if snap else None,
        tiers={t.tier: t.counts for t in snap.tiers} if snap else {},
        last_success=last_success,
    )
    repository = repository_for(target) if target else None
    write_snapshot_metrics_file(path, metrics, name=name, repository=repository, warn=app.warn)


def _counts(counts: dict[str, int]) -> str:
    main = [f"{textfmt.count(v)} {k}" for k, v in counts.items() if k in ("rows", "tables", "keys", "files")]
    return " ".join(main) or "-"
