"""The entity model: how one logical thing appears in each tier, built from `[entity.NAME]` tables (from
statekit.toml or a profile) and validated with errors that name the entity and the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.codecs import CODEC_NAMES, Codec, get_codec
from statekit.audit.templates import NameTransform, Template, compile_template
from statekit.errors import ConfigError

TIERS = ("db", "redis", "files")
ROLES = ("required", "optional", "cache")
"""required: every authority record must be here · optional: a scope (e.g. an instance) may be absent from the
tier as a whole, but where the tier holds the scope it must hold every record · cache: may lack anything,
what it holds must agree."""


@dataclass
class Locator:
    """Where an entity lives in one tier."""

    tier: str
    role: str
    codec: Codec
    # redis: key template (+ optional hash field template); files: path template (a trailing "/" means a
    # directory whose presence is the record); db: table, key columns, value column.
    template: Template | None = None
    hash_field: Template | None = None
    table: str | None = None
    schema: str | None = None
    key_columns: list[str] = field(default_factory=list)
    value_column: str | None = None
    columns: list[str] = field(default_factory=list)
    filter: str | None = None

    @property
    def is_directory(self) -> bool:
        """A files locator naming a directory (presence only)."""
        return self.template is not None and self.template.text.endswith("/")

    def describe(self) -> str:
        """A short human description, e.g. `db "Session".creds` or `redis evolution:instance:{id} [creds]`."""
        if self.tier == "db":
            col = f".{self.value_column}" if self.value_column else ""
            return f'db "{self.table}"{col}'
        assert self.template is not None
        if self.tier == "redis":
            return f"redis {self.template.text}" + (f" [{self.hash_field.text}]" if self.hash_field else "")
        return f"files {self.template.text}"


@dataclass
class Entity:
    """One logical thing and its locators. Records are identified by the values of `vars` (scope first)."""

    name: str
    authority: str
    locators: dict[str, Locator]
    vars: list[str]
    presence: bool = False
    parent: str | None = None
    require_any: list[str] = field(default_factory=list)
    normalizers: dict[str, NameTransform] = field(default_factory=dict)
    inverses: dict[str, NameTransform] = field(default_factory=dict)

    @property
    def scope_var(self) -> str:
        """The variable naming the scope (e.g. the instance id)."""
        return self.vars[0]


@dataclass
class Check:
    """A profile rule on an authority row, e.g. `connectionStatus = 'open'` needs usable auth state."""

    name: str
    entity: str
    column: str
    equals: str
    requires_any: list[str]
    message: str


@dataclass
class Model:
    """All entities of one audit, in dependency order (parents first)."""

    entities: dict[str, Entity]
    checks: list[Check] = field(default_factory=list)
    source: str = "config"

    def select(self, names: list[str]) -> Model:
        """The model limited to these entities (and the parents they need)."""
        if not names:
            return self
        unknown = [n for n in names if n not in self.entities]
        if unknown:
            raise ConfigError(f"unknown entity {unknown[0]!r} (known: {', '.join(self.entities) or 'none configured'})")
        wanted = set(names)
        for n in names:
            p = self.entities[n].parent
            while p:
                wanted.add(p)
                p = self.entities[p].parent
        return Model({k: v for k, v in self.entities.items() if k in wanted}, self.checks, self.source)


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where} must be a string or a list of strings")


def _opt_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


_LOCATOR_KEYS = {
    "db": {"table", "schema", "key", "value", "columns", "filter", "codec", "role"},
    "redis": {"key", "field", "codec", "role"},
    "files": {"path", "codec", "role"},
}
_ENTITY_KEYS = {"authority", "presence", "parent", "id", "patterns", "require_any", *TIERS}


def build_model(
    tables: Mapping[str, Mapping[str, Any]],
    *,
    constants: Mapping[str, str] | None = None,
    functions: Mapping[str, NameTransform] | None = None,
    inverses: Mapping[str, NameTransform] | None = None,
    checks: list[Mapping[str, Any]] | None = None,
    source: str = "config",
) -> Model:
    """Validate `[entity.NAME]` tables and compile their templates; ConfigError names the offending key."""
    entities: dict[str, Entity] = {}
    for name, table in tables.items():
        entities[name] = _build_entity(name, table, constants or {}, functions or {}, inverses or {})
    for ent in entities.values():
        if ent.parent is not None and ent.parent not in entities:
            raise ConfigError(f"entity.{ent.name}.parent: no entity called {ent.parent!r}")
    ordered: dict[str, Entity] = {}

    def visit(ent: Entity, seen: tuple[str, ...]) -> None:
        if ent.name in ordered:
            return
        if ent.name in seen:
            raise ConfigError(f"entity.{ent.name}.parent: parents form a cycle")
        if ent.parent:
            visit(entities[ent.parent], (*seen, ent.name))
        ordered[ent.name] = ent

    for ent in entities.values():
        visit(ent, ())
    built_checks = [_build_check(c, ordered) for c in checks or []]
    return Model(ordered, built_checks, source)


def _build_entity(
    name: str,
    table: Mapping[str, Any],
    constants: Mapping[str, str],
    functions: Mapping[str, NameTransform],
    inverses: Mapping[str, NameTransform],
) -> Entity:
    where = f"entity.{name}"
    unknown = set(table) - _ENTITY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_ENTITY_KEYS))})")
    patterns = table.get("patterns", {})
    if not isinstance(patterns, dict) or not all(isinstance(v, str) for v in patterns.values()):
        raise ConfigError(f"{where}.patterns must be a table of regular expressions")
    presence = table.get("presence", False)
    if not isinstance(presence, bool):
        raise ConfigError(f"{where}.presence must be true or false")
    locators: dict[str, Locator] = {}
    for tier in TIERS:
        if tier in table:
            spec = table[tier]
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}.{tier} must be a table")
            locators[tier] = _build_locator(tier, spec, f"{where}.{tier}", constants, functions, patterns, presence)
    if not locators:
        raise ConfigError(f"{where}: needs at least one of db, redis, files")
    authority = table.get("authority", next(iter(locators)))
    if authority not in locators:
        raise ConfigError(f"{where}.authority: {authority!r} is not one of its tiers ({', '.join(locators)})")
    auth = locators[authority]
    vars_: list[str] = []
    for loc in locators.values():
        names = list(loc.template.vars if loc.template else [])
        if loc.hash_field is not None:
            names += loc.hash_field.vars
        for v in names:
            if v not in vars_:
                vars_.append(v)
    scope = table.get("id", "id" if "id" in vars_ or not vars_ else vars_[0])
    if vars_ and scope not in vars_:
        raise ConfigError(f"{where}.id: {scope!r} is not a template variable ({', '.join(vars_)})")
    vars_ = [scope] + [v for v in vars_ if v != scope]
    for tier, loc in locators.items():
        if tier == "db":
            if len(loc.key_columns) > len(vars_):
                raise ConfigError(f"{where}.db.key: more key columns than template variables ({', '.join(vars_)})")
            continue
        have = set(loc.template.vars if loc.template else []) | set(loc.hash_field.vars if loc.hash_field else [])
        if set(vars_) - have and not (loc.is_directory and have == {scope}):
            missing = sorted(set(vars_) - have)[0]
            raise ConfigError(f"{where}.{tier}: the template does not use {{{missing}}}")
    normalizers: dict[str, NameTransform] = {}
    inv: dict[str, NameTransform] = {}
    for loc in locators.values():
        for tpl in (loc.template, loc.hash_field):
            if tpl is None:
                continue
            for var, fn in tpl.transforms.items():
                normalizers[var] = functions[fn]
                if fn in inverses:
                    inv[var] = inverses[fn]
    require_any = _str_list(table.get("require_any", []), f"{where}.require_any")
    for t in require_any:
        if t not in locators:
            raise ConfigError(f"{where}.require_any: {t!r} is not one of its tiers")
    parent = _opt_str(table, "parent", where)
    del auth
    return Entity(name, authority, locators, vars_ or [scope], presence, parent, require_any, normalizers, inv)


def _build_locator(
    tier: str,
    spec: Mapping[str, Any],
    where: str,
    constants: Mapping[str, str],
    functions: Mapping[str, NameTransform],
    patterns: Mapping[str, str],
    presence: bool,
) -> Locator:
    unknown = set(spec) - _LOCATOR_KEYS[tier]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_LOCATOR_KEYS[tier]))})"
        )
    role = spec.get("role", "required")
    if role not in ROLES:
        raise ConfigError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    codec_name = spec.get("codec", "raw")
    if codec_name not in CODEC_NAMES:
        raise ConfigError(f"{where}.codec: {codec_name!r} is not one of {', '.join(CODEC_NAMES)}")
    loc = Locator(tier, role, get_codec(codec_name))

    def tpl(key: str) -> Template:
        text = spec.get(key)
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}.{key} must be a non-empty template string")
        return compile_template(text, constants=constants, functions=functions, patterns=patterns)

    if tier == "db":
        table = _opt_str(spec, "table", where)
        if not table:
            raise ConfigError(f"{where}.table is required")
        loc.table = table
        loc.schema = _opt_str(spec, "schema", where)
        loc.key_columns = _str_list(spec.get("key", []), f"{where}.key")
        if not loc.key_columns:
            raise ConfigError(f"{where}.key (the key column or columns) is required")
        loc.value_column = _opt_str(spec, "value", where)
        if loc.value_column is None and not presence:
            raise ConfigError(f"{where}.value is required (or set presence = true on the entity)")
        loc.columns = _str_list(spec.get("columns", []), f"{where}.columns")
        loc.filter = _opt_str(spec, "filter", where)
    elif tier == "redis":
        loc.template = tpl("key")
        if "field" in spec:
            loc.hash_field = tpl("field")
    else:
        loc.template = tpl("path")
        if loc.template.text.startswith("/") or ".." in loc.template.text.split("/"):
            raise ConfigError(f"{where}.path must be relative to the files root, without '..'")
        if loc.is_directory and not presence:
            raise ConfigError(f"{where}.path: a directory (trailing '/') needs presence = true on the entity")
    return loc


def _build_check(spec: Mapping[str, Any], entities: Mapping[str, Entity]) -> Check:
    name = str(spec.get("name", "check"))
    where = f"check {name}"
    entity = spec.get("entity")
    if entity not in entities:
        raise ConfigError(f"{where}: entity {entity!r} is not defined")
    when = spec.get("when", {})
    if not isinstance(when, dict) or "column" not in when or "equals" not in when:
        raise ConfigError(f"{where}.when needs column and equals")
    requires = _str_list(spec.get("requires_any", []), f"{where}.requires_any")
    for r in requires:
        if r not in entities:
            raise ConfigError(f"{where}.requires_any: entity {r!r} is not defined")
    return Check(name, str(entity), str(when["column"]), str(when["equals"]), requires, str(spec.get("message", name)))
