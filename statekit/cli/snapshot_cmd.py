"""`statekit snapshot`: every configured tier into one archive."""

from __future__ import annotations

from pathlib import Path

import click

from statekit.cli._app import App, cli, common_options, exit_status_epilog, human_bytes
from statekit.cli._keys import recipient_options, resolve_recipients
from statekit.errors import UsageError
from statekit.snapshot import SnapshotOptions, take_snapshot


@cli.command(epilog=exit_status_epilog())
@click.option(
    "--to", "dest", metavar="DIR|FILE", help="Archive file, or a directory for <name>-<UTC time>.statekit."
)
@click.option("--tier", "tiers", multiple=True, type=click.Choice(["db", "redis", "files"]),
              help="Only these tiers (repeatable; default: every configured tier).")  # fmt: skip
@click.option("--db-url", help="Database URL (overrides [db] url).")
@click.option("--redis-url", help="Redis URL (overrides [redis] url).")
@click.option("--files-root", metavar="DIR", help="Key-file root (overrides [files] root).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel PostgreSQL workers (one shared snapshot).")
@click.option("--level", type=click.IntRange(1, 22), help="zstd level (default 3).")
@click.option("--name", help="Archive name prefix (default [archive] name or 'statekit').")
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
    recipients: tuple[str, ...],
    recipients_files: tuple[str, ...],
    passphrase_file: str | None,
    ask_passphrase: bool,
    no_encryption: bool,
) -> None:
    """Snapshot the database, Redis and key files into one encrypted archive.

    The archive is written 0600 under a temporary name and renamed only when complete and fsynced."""
    cfg = app.config()
    if db_url:
        cfg.db.url = db_url
    if redis_url:
        cfg.redis.url = redis_url
    if files_root:
        cfg.files.root = files_root
    target = dest or cfg.repository.to
    if not target:
        raise UsageError("no destination: pass --to DIR|FILE or set [repository] to")
    if no_encryption and (recipients or recipients_files or passphrase_file or ask_passphrase):
        raise UsageError("--no-encryption conflicts with --recipient/--recipients-file/--passphrase-file")
    keys = (
        []
        if no_encryption
        else resolve_recipients(app, recipients, recipients_files, passphrase_file, ask_passphrase)
    )
    opts = SnapshotOptions(
        tiers=list(tiers) or None,
        jobs=jobs,
        level=level or cfg.archive.compression_level,
        name=name or cfg.archive.name,
        allow_unencrypted=no_encryption,
    )
    result = take_snapshot(cfg, Path(target), keys, opts, progress=app.progress(), warn=app.warn)
    counts = ", ".join(f"{t.tier}: " + _counts(t.counts) for t in result.tiers)
    app.result(
        result.to_json(),
        f"snapshot {result.path} ({human_bytes(result.size)}, {result.finished_at - result.started_at:.1f}s) {counts}",
    )


def _counts(counts: dict[str, int]) -> str:
    main = [f"{v} {k}" for k, v in counts.items() if k in ("rows", "tables", "keys", "files")]
    return " ".join(main) or "-"
