"""`statekit restore`: one tier from an archive, planned and confirmed first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from statekit import textfmt
from statekit.cli._app import App, cli, common_options, confirm, exit_status_epilog, sigterm_raises
from statekit.cli._keys import identity_options
from statekit.cli._signing import check_signers, signer_options, trust_options
from statekit.cli.archive_cmd import local_archive, open_verified
from statekit.credentials import undo_recipients
from statekit.errors import TierError, UsageError
from statekit.model import RestoreOptions, RestoreReport
from statekit.restore import plan_restore, restore_tier
from statekit.tiers import TIERS
from statekit.tiers import get as get_tier
from statekit.tiers import names as tier_names


def _db_map(values: tuple[str, ...]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        try:
            src, dst = v.split(":")
            out[int(src)] = int(dst)
        except ValueError:
            raise UsageError(f"--db-map {v!r}: expected SRC:DST, e.g. 0:3") from None
    return out


@cli.command(epilog=exit_status_epilog())
@click.argument("archive", metavar="ARCHIVE")
@click.option("--tier", required=True, type=click.Choice(tier_names()), help="The tier to restore.")
@click.option(
    "--target",
    metavar="DIR",
    help="files: restore into DIR instead of the configured root (an undo archive saved from DIR needs it).",
)
@click.option(
    "--target-url",
    metavar="URL",
    help="db/redis: restore into this server instead of the configured one (an undo archive saved from it needs it).",
)
@click.option("--tables", multiple=True, metavar="GLOB", help="db: only these tables (repeatable).")
@click.option("--mode", type=click.Choice(["replace", "merge", "append"]), default="replace", show_default=True,
              help="db: replace tables, upsert by primary key, or insert only.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True, metavar="N",
              help="db, PostgreSQL, replace: load over N connections into staging tables, swapped in at the "
                   "end.")  # fmt: skip
@click.option("--match", multiple=True, metavar="PATTERN", help="redis: key pattern; files: path glob (repeatable).")
@click.option("--db-map", multiple=True, metavar="SRC:DST", help="redis: restore database SRC into DST.")
@click.option("--conflict", type=click.Choice(["replace", "skip", "fail"]), default="replace", show_default=True,
              help="redis: what to do with keys that already exist.")  # fmt: skip
@click.option("--ttl", type=click.Choice(["absolute", "relative"]), default="absolute", show_default=True,
              help="redis: keep absolute expiry times, or the remaining time as of the snapshot.")  # fmt: skip
@click.option("--flush", is_flag=True, help="redis: empty the target databases first (saved in the undo archive).")
@click.option("--skip-uncarriable", is_flag=True,
              help="redis: restore the other keys when some cannot be loaded by the target (listed).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
@click.option("--no-undo", is_flag=True, help="Do not save what is replaced (for disposable targets).")
@click.option("--undo-dir", metavar="DIR", help="Where the undo archive goes (default: the current directory).")
@identity_options
@signer_options
@trust_options
@common_options
def restore(
    app: App,
    archive: str,
    tier: str,
    target: str | None,
    target_url: str | None,
    tables: tuple[str, ...],
    mode: str,
    jobs: int,
    match: tuple[str, ...],
    db_map: tuple[str, ...],
    conflict: str,
    ttl: str,
    flush: bool,
    skip_uncarriable: bool,
    dry_run: bool,
    yes: bool,
    no_undo: bool,
    undo_dir: str | None,
    identities: tuple[str, ...],
    passphrase_file: str | None,
    signers: tuple[str, ...],
    trust_archive_sql: bool,
) -> None:
    """Restore one tier from an archive: verify it, print the plan, confirm, save an undo archive, apply.

    Nothing is changed before the whole archive has been verified and every record it will apply has been
    checked. Without a terminal, --yes is required. An undo archive is restored into the configured target;
    one saved from another target is refused unless --target/--target-url names a target (the plan says when
    it is not the recorded one) or the archive is signed by a trusted key. Once the undo archive is saved, its
    path and the command that puts the target back are printed; any later failure repeats them. A Redis
    restore that could not write some keys exits 6."""
    url_tiers = " and ".join(t.name for t in TIERS if t.url_target)
    dir_tiers = " and ".join(t.name for t in TIERS if not t.url_target)
    if target and get_tier(tier).url_target:
        raise UsageError(f"--target is for --tier {dir_tiers}; use --target-url for {url_tiers}")
    if target_url and not get_tier(tier).url_target:
        raise UsageError(f"--target-url is for {url_tiers}; use --target DIR for {dir_tiers}")
    if jobs > 1 and (tier != "db" or mode != "replace"):
        raise UsageError("--jobs is for --tier db in --mode replace (PostgreSQL)")
    cfg = app.config()
    # an s3:// archive is fetched to a private 0600 temporary file, removed when the command ends
    path = click.get_current_context().with_resource(local_archive(archive))
    signature = check_signers(path, signers, cfg.archive.signers)
    opened = open_verified(app, path, identities, passphrase_file, full=not get_tier(tier).verifies_while_loading)
    opts = RestoreOptions(
        tier=tier,
        target=target or target_url,
        dry_run=dry_run,
        undo=not no_undo,
        tables=list(tables),
        mode=mode,
        match=list(match),
        db_map=_db_map(db_map),
        conflict=conflict,
        ttl=ttl,
        flush=flush,
        skip_uncarriable=skip_uncarriable,
        trust_archive_sql=trust_archive_sql or signature is not None,
        jobs=jobs,
    )
    if dry_run:
        report = plan_restore(opened, opts, cfg, signed=signature is not None)
        app.result(report.to_json(), render_report(report))
        return

    def ask(plan: RestoreReport) -> bool:
        if not yes and not app.json:
            for line in render_report(plan):
                app.stderr(line)
        where = f"{plan.target} ({plan.target_note})" if plan.target_note else plan.target
        return confirm(app, f"Restore the {tier} tier from {archive} into {where}?", yes)

    def sealed(path: str, command: str) -> None:
        # Said before the first change, so that even a run killed outright leaves the way back on screen.
        if app.log_format == "json" or app.json:
            app.stderr(f"undo archive saved: {path}; to put the target back: {command}")
        elif not app.quiet:
            app.stderr(f"undo archive saved: {path}")
            app.stderr(f"  to put the target back: {command}")

    with sigterm_raises(KeyboardInterrupt):
        report = restore_tier(
            opened,
            opts,
            cfg,
            undo_dir=Path(undo_dir or "."),
            undo_recipients=undo_recipients(opened.identities, []),
            confirm=ask,
            progress=app.progress(),
            warn=app.warn,
            undo_flags=_undo_flags(app, identities, passphrase_file, undo_dir),
            on_undo_sealed=sealed,
            signed=signature is not None,
        )
    failed = report.counts.get("failed", 0)
    if failed:
        # Some keys were not written: the restore is incomplete, whatever else went well.
        if not app.json:
            app.result(report.to_json(), render_report(report))
        hint = ""
        if report.undo_archive:
            hint = f"; the undo archive {report.undo_archive} puts the target back: {report.undo_command}"
        raise TierError(f"{tier} restore incomplete: {failed} item(s) could not be written (listed above){hint}")
    app.result(report.to_json(), render_report(report))


def _undo_flags(app: App, identities: tuple[str, ...], passphrase_file: str | None, undo_dir: str | None) -> list[str]:
    """The options a later `statekit restore UNDO` needs to read the undo archive as this run read its archive."""
    flags: list[str] = []
    if app.config_file:
        flags += ["--config", os.path.abspath(app.config_file)]
    for ident in identities:
        flags += ["-i", os.path.abspath(ident)]
    if passphrase_file:
        flags += ["--passphrase-file", os.path.abspath(passphrase_file)]
    if undo_dir:
        flags += ["--undo-dir", os.path.abspath(undo_dir)]
    return flags


def render_report(report: RestoreReport) -> list[str]:
    """A restore plan or result for a person. Its names, paths, keys and targets come from the archive: every
    line passes textfmt.printable, so none can move the cursor, erase or hide a line of the plan."""
    head = "plan" if report.dry_run else "restored"
    counts = ", ".join(
        f"took {textfmt.duration(v / 1000)}" if k == "duration_ms" else f"{k} {textfmt.count(v)}"
        for k, v in report.counts.items()
    )
    lines = [f"{head} ({report.tier}): {counts or 'nothing to do'}"]
    if report.target:
        lines.append(f"  target: {report.target}" + (f" ({report.target_note})" if report.target_note else ""))
    # changes first: a long plan must not hide them behind the items that stay as they are
    for item in sorted(report.plan, key=lambda i: i.get("action") == "unchanged")[:20]:
        lines.append("  " + _plan_line(item))
    if len(report.plan) > 20:
        lines.append(f"  … and {textfmt.count(len(report.plan) - 20)} more")
    for p in report.problems:
        lines.append(f"  problem: {p}")
    if report.undo_archive:
        lines.append(f"undo archive: {report.undo_archive}")
        if report.undo_command:
            lines.append(f"  to put the target back: {report.undo_command}")
    return [textfmt.printable(line) for line in lines]  # each whole: also shown line by line on stderr


def _plan_line(item: dict[str, Any]) -> str:
    action = str(item.get("action", ""))
    mark = {
        "create": "+",
        "overwrite": "~",
        "replace": "~",
        "merge": "~",
        "append": "+",
        "unchanged": "=",
        "refused": "!",
        "delete": "-",
        "drop": "-",
        "flush": "-",
    }.get(action, "*")
    parts = []
    for key, value in item.items():
        if key == "action" or value is None:  # e.g. archive rows, known only after the pass
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v) or "nothing"
        elif isinstance(value, list):
            names = [str(v.get("key", v)) if isinstance(v, dict) else str(v) for v in value[:3]]
            value = ", ".join(names) + (" …" if len(value) > 3 else "")
            if not names:
                continue
        parts.append(f"{key}: {value}")
    head = f"{mark} {action:<9} " if action else ""
    return head + "  ".join(parts)
