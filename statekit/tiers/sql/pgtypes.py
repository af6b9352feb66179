"""PostgreSQL type names from an archive, under the trust model: the strict grammar and the target's
`to_regtype()` (PgTypeCheck), the enums and domains the archive itself describes, named only from their
structured schema and name (archived_types), and the order their domains can be created in."""

from __future__ import annotations

import re
from typing import Any

from statekit.errors import CorruptArchive
from statekit.tiers.sql.dialects.base import MAX_TYPE_TEXT, refuse_type, shown
from statekit.tiers.sql.dialects.postgresql import qident, qtable
from statekit.tiers.sql.schema import DbSchema

PG_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"\x00]|"")+")'
_PG_MODS = r"(?: ?\(\d{1,4}(?:, ?\d{1,4})?\))?"  # modifiers: numbers only
_PG_TYPE = re.compile(
    # a name (schema-qualified or not) or one of the builtins format_type() writes in several words; then its
    # modifiers; then what format_type() writes after them (… with time zone, interval … to second(n));
    # then array dimensions. Nothing else: a word more is refused, not passed on.
    rf"(?:(?i:double precision|character varying|bit varying)|{PG_IDENT}(?:\.{PG_IDENT})?){_PG_MODS}"
    r"(?i: with(?:out)? time zone"
    r"| (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second))?(?: ?\(\d{1,4}\))?)?"
    r"(?: ?\[\d{0,9}\])*"
)
ARRAY_DIMS = re.compile(r"(?: ?\[\d{0,9}\])+$")
_PG_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")  # a name format_type() writes without quotes


class PgTypeCheck:
    """Validates PostgreSQL type names for an untrusted archive: a strict grammar first (a name, numeric
    modifiers, array dimensions; anything else is refused as a corrupt archive), then the target server's
    `to_regtype()` with the name as a bound parameter, which parses it without executing anything. `conn` is a
    psycopg connection. `archived` maps the spellings of the enums and domains the archive describes (as
    format_type() writes them) to their quoted names (see archived_types): the only way such a name, which the
    target may not have yet, gets into a statement."""

    def __init__(self, conn: Any, archived: dict[str, str] | None = None) -> None:
        self._conn = conn
        self._archived = archived or {}
        self._cache: dict[str, bool] = {}

    def known(self, text: str, what: str) -> bool:
        """True when `text` names a type on the target, by the grammar and the target's `to_regtype()`."""
        if len(text) > MAX_TYPE_TEXT or not _PG_TYPE.fullmatch(text):
            raise refuse_type(what, text)
        if text not in self._cache:
            import psycopg

            try:
                row = self._conn.execute("SELECT to_regtype(%s) IS NOT NULL", (text,)).fetchone()
                self._cache[text] = bool(row and row[0])
            except psycopg.Error:
                self._cache[text] = False  # a modifier the type does not take, an unknown schema, …
            finally:
                self._conn.rollback()
        return self._cache[text]

    def archived(self, text: str) -> str | None:
        """The quoted name (with `[]` per array dimension) of the archived enum or domain `text` spells, else
        None."""
        dims = ARRAY_DIMS.search(text)
        bare = text[: dims.start()] if dims else text
        name = self._archived.get(bare)
        if name is None:
            return None
        return name + ("[]" * dims.group(0).count("[") if dims else "")


def archived_types(desc: DbSchema) -> dict[str, str]:
    """Each way format_type() may write an enum or domain of the archive (qualified or not, a name quoted unless
    it is a plain lower-case identifier), to the name as statekit writes it: quoted, from the structured
    schema and name."""
    out: dict[str, str] = {}

    def spellings(name: str) -> set[str]:
        return {qident(name), name} if _PG_PLAIN.fullmatch(name) else {qident(name)}

    for t in [*desc.enums, *desc.domains]:
        name, schema = t["name"], t.get("schema")
        quoted = qtable(schema, name)
        for n in spellings(name):
            out.setdefault(n, quoted)
            for s in spellings(schema) if schema else ():
                out.setdefault(f"{s}.{n}", quoted)
    return out


def domains_in_order(domains: list[dict[str, Any]], check: PgTypeCheck) -> list[dict[str, Any]]:
    """The archived domains in an order PostgreSQL can create them in: each after the archived domain it is
    defined over (directly or as an array of it), else in archive order. A domain is placed only after its base
    is, so a cycle (a domain over itself, two over each other) can never be placed: CorruptArchive."""
    index = {qtable(d.get("schema"), d["name"]): i for i, d in enumerate(domains)}
    base_of: list[int | None] = []
    for d in domains:
        base = check.archived(d["type"]) or ""
        while base.endswith("[]"):
            base = base[:-2]
        base_of.append(index.get(base))
    placed: set[int] = set()
    out: list[dict[str, Any]] = []
    for first in range(len(domains)):
        chain: list[int] = []  # `first`, then its bases not placed yet: each domain has one base
        seen: set[int] = set()
        i: int | None = first
        while i is not None and i not in placed:
            if i in seen:
                raise CorruptArchive(
                    f"archive member db/schema.json: domain {shown(domains[i]['name'])} is defined over itself "
                    "(through the domains it is based on)"
                )
            chain.append(i)
            seen.add(i)
            i = base_of[i]
        for j in reversed(chain):
            placed.add(j)
            out.append(domains[j])
    return out
