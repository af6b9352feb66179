"""`statekit audit`, `diff`, `reconcile`, `apply` and `doctor`: the entity-model commands."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from statekit.cli._app import App, cli, common_options, confirm, exit_status_epilog
from statekit.cli._keys import identity_options, recipient_options, resolve_recipients
from statekit.errors import Refused, TierUnavailable, UsageError
from statekit.tiers import names as tier_names

F = TypeVar("F", bound=Callable[..., Any])

_DRIFT = [(1, "drift found (audit/diff), or warnings (doctor)")]
_MAX_CHANGE_RATIO = 0.5  # the default of reconcile's and apply's --max-change-ratio
_MAX_CHANGE_HELP = "Refuse a plan overwriting or deleting more than this share of one entity's records in the target."


def _location_options(func: F) -> F:
    for deco in reversed(
        [
            click.option("--profile", metavar="NAME", help="Built-in entity model (e.g. evolution-api)."),
            click.option(
                "--mode",
                "modes",
                multiple=True,
                metavar="[SERVER=]MODE",
                help="Evolution: treat every server (or SERVER, an Instance clientName) as running in MODE "
                "(redis, cache, files), overriding profile_options. Repeatable.",
            ),
            click.option("--db-url", metavar="URL", help="Database URL (default: [db] url)."),
            click.option("--redis-url", metavar="URL", help="Redis URL (default: [redis] url)."),
            click.option("--files-root", metavar="DIR", help="Key files root (default: [files] root)."),
        ]
    ):
        func = deco(func)
    return func


def _model_and_locations(
    app: App,
    profile: str | None,
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    modes: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    from dataclasses import replace

    from statekit.audit.engine import Locations
    from statekit.profiles import load_model

    cfg = app.config()
    model = load_model(cfg, profile, modes)
    given = replace(cfg, db=replace(cfg.db, url=db_url or cfg.db.url),
                    redis=replace(cfg.redis, url=redis_url or cfg.redis.url),
                    files=replace(cfg.files, root=files_root or cfg.files.root))  # fmt: skip
    return model, Locations.from_config(given)


def _carry_over(result: Any, given: Any) -> None:
    """Say what the printed repair commands leave out (a password given in a URL)."""
    if any(f.repair for f in result.findings):
        result.notes.extend(given.notes())


def _finish_audit(app: App, result: Any, jsonl: bool, examples: int, title: str, extra: dict[str, Any]) -> None:
    from statekit.audit.report import audit_document, audit_jsonl, audit_lines

    if jsonl:
        for line in audit_jsonl(result, extra=extra):
            click.echo(line)
    else:
        app.result(audit_document(result, extra=extra), audit_lines(result, examples=examples, title=title))
    if result.drift:
        raise SystemExit(1)  # run() ignores click.Exit codes in non-standalone mode


@cli.command(epilog=exit_status_epilog(_DRIFT))
@_location_options
@click.option("--entity", "entities", multiple=True, metavar="NAME", help="Only this entity (repeatable).")
@click.option("--against", metavar="ARCHIVE", help="Compare the live tiers with this snapshot instead.")
@click.option("--keys-only", is_flag=True, help="Compare which records exist, not their values (faster).")
@click.option("--recheck-rounds", type=click.IntRange(0, 20), default=1, show_default=True,
              help="Re-read suspects this many times; a finding gone on re-check is `transient`.")  # fmt: skip
@click.option("--recheck-delay", type=click.FloatRange(0, 60), default=0.5, show_default=True, metavar="SECONDS",
              help="Wait this long before each re-check round.")  # fmt: skip
@click.option("--jsonl", is_flag=True, help="One JSON line per finding, then a summary line.")
@click.option("--examples", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Examples shown per entity and class.")  # fmt: skip
@click.option("--metrics-file", metavar="PATH",
              help="Write Prometheus metrics: findings, entity counts, readiness, latency, hit ratio.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(0, 64), default=0, show_default=True, metavar="N",
              help="Worker processes comparing the ids (0: per usable CPU, at most 4). Small audits: one.")  # fmt: skip
@identity_options
@common_options
def audit(
    app: App,
    profile: str | None,
    modes: tuple[str, ...],
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    entities: tuple[str, ...],
    against: str | None,
    keys_only: bool,
    recheck_rounds: int,
    recheck_delay: float,
    jsonl: bool,
    examples: int,
    metrics_file: str | None,
    jobs: int,
    identities: tuple[str, ...],
    passphrase_file: str | None,
) -> None:
    """Compare the tiers entity by entity: live tiers against each other, or (--against) against a snapshot.

    Findings: missing, orphan, mismatch (with the differing JSON paths), unparseable, transient. Exit status 1
    when there is drift (transient findings are not drift)."""
    from statekit.audit.engine import audit_live
    from statekit.audit.findings import AuditOptions
    from statekit.audit.repairs import Given, SnapshotRepairs

    given = Given(app.config_file, profile, modes, db_url, redis_url, files_root, identities, passphrase_file)
    model, where = _model_and_locations(app, profile, db_url, redis_url, files_root, modes)
    model = model.select(list(entities))
    opts = AuditOptions(
        keys_only=keys_only,
        recheck_rounds=recheck_rounds,
        recheck_delay=recheck_delay,
        tally=bool(metrics_file),
        jobs=jobs,
        given=given,
    )
    if against:
        from statekit.audit.sources.archive import audit_against
        from statekit.cli.archive_cmd import open_verified

        archive = open_verified(app, against, identities, passphrase_file)
        result = audit_against(model, where, archive, opts, warn=app.warn, repairs=SnapshotRepairs(against, given))
        _carry_over(result, given)
        _finish_audit(app, result, jsonl, examples, f"audit against {os.path.basename(against)}",
                      {"against": os.path.basename(against), "model": model.source})  # fmt: skip
        return
    result = audit_live(model, where, opts, progress=app.progress(), warn=app.warn)
    _carry_over(result, given)
    if metrics_file:
        from statekit.profiles.evolution.health import write_audit_metrics

        write_audit_metrics(metrics_file, result, where, evolution=model.source == "profile evolution-api")
    _finish_audit(app, result, jsonl, examples, "audit", {"model": model.source})


@cli.command(epilog=exit_status_epilog(_DRIFT))
@click.argument("archive_a", metavar="A")
@click.argument("archive_b", metavar="B")
@click.option("--profile", metavar="NAME", help="Built-in entity model (e.g. evolution-api).")
@click.option("--entity", "entities", multiple=True, metavar="NAME", help="Only this entity (repeatable).")
@click.option("--raw", is_flag=True, help="Ignore the entity model: compare files, keys and rows as stored.")
@click.option("--keys-only", is_flag=True, help="Compare which records exist, not their values.")
@click.option("--jsonl", is_flag=True, help="One JSON line per finding, then a summary line.")
@click.option("--examples", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Examples shown per entity and class.")  # fmt: skip
@identity_options
@common_options
def diff(
    app: App,
    archive_a: str,
    archive_b: str,
    profile: str | None,
    entities: tuple[str, ...],
    raw: bool,
    keys_only: bool,
    jsonl: bool,
    examples: int,
    identities: tuple[str, ...],
    passphrase_file: str | None,
) -> None:
    """Compare two archives (B against A, tier by tier): entity by entity with an entity model, else files,
    Redis keys (hashes field by field) and rows (by primary key) as stored. Exit status 1 when they differ."""
    from statekit.audit.engine import Locations
    from statekit.audit.findings import AuditOptions
    from statekit.audit.raw_diff import raw_diff
    from statekit.audit.repairs import Given, SnapshotRepairs
    from statekit.audit.sources.archive import diff_archives
    from statekit.cli.archive_cmd import open_verified
    from statekit.profiles import load_model

    cfg = app.config()
    modelled = bool(profile or cfg.profile or cfg.entities) and not raw
    a = open_verified(app, archive_a, identities, passphrase_file)
    b = open_verified(app, archive_b, identities, passphrase_file)
    where = Locations.from_config(cfg)
    repairs = SnapshotRepairs(archive_a, Given(app.config_file, identities=identities,
                                               passphrase_file=passphrase_file), diff=True)  # fmt: skip
    if modelled:
        model = load_model(cfg, profile).select(list(entities))
        result = diff_archives(model, a, b, AuditOptions(keys_only=keys_only, recheck_rounds=0), where, repairs)
    else:
        if entities:
            raise UsageError("--entity needs an entity model (--profile or [entity.NAME] in the config)")
        result = raw_diff(a, b, where, repairs)
    names = f"{os.path.basename(archive_a)} → {os.path.basename(archive_b)}"
    _finish_audit(app, result, jsonl, examples, f"diff {names}", {"a": archive_a, "b": archive_b})


def _undo_options(func: F) -> F:
    for deco in reversed(
        [
            click.option("-y", "--yes", is_flag=True, help="Apply without a prompt (needed without a terminal)."),
            click.option("--no-undo", is_flag=True, help="Do not save what is overwritten (disposable targets)."),
            click.option("--undo-dir", metavar="DIR", help="Where the undo archive goes (default: current dir)."),
        ]
    ):
        func = deco(func)
    return recipient_options(func)


def _apply(app: App, plan: Any, where: Any, yes: bool, no_undo: bool, undo_dir: str | None,
           keys: tuple[Any, ...], model: Any = None) -> None:  # fmt: skip
    from statekit.audit.engine import reconcile

    if not plan.ops:
        return
    if not confirm(app, f"Apply {len(plan.ops)} changes to the {plan.target} tier?", yes):
        raise Refused("reconcile not confirmed (pass --yes to apply without a prompt)")
    recipients, no_encryption = [], False
    if not no_undo:
        recipients_, recipients_files, passphrase_file, ask_passphrase, no_encryption = keys
        recipients = resolve_recipients(app, recipients_, recipients_files, passphrase_file, ask_passphrase)
        if not recipients and not no_encryption:
            raise Refused("no key to encrypt the undo archive with (give -r AGE1…, configure [archive] "
                          "recipients, or pass --no-encryption / --no-undo)")  # fmt: skip
    result = reconcile(plan, where, undo_dir=None if no_undo else Path(undo_dir or "."), undo_recipients=recipients,
                       allow_unencrypted_undo=no_encryption, progress=app.progress(), model=model)  # fmt: skip
    c = result.counts
    lines = [f"applied: +{c['create']} created  ~{c['update']} updated  -{c['delete']} deleted"]
    lines += [f"  conflict: {text}" for text in result.conflicts[:20]]
    if result.undo_archive:
        lines.append(f"undo archive: {result.undo_archive} (statekit restore it --tier {plan.target} to undo)")
    app.result({"plan": plan.to_json(), **result.to_json()}, lines)
    if result.conflicts:
        raise Refused(f"{len(result.conflicts)} operations skipped: their target changed since the plan")


@cli.command(epilog=exit_status_epilog())
@_location_options
@click.option("--from", "source", required=True, type=click.Choice(tier_names()),
              help="The tier to copy from.")  # fmt: skip
@click.option("--to", "target", required=True, type=click.Choice(tier_names()),
              help="The tier to rebuild (db: only entities stored as one row's column, e.g. creds).")  # fmt: skip
@click.option("--entity", "entities", multiple=True, metavar="NAME", help="Only this entity (repeatable).")
@click.option("--prune-orphans", is_flag=True, help="Also delete target records the source does not have.")
@click.option("--max-change-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help=_MAX_CHANGE_HELP)  # fmt: skip
@click.option("--force", is_flag=True, help="Ignore --max-change-ratio.")
@click.option("--plan-out", metavar="FILE", help="Save the plan (digests only) for `statekit apply` and stop.")
@click.option("--examples", type=click.IntRange(0, 1000), default=5, show_default=True, help="Examples per kind.")
@_undo_options
@common_options
def reconcile(
    app: App,
    profile: str | None,
    modes: tuple[str, ...],
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    source: str,
    target: str,
    entities: tuple[str, ...],
    prune_orphans: bool,
    max_change_ratio: float,
    force: bool,
    plan_out: str | None,
    examples: int,
    yes: bool,
    no_undo: bool,
    undo_dir: str | None,
    recipients: tuple[str, ...],
    recipients_files: tuple[str, ...],
    passphrase_file: str | None,
    ask_passphrase: bool,
    no_encryption: bool,
) -> None:
    """Rebuild one tier from another through the entity model: plan (+ create ~ update - delete), then apply
    with --yes, saving an undo archive first. The model's authority tier is never written."""
    from statekit.audit.engine import ReconcileOptions, guard, plan_reconcile
    from statekit.audit.plan import plan_lines
    from statekit.audit.repairs import Given

    model, where = _model_and_locations(app, profile, db_url, redis_url, files_root, modes)
    # the commands printed for skipped instances carry this command line's model and places
    given = Given(app.config_file, profile, modes, db_url, redis_url, files_root)
    opts = ReconcileOptions(source, target, list(entities), prune_orphans, max_change_ratio, force, given=given)
    plan = plan_reconcile(model, where, opts)
    lines = plan_lines(plan, examples) + [f"  note: {n}" for n in given.notes() if plan.skipped_items]
    if plan_out or not yes or not plan.ops:
        app.result({"plan": plan.to_json()}, lines)
    else:
        for line in lines:
            app.info(line)
    guard(plan, max_change_ratio, force)
    if plan_out:
        doc = {**plan.to_json(), "target_location": where.shown(target), "modes": list(modes)}
        fd = os.open(plan_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        undo = (recipients, recipients_files, passphrase_file, ask_passphrase, no_encryption, no_undo, undo_dir)
        app.info(_apply_hint(plan_out, plan, given, prune_orphans, max_change_ratio, undo))
        return
    _apply(app, plan, where, yes, no_undo, undo_dir,
           (recipients, recipients_files, passphrase_file, ask_passphrase, no_encryption), model)  # fmt: skip


def _apply_hint(plan_out: str, plan: Any, given: Any, prune_orphans: bool, max_change_ratio: float,
                undo: tuple[Any, ...]) -> str:  # fmt: skip
    """The `statekit apply` command that applies this saved plan as it was made: the same model and places,
    guards and undo keys, --yes (the plan was just shown), and --force only when the plan needed it, saying so."""
    from statekit.audit.repairs import shell

    recipients, recipients_files, passphrase_file, ask_passphrase, no_encryption, no_undo, undo_dir = undo
    words = ["statekit", "apply", os.path.abspath(plan_out), *given.model_args()]
    if prune_orphans:
        words.append("--prune-orphans")
    if max_change_ratio != _MAX_CHANGE_RATIO:
        words += ["--max-change-ratio", f"{max_change_ratio:g}"]
    why = []
    share, entity, _changed, _there = plan.largest_change()
    if plan.ops and share > max_change_ratio:  # saved with --force: apply needs it too
        words.append("--force")
        why.append(f"it overwrites or deletes {share:.0%} of the {plan.target} {entity} records, over "
                   f"--max-change-ratio {max_change_ratio:g}: --force overrides that limit")  # fmt: skip
    for r in recipients:
        words += ["-r", r]
    for f in recipients_files:
        words += ["-R", os.path.abspath(f)]
    if passphrase_file:
        words += ["--passphrase-file", os.path.abspath(passphrase_file)]
    words += ["--ask-passphrase"] * ask_passphrase + ["--no-encryption"] * no_encryption + ["--no-undo"] * no_undo
    if undo_dir:
        words += ["--undo-dir", os.path.abspath(undo_dir)]
    words.append("--yes")
    why += given.notes()
    return f"plan saved to {plan_out}" + (f" ({'; '.join(why)})" if why else "") + f"; apply it with: {shell(words)}"


@cli.command(name="apply", epilog=exit_status_epilog())
@click.argument("plan_file", metavar="PLAN")
@_location_options
@click.option("--prune-orphans", is_flag=True, help="The plan deletes orphans (must match how it was made).")
@click.option("--max-change-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help=_MAX_CHANGE_HELP)  # fmt: skip
@click.option("--force", is_flag=True, help="Ignore --max-change-ratio.")
@_undo_options
@common_options
def apply_cmd(
    app: App,
    plan_file: str,
    profile: str | None,
    modes: tuple[str, ...],
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    prune_orphans: bool,
    max_change_ratio: float,
    force: bool,
    yes: bool,
    no_undo: bool,
    undo_dir: str | None,
    recipients: tuple[str, ...],
    recipients_files: tuple[str, ...],
    passphrase_file: str | None,
    ask_passphrase: bool,
    no_encryption: bool,
) -> None:
    """Apply a plan saved with `statekit reconcile --plan-out`; refused (exit 8) if the tiers changed since.
    The guards (--prune-orphans, --max-change-ratio, --force) are this command's own, never the plan file's."""
    from statekit.audit.engine import guard, load_plan_file, replan_saved
    from statekit.audit.repairs import Given

    saved = load_plan_file(plan_file)
    if sorted(map(str, saved.get("modes") or [])) != sorted(modes):
        shown = " ".join(f"--mode {m}" for m in saved.get("modes") or []) or "no --mode"
        raise Refused(f"the plan was made with {shown}: give `statekit apply` the same")
    model, where = _model_and_locations(app, profile, db_url, redis_url, files_root, modes)
    given = Given(app.config_file, profile, modes, db_url, redis_url, files_root)
    plan = replan_saved(model, where, saved, prune_orphans=prune_orphans, given=given)
    guard(plan, max_change_ratio, force)
    _apply(app, plan, where, yes, no_undo, undo_dir,
           (recipients, recipients_files, passphrase_file, ask_passphrase, no_encryption), model)  # fmt: skip
    if not plan.ops:
        app.result({"plan": plan.to_json()}, ["nothing to do: the target already matches"])


@cli.command(epilog=exit_status_epilog(_DRIFT))
@click.option("--env-file", metavar="FILE", default=".env", show_default=True, help="Evolution API's .env file.")
@click.option("--db-url", metavar="URL", help="Database URL (default: [db] url, else DATABASE_CONNECTION_URI).")
@click.option("--redis-url", metavar="URL", help="Redis URL (default: [redis] url, else CACHE_REDIS_URI).")
@click.option("--files-root", metavar="DIR", help="Evolution's instances/ directory (default: [files] root).")
@common_options
def doctor(app: App, env_file: str, db_url: str | None, redis_url: str | None, files_root: str | None) -> None:
    """Check an Evolution API deployment for settings that lose sessions: reads its .env (mode, prefix and
    client name as Evolution reads them) and the live servers, and prints each warning with the reason and the
    fix. When the .env's mode disagrees with where the instances' auth state is, it prints the exact statekit
    commands to run, in order, before restarting Evolution. Exit status 1 when there are warnings."""
    from statekit.audit.sources.db import open_engine
    from statekit.audit.sources.redis import open_redis
    from statekit.profiles.evolution.doctor import db_url_from_env, diagnose, read_env_file

    if not os.path.exists(env_file):
        raise UsageError(f"no Evolution .env at {env_file} (give --env-file)")
    env = read_env_file(env_file)
    cfg = app.config()
    redis_on = env.get("CACHE_REDIS_ENABLED") == "true"
    # With Redis turned off in the .env, its URI still tells where earlier modes left auth state.
    rurl = redis_url or cfg.redis.url or env.get("CACHE_REDIS_URI")
    durl = db_url or cfg.db.url or db_url_from_env(env)
    client = None
    if rurl:
        try:
            client = open_redis(rurl)
        except TierUnavailable:
            if redis_on or redis_url or cfg.redis.url:
                raise
    engine = open_engine(durl) if durl else None
    try:
        found = diagnose(env, redis_client=client, db_engine=engine, files_root=files_root or cfg.files.root)
    finally:
        if client is not None:
            client.close()
        if engine is not None:
            engine.dispose()
    lines = []
    for d in found:
        lines.append(f"{d.status.upper():<5} {d.check}: {d.reason}")
        if d.fix and d.status == "warn":
            lines.append(f"      fix: {d.fix}")
        for i, command in enumerate(d.commands, 1):
            lines.append(f"        {i}. {command}")
    warns = sum(d.status == "warn" for d in found)
    lines.append(f"{warns} warning{'s' if warns != 1 else ''}" if warns else "no warnings")
    app.result({"checks": [d.to_json() for d in found], "warnings_found": warns}, lines)
    if warns:
        raise SystemExit(1)  # run() ignores click.Exit codes in non-standalone mode
