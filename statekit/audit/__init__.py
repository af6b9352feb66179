"""Audit and reconcile: an entity model says how one logical thing appears in each tier; the audit diffs the
tiers entity by entity, and reconcile rebuilds one tier from another through the same model.

Modules: `templates` (names that render and parse both ways), `codecs` (value normalisation), `entities`
(the model and its validation), `sources` (the tiers as the audit reads them: live or from a snapshot),
`findings` (what an audit reports), `compare` (one batch of scopes across the tiers), `diff` (the audit run),
`plan` and `apply` (reconcile), `report` (rendering).
"""

from __future__ import annotations
