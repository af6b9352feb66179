"""`statekit inspect` and `statekit verify`: read an archive without restoring it."""

from __future__ import annotations

from typing import Any

import click

from statekit.archive.format import Archive, ArchiveIndex
from statekit.cli._app import App, cli, common_options, exit_status_epilog, human_bytes
from statekit.cli._keys import identity_options, resolve_identities, with_passphrase_retry


def open_verified(app: App, path: str, identities: tuple[str, ...], passphrase_file: str | None) -> Archive:
    """Open an archive and run its full verifying pass (asks for a passphrase on a TTY if needed)."""
    keys = resolve_identities(app, identities, passphrase_file)

    def attempt(ids: list[Any]) -> Archive:
        archive = Archive(path, ids)
        archive.index()
        return archive

    result: Archive = with_passphrase_retry(app, keys, attempt)
    return result


def summarize(index: ArchiveIndex) -> dict[str, Any]:
    """The facts inspect shows, JSON-ready."""
    snap = index.snapshot
    return {
        "snapshot_id": snap.get("snapshot_id"),
        "kind": snap.get("kind", "snapshot"),
        "created_at": snap.get("created_at"),
        "statekit_version": snap.get("statekit_version"),
        "format_version": index.format.get("format_version"),
        "size": index.compressed_size,
        "encryption": snap.get("options", {}).get("encryption"),
        "tier_window_s": snap.get("tier_window_s"),
        "tiers": snap.get("tiers", []),
        "members": len(index.manifest.get("members", [])),
        "totals": index.manifest.get("totals", {}),
    }


@cli.command(epilog=exit_status_epilog())
@click.argument("archive", metavar="ARCHIVE")
@click.option("--members", "show_members", is_flag=True, help="List every member with size and sha256.")
@identity_options
@common_options
def inspect(
    app: App, archive: str, show_members: bool, identities: tuple[str, ...], passphrase_file: str | None
) -> None:
    """Show what an archive holds: tiers, counts, sources, times."""
    opened = open_verified(app, archive, identities, passphrase_file)
    index = opened.index()
    doc = summarize(index)
    if show_members:
        doc["member_list"] = index.manifest.get("members", [])
    lines = [
        f"archive     {archive}",
        f"snapshot    {doc['snapshot_id']} ({doc['kind']})",
        f"created     {doc['created_at']}  statekit {doc['statekit_version']}  format {doc['format_version']}",
        f"size        {human_bytes(doc['size'] or 0)}  encryption {(doc['encryption'] or {}).get('type', '?')}",
        f"members     {doc['members']}  ({human_bytes(doc['totals'].get('bytes', 0))} uncompressed)",
    ]
    for tier in doc["tiers"]:
        counts = " ".join(f"{k}={v}" for k, v in tier.get("counts", {}).items())
        source = tier.get("details", {}).get("source") or tier.get("details", {}).get("root", "")
        lines.append(f"tier {tier.get('tier'):<6} {counts}  {source}  ({tier.get('duration_s', 0):.2f}s)")
        for w in tier.get("warnings", [])[:5]:
            lines.append(f"    warning: {w}")
    if doc["tier_window_s"] is not None:
        lines.append(
            f"window      {doc['tier_window_s']:.3f}s between the first tier's start and the last's end"
        )
    if show_members:
        for m in doc["member_list"]:
            lines.append(f"  {m['size']:>12}  {m['sha256'][:16]}  {m['mode']}  {m['name']}")
    app.result(doc, lines)


@cli.command(epilog=exit_status_epilog())
@click.argument("archive", metavar="ARCHIVE")
@identity_options
@common_options
def verify(app: App, archive: str, identities: tuple[str, ...], passphrase_file: str | None) -> None:
    """Decrypt, decompress and check every member's sha256 against the manifest.

    Exits 0 only when the whole archive is intact."""
    opened = open_verified(app, archive, identities, passphrase_file)
    index = opened.index()
    doc = {"archive": archive, "verified": True, **summarize(index)}
    app.result(
        doc, f"ok: {archive} verified ({doc['members']} members, {human_bytes(index.compressed_size)})"
    )
