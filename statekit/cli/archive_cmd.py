"""`statekit inspect` and `statekit verify`: read an archive without restoring it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from statekit import textfmt
from statekit.archive.format import AGE_MAGIC
from statekit.archive.reader import Archive, ArchiveIndex
from statekit.cli._app import App, cli, common_options, exit_status_epilog, human_bytes
from statekit.cli._keys import identity_options, resolve_identities, with_passphrase_retry
from statekit.cli._signing import check_signers, signer_options, trust_options
from statekit.errors import TierError, UsageError
from statekit.ops.metrics import rehearse_metrics, write_metrics
from statekit.ops.rehearse import rehearse as run_rehearsal
from statekit.repo import is_s3_url, split_archive_url
from statekit.tiers import names as tier_names


@contextmanager
def local_archive(location: str) -> Iterator[str]:
    """A local path for ARCHIVE: the path itself, or for s3://bucket/prefix/ARCHIVE a 0600 temporary copy in a
    private directory, removed when the block ends."""
    if not is_s3_url(location):
        yield location
        return
    repo, key = split_archive_url(location)
    with repo.fetched(key) as path:
        yield str(path)


def open_verified(
    app: App, path: str, identities: tuple[str, ...], passphrase_file: str | None, *, full: bool = True
) -> Archive:
    """Open an archive and run its full verifying pass (asks for a passphrase on a TTY if needed); without
    `full`, read its head only (which decrypts too), for a restore that verifies while it loads."""
    keys = resolve_identities(app, identities, passphrase_file)

    def attempt(ids: list[Any]) -> Archive:
        archive = Archive(path, ids)
        if full:
            archive.index()
        else:
            archive.head()
        return archive

    result: Archive = with_passphrase_retry(app, keys, attempt)
    return result


def encryption_of(path: str) -> dict[str, Any]:
    """The outer layer as the file's own header says it (for archives whose snapshot.json does not record
    it, such as undo archives): `age-x25519`, `age-scrypt` or `none`. X25519 stanzas do not name their
    recipients, so none are listed."""
    with open(path, "rb") as fh:
        head = fh.read(64 << 10)
    if not head.startswith(AGE_MAGIC):
        return {"type": "none"}
    header = head.split(b"\n---", 1)[0]
    if b"\n-> scrypt " in header:
        return {"type": "age-scrypt"}
    if b"\n-> X25519 " in header:
        return {"type": "age-x25519", "stanzas": header.count(b"\n-> X25519 ")}
    return {"type": "age"}


def summarize(index: ArchiveIndex, path: str | None = None) -> dict[str, Any]:
    """The facts inspect shows, JSON-ready."""
    snap = index.snapshot
    encryption = snap.get("options", {}).get("encryption")
    if encryption is None and path is not None:
        encryption = encryption_of(path)
    return {
        "snapshot_id": snap.get("snapshot_id"),
        "kind": snap.get("kind", "snapshot"),
        "created_at": snap.get("created_at"),
        "statekit_version": snap.get("statekit_version"),
        "format_version": index.format.get("format_version"),
        "size": index.compressed_size,
        "encryption": encryption,
        "tier_window_s": snap.get("tier_window_s"),
        "tiers": snap.get("tiers", []),
        "members": len(index.manifest.get("members", [])),
        "totals": index.manifest.get("totals", {}),
    }


@cli.command(epilog=exit_status_epilog())
@click.argument("archive", metavar="ARCHIVE")
@click.option("--members", "show_members", is_flag=True, help="List every member with size and sha256.")
@signer_options
@identity_options
@common_options
def inspect(
    app: App,
    archive: str,
    show_members: bool,
    signers: tuple[str, ...],
    identities: tuple[str, ...],
    passphrase_file: str | None,
) -> None:
    """Show what an archive holds: tiers, counts, sources, times. ARCHIVE may be s3://bucket/prefix/NAME."""
    with local_archive(archive) as path:
        check_signers(path, signers)
        index = open_verified(app, path, identities, passphrase_file).index()
    doc = summarize(index, path)
    if show_members:
        doc["member_list"] = index.manifest.get("members", [])
    lines = [
        f"archive     {archive}",
        f"snapshot    {doc['snapshot_id']} ({doc['kind']})",
        f"created     {doc['created_at']}  statekit {doc['statekit_version']}  format {doc['format_version']}",
        f"size        {human_bytes(doc['size'] or 0)}  encryption {(doc['encryption'] or {}).get('type', '?')}",
        f"members     {textfmt.count(doc['members'])}  ({human_bytes(doc['totals'].get('bytes', 0))} uncompressed)",
    ]
    for tier in doc["tiers"]:
        counts = " ".join(f"{k}={textfmt.count(v)}" for k, v in tier.get("counts", {}).items())
        source = tier.get("details", {}).get("source") or tier.get("details", {}).get("root", "")
        lines.append(f"tier {tier.get('tier'):<6} {counts}  {source}  ({tier.get('duration_s', 0):.2f}s)")
        for w in tier.get("warnings", [])[:5]:
            lines.append(f"    warning: {w}")
    if doc["tier_window_s"] is not None:
        lines.append(f"window      {doc['tier_window_s']:.3f}s between the first tier's start and the last's end")
    if show_members:
        for m in doc["member_list"]:
            lines.append(f"  {textfmt.count(m['size']):>13}  {m['sha256'][:16]}  {m['mode']}  {m['name']}")
    app.result(doc, lines)


@cli.command(epilog=exit_status_epilog())
@click.argument("archive", metavar="ARCHIVE")
@click.option("--rehearse", is_flag=True,
              help="Also restore into throwaway local servers (embedded PostgreSQL, redis-server; run as the "
                   "unprivileged account statekit-sandbox, which needs root) and a temporary directory and compare "
                   "row counts, content hashes and file hashes with the manifest.")  # fmt: skip
@click.option("--tier", "tiers", multiple=True, type=click.Choice(tier_names()),
              help="--rehearse only these tiers (repeatable; default: every tier in the archive).")  # fmt: skip
@click.option("--metrics-file", metavar="PATH", help="Write the rehearsal result as Prometheus text metrics.")
@signer_options
@trust_options
@identity_options
@common_options
def verify(
    app: App,
    archive: str,
    rehearse: bool,
    tiers: tuple[str, ...],
    metrics_file: str | None,
    signers: tuple[str, ...],
    trust_archive_sql: bool,
    identities: tuple[str, ...],
    passphrase_file: str | None,
) -> None:
    """Decrypt, decompress and check every member's sha256 against the manifest. ARCHIVE may be
    s3://bucket/prefix/NAME.

    Exits 0 only when the whole archive is intact (and, with --rehearse, restores to identical content)."""
    if (tiers or metrics_file or trust_archive_sql) and not rehearse:
        raise UsageError("--tier, --metrics-file and --trust-archive-sql go with --rehearse")
    with local_archive(archive) as path:
        # configured signers decide whether a rehearsal may run the archive's SQL
        signature = check_signers(path, signers, app.config().archive.signers if rehearse else ())
        opened = open_verified(app, path, identities, passphrase_file)
        index = opened.index()
        doc: dict[str, Any] = {"archive": archive, "verified": True, **summarize(index, path)}
        members = textfmt.counted(doc["members"], "member")
        lines = [f"ok: {archive} verified ({members}, {human_bytes(index.compressed_size)})"]
        if signature is not None:
            doc["signature"] = dataclasses.asdict(signature)
            lines.append(f"ok: signed by {signature.public_key} at {signature.signed_at}")
        if rehearse:
            report = run_rehearsal(
                opened,
                tiers=list(tiers) or None,
                trust_archive_sql=trust_archive_sql or signature is not None,
                warn=app.warn,
            )
            if metrics_file:
                write_metrics(
                    metrics_file,
                    rehearse_metrics(
                        archive=Path(archive).name,
                        ok=report.ok,
                        started=report.started,
                        finished=report.finished,
                        checks=report.per_tier(),
                    ),
                )
            if not report.ok:
                for c in [c for c in report.checks if not c.ok][:10]:
                    app.stderr(
                        textfmt.printable(  # one line: a line break in an item is the archive's
                            f"mismatch: {c.tier} {c.item} {c.what}: archive {c.expected}, restored {c.actual}"
                        ),
                        "error",
                    )
                first = next(c for c in report.checks if not c.ok)
                raise TierError(
                    f"rehearsal of {archive} failed: {sum(not c.ok for c in report.checks)} of {len(report.checks)} "
                    f"checks differ (first: {first.tier} {first.item} {first.what})"
                )
            doc["rehearsal"] = report.to_json()
            lines.append(
                f"ok: rehearsal restored {', '.join(report.per_tier()) or 'nothing'}: "
                f"{textfmt.counted(len(report.checks), 'check')} passed "
                f"({textfmt.duration(report.finished - report.started)})"
            )
            lines += [f"  note: {n}" for n in report.notes]
    app.result(doc, lines)
