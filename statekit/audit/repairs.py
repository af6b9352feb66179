"""The command that repairs a finding, for the audit's text output. A repair always copies FROM the live
copy: a stale copy is overwritten from the live one, and a live place that lost its copy is never filled
from a stale one unless the user declares the mode that copy was written in (`--mode`)."""

from __future__ import annotations

from statekit.audit.entities import LOCATOR_KINDS, Entity, Model

RESTORE = "statekit restore ARCHIVE --tier {tier}"


def repair_command(cls: str, ent: Entity, tier: str, base: Model, view: Model, server: str | None) -> str:
    """One line: the statekit command (or the one thing to do) that repairs this kind of finding."""
    root = ent
    while root.parent is not None:
        root = base.entities[root.parent]
    if cls == "orphan":
        source = _other_source(tier, root.authority)
        return f"statekit reconcile --from {source} --to {tier} --entity {ent.name} --prune-orphans"
    if cls == "transient":
        return "none: it was caught mid-write and was gone on re-check"
    loc = ent.locators.get(tier)
    role = loc.role if loc is not None else None
    auth = ent.authority
    if cls == "unparseable":
        if tier == auth:
            return f"no other live copy: {RESTORE.format(tier=tier)} (the application reads it as absent)"
        return f"statekit reconcile --from {auth} --to {tier} --entity {ent.name}"
    if tier == auth or role == "live":
        return _refill_live(ent, tier, base, view, server)
    return f"statekit reconcile --from {auth} --to {tier} --entity {ent.name}"


def _other_source(target: str, authority: str) -> str:
    if authority != target:
        return authority
    return LOCATOR_KINDS[target].fills_from[0].kind


def _refill_live(ent: Entity, tier: str, base: Model, view: Model, server: str | None) -> str:
    """The live place lost its copy: a stale copy may be the one to keep only if the mode changed without a
    migration. Name the mode in which that copy is live, so the user decides."""
    full = base.entities.get(ent.name, ent)
    modes = base.modes
    if modes is not None and view.mode is not None and server is not None:
        for mode, (live, roles) in full.modes.items():
            if live != tier and roles.get(tier, "ignored") != "live" and mode != view.mode:
                return (
                    f"if {live} holds the current copy (the mode changed without a migration): statekit reconcile "
                    f"--mode {server}={mode} --from {live} --to {tier} --entity {ent.name}; else "
                    f"{RESTORE.format(tier=tier)} or pair the instance again"
                )
    return f"no live copy to repair from: {RESTORE.format(tier=tier)}"
