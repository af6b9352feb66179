"""The entity model: how one logical thing appears in each tier, built from `[entity.NAME]` tables (from
statekit.toml or a profile) and validated with errors that name the entity and the key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from statekit.audit.codecs import CODEC_NAMES, Codec, get_codec
from statekit.audit.templates import NameTransform, Template, compile_template
from statekit.errors import ConfigError
from statekit.tiers import TIERS as REGISTRY

ROLES = ("required", "optional", "cache")
"""required: every authority record must be here · optional: a scope (e.g. an instance) may be absent from the
tier as a whole, but where the tier holds the scope it must hold every record · cache: may lack anything,
what it holds must agree."""
MODE_ROLES = ("stale", "cache", "ignored")
"""Roles of the non-live tiers in one mode: stale (a copy nothing reads; a differing value is a mismatch that
names the live copy, and records only here are missing from the live place) · cache (as above) · ignored (not
read in that mode: never compared). The mode's live tier has the role `live`."""


@dataclass
class Locator:
    """Where an entity lives in one tier. Each tier has its own kind (DbLocator, RedisLocator, FilesLocator):
    what its section of an `[entity.NAME]` table takes, how it names a record, and what its records are like."""

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
    insert: dict[str, str] = field(default_factory=dict)  # db: column -> one of INSERT_VALUES for new rows

    kind: ClassVar[str] = ""  # the tier's name: its section in an `[entity.NAME]` table
    keys: ClassVar[frozenset[str]] = frozenset({"codec", "role"})  # what the tier's section may hold
    # The kinds reconcile can rebuild this tier from (the first: the source a repair of an orphan names).
    fills_from: ClassVar[tuple[type[Locator], ...]] = ()
    nullable: ClassVar[bool] = False  # a record can exist without a value (a row whose value column is NULL)
    torn_writes: ClassVar[bool] = False  # a plain write cut short by a crash leaves a truncated value
    place: ClassVar[str] = ""  # the whole tier for a person

    @property
    def is_directory(self) -> bool:
        """A files locator naming a directory (presence only)."""
        return self.template is not None and self.template.text.endswith("/")

    def describe(self) -> str:
        """A short human description, e.g. `db "Session".creds` or `redis evolution:instance:{id} [creds]`."""
        assert self.template is not None
        return f"{self.tier} {self.template.text}"

    def where_of(self, ent: Entity, scope: str, rest: tuple[str, ...] = ()) -> str:
        """The location of one record (or, without `rest`, of the scope): the key, path or row, not the
        template."""
        assert self.template is not None
        values = dict(zip(ent.vars, (scope, *rest)))
        try:
            return self._where(ent, scope, values)
        except (ValueError, KeyError):
            return self.describe()

    def _where(self, ent: Entity, scope: str, values: dict[str, str]) -> str:
        assert self.template is not None
        return self.template.render(values)

    @classmethod
    def loc_text(cls, loc: tuple[str, ...]) -> str:
        """A record's location tuple (`(tier, name, …)`, see Record.loc) for a person."""
        return loc[1]

    @classmethod
    def op_text(cls, loc: tuple[str, ...], ident: str) -> str:
        """Where a reconcile operation on record `ident` writes (its `loc`, see `row_loc`), for a person."""
        return cls.loc_text(loc)

    def holds_one_value(self, ent: Entity) -> bool:
        """Does one of the entity's records here stand for one value reconcile can write?"""
        return True

    def row_loc(self) -> tuple[str, ...] | None:
        """Where reconcile writes in this tier when records are rows of one table (None: at the record's
        own name)."""
        return None

    def configure(self, spec: Mapping[str, Any], where: str, tpl: Callable[[str], Template], presence: bool) -> None:
        """Fill in the tier's own part from its section of the entity table."""

    def check_vars(self, vars_: list[str], scope: str, where: str) -> None:
        """Refuse a locator that cannot name every record of the entity (vars_: its variables, scope first)."""
        have = set(self.template.vars if self.template else []) | set(self.hash_field.vars if self.hash_field else [])
        if set(vars_) - have and not (self.is_directory and have == {scope}):
            missing = sorted(set(vars_) - have)[0]
            raise ConfigError(f"{where}: the template does not use {{{missing}}}")


@dataclass
class DbLocator(Locator):
    """A table: key columns name the record, the value column holds it."""

    kind: ClassVar[str] = "db"
    keys: ClassVar[frozenset[str]] = frozenset(
        {"table", "schema", "key", "value", "columns", "filter", "codec", "role", "insert"}
    )
    nullable: ClassVar[bool] = True
    place: ClassVar[str] = "the database"

    def describe(self) -> str:
        """E.g. `db "Session".creds`."""
        col = f".{self.value_column}" if self.value_column else ""
        return f'{self.tier} "{self.table}"{col}'

    def where_of(self, ent: Entity, scope: str, rest: tuple[str, ...] = ()) -> str:
        """The row of the scope (and its value column)."""
        return f'"{self.table}" {self.key_columns[0]}={scope}' + (f".{self.value_column}" if self.value_column else "")

    @classmethod
    def loc_text(cls, loc: tuple[str, ...]) -> str:
        """`(tier, table, row description)`: the row description."""
        return loc[-1]

    @classmethod
    def op_text(cls, loc: tuple[str, ...], ident: str) -> str:
        """`(tier, table, key column)`: the row, e.g. `"Session" sessionId=…`."""
        return f'"{loc[1]}" {loc[2]}={ident}'

    def holds_one_value(self, ent: Entity) -> bool:
        """Only a record that is one row's value column."""
        return self.value_column is not None and not ent.presence and len(self.key_columns) == 1

    def row_loc(self) -> tuple[str, ...] | None:
        """The table and its key column."""
        return (self.tier, self.table or "", self.key_columns[0])

    def configure(self, spec: Mapping[str, Any], where: str, tpl: Callable[[str], Template], presence: bool) -> None:
        """Table, key and value columns, extra columns, filter and the values of new rows."""
        table = _opt_str(spec, "table", where)
        if not table:
            raise ConfigError(f"{where}.table is required")
        self.table = table
        self.schema = _opt_str(spec, "schema", where)
        self.key_columns = _str_list(spec.get("key", []), f"{where}.key")
        if not self.key_columns:
            raise ConfigError(f"{where}.key (the key column or columns) is required")
        self.value_column = _opt_str(spec, "value", where)
        if self.value_column is None and not presence:
            raise ConfigError(f"{where}.value is required (or set presence = true on the entity)")
        self.columns = _str_list(spec.get("columns", []), f"{where}.columns")
        self.filter = _opt_str(spec, "filter", where)
        insert = spec.get("insert", {})
        if not isinstance(insert, dict) or not all(v in INSERT_VALUES for v in insert.values()):
            raise ConfigError(f"{where}.insert must map columns to one of {', '.join(INSERT_VALUES)}")
        self.insert = {str(k): str(v) for k, v in insert.items()}

    def check_vars(self, vars_: list[str], scope: str, where: str) -> None:
        """The key columns name the record: no more of them than variables."""
        if len(self.key_columns) > len(vars_):
            raise ConfigError(f"{where}.key: more key columns than template variables ({', '.join(vars_)})")


@dataclass
class RedisLocator(Locator):
    """A key template, and a hash field template when the records are fields of a hash."""

    kind: ClassVar[str] = "redis"
    keys: ClassVar[frozenset[str]] = frozenset({"key", "field", "codec", "role"})
    place: ClassVar[str] = "the Redis database"

    @classmethod
    def loc_text(cls, loc: tuple[str, ...]) -> str:
        """`(tier, key[, field])`: the key, and the field in brackets."""
        return f"{loc[1]} [{loc[2]}]" if len(loc) > 2 else loc[1]

    def describe(self) -> str:
        """E.g. `redis evolution:instance:{id} [creds]`."""
        assert self.template is not None
        return f"{self.tier} {self.template.text}" + (f" [{self.hash_field.text}]" if self.hash_field else "")

    def _where(self, ent: Entity, scope: str, values: dict[str, str]) -> str:
        assert self.template is not None
        name = self.template.render({v: values.get(v, "*") for v in self.template.vars})
        if self.hash_field is not None and all(v in values for v in self.hash_field.vars):
            return f"{name} [{self.hash_field.render(values)}]"
        return name

    def configure(self, spec: Mapping[str, Any], where: str, tpl: Callable[[str], Template], presence: bool) -> None:
        """The key template and the optional hash field template."""
        self.template = tpl("key")
        if "field" in spec:
            self.hash_field = tpl("field")


@dataclass
class FilesLocator(Locator):
    """A path template relative to the files root (a trailing "/": a directory whose presence is the record)."""

    kind: ClassVar[str] = "files"
    keys: ClassVar[frozenset[str]] = frozenset({"path", "codec", "role"})
    torn_writes: ClassVar[bool] = True
    place: ClassVar[str] = "the files root"

    def _where(self, ent: Entity, scope: str, values: dict[str, str]) -> str:
        assert self.template is not None
        if not all(v in values for v in self.template.vars):
            # the scope's directory: the path components that need nothing but the scope
            head = []
            for part in self.template.text.split("/"):
                if "{" in part.replace("{" + ent.scope_var + "}", ""):
                    break
                head.append(part.replace("{" + ent.scope_var + "}", scope))
            return "/".join(head) + "/"
        return self.template.render(values)

    def configure(self, spec: Mapping[str, Any], where: str, tpl: Callable[[str], Template], presence: bool) -> None:
        """The path template: relative, without `..`; a directory only for a presence entity."""
        self.template = tpl("path")
        if self.template.text.startswith("/") or ".." in self.template.text.split("/"):
            raise ConfigError(f"{where}.path must be relative to the files root, without '..'")
        if self.is_directory and not presence:
            raise ConfigError(f"{where}.path: a directory (trailing '/') needs presence = true on the entity")


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
    # mode -> (live tier, tier -> role of the other tiers); see Modes.
    modes: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # The live place must hold the entity when the root's db row has column = value, or when one of the
    # `expect_with` entities has a record in its live place (none of both: always).
    expect_when: tuple[str, str] | None = None
    expect_with: list[str] = field(default_factory=list)

    @property
    def scope_var(self) -> str:
        """The variable naming the scope (e.g. the instance id)."""
        return self.vars[0]

    def in_mode(self, mode: str) -> Entity:
        """The entity as one mode sees it: the mode's live tier is the authority, the other tiers take the
        mode's roles, ignored tiers are left out."""
        spec = self.modes.get(mode)
        if spec is None:
            return self
        live, roles = spec
        locators = {}
        for tier, loc in self.locators.items():
            role = "live" if tier == live else roles.get(tier, "ignored")
            if role != "ignored":
                locators[tier] = replace(loc, role=role)
        return replace(self, authority=live, locators=locators)


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
class Server:
    """One application server sharing the tiers: its name (the value of the modes column), the mode it runs
    in and where that was read from."""

    name: str
    mode: str
    origin: str = "profile_options"
    prefix: str | None = None


@dataclass
class Modes:
    """Per-scope modes: the root entity's db column `column` names the server that owns a scope; the
    server's mode says which tier is live for each entity. Servers are configuration, never guessed."""

    names: list[str]
    not_covered: list[str]
    entity: str
    column: str
    servers: dict[str, Server] = field(default_factory=dict)
    default: Server | None = None  # the mode of every scope whose server is not listed (single-server setup)
    ready_needs: list[str] = field(default_factory=list)
    tier_nouns: dict[str, str] = field(default_factory=dict)  # e.g. redis -> "instance hash"
    root_noun: str = "ids"

    def server_of(self, name: str | None) -> Server | None:
        """The server owning a scope whose column holds `name` (None: no configured server)."""
        if name is not None and name in self.servers:
            return self.servers[name]
        return self.default


@dataclass
class Model:
    """All entities of one audit, in dependency order (parents first)."""

    entities: dict[str, Entity]
    checks: list[Check] = field(default_factory=list)
    source: str = "config"
    modes: Modes | None = None
    mode: str | None = None  # set on the view of one mode (see in_mode)
    _views: dict[str, Model] = field(default_factory=dict, repr=False, compare=False)

    def in_mode(self, mode: str) -> Model:
        """The model as the scopes of one mode see it (cached)."""
        view = self._views.get(mode)
        if view is None:
            ents = {name: ent.in_mode(mode) for name, ent in self.entities.items()}
            view = Model(ents, self.checks, self.source, self.modes, mode)
            self._views[mode] = view
        return view

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
        return Model({k: v for k, v in self.entities.items() if k in wanted}, self.checks, self.source, self.modes)


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


DbLocator.fills_from = (RedisLocator,)
RedisLocator.fills_from = (DbLocator, FilesLocator)
FilesLocator.fills_from = (RedisLocator, DbLocator)

LOCATOR_KINDS: dict[str, type[Locator]] = {k.kind: k for k in (DbLocator, RedisLocator, FilesLocator)}
"""The sections an `[entity.NAME]` table may have: one kind of locator per tier the audit reads."""
TIERS = tuple(t.name for t in REGISTRY if t.name in LOCATOR_KINDS)
"""The tiers the audit reads, in the registry's order."""
_ENTITY_KEYS = {
    "authority",
    "presence",
    "parent",
    "id",
    "patterns",
    "require_any",
    "modes",
    "expect_when",
    "expect_with",
    *TIERS,
}
INSERT_VALUES = ("cuid", "uuid", "now")
"""Values reconcile can give the other columns of a row it creates: a Prisma-style cuid, a UUID v4, the time."""


def build_model(
    tables: Mapping[str, Mapping[str, Any]],
    *,
    constants: Mapping[str, str] | None = None,
    functions: Mapping[str, NameTransform] | None = None,
    inverses: Mapping[str, NameTransform] | None = None,
    checks: list[Mapping[str, Any]] | None = None,
    source: str = "config",
    modes: Modes | None = None,
) -> Model:
    """Validate `[entity.NAME]` tables and compile their templates; ConfigError names the offending key."""
    entities: dict[str, Entity] = {}
    for name, table in tables.items():
        entities[name] = _build_entity(name, table, constants or {}, functions or {}, inverses or {})
    for ent in entities.values():
        if ent.parent is not None and ent.parent not in entities:
            raise ConfigError(f"entity.{ent.name}.parent: no entity called {ent.parent!r}")
        for other in ent.expect_with:
            if other not in entities:
                raise ConfigError(f"entity.{ent.name}.expect_with: no entity called {other!r}")
        if ent.modes:
            if modes is None:
                raise ConfigError(f"entity.{ent.name}.modes: the model has no [modes] section")
            for mode in ent.modes:
                if mode not in modes.names:
                    raise ConfigError(f"entity.{ent.name}.modes.{mode}: not a mode ({', '.join(modes.names)})")
    if modes is not None:
        root = entities.get(modes.entity)
        if root is None or not any(modes.column in loc.columns for loc in root.locators.values()):
            raise ConfigError(f"modes: entity {modes.entity!r} needs a db locator with column {modes.column!r}")
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
    return Model(ordered, built_checks, source, modes)


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
        loc.check_vars(vars_, scope, f"{where}.{tier}")
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
    ent = Entity(name, authority, locators, vars_ or [scope], presence, parent, require_any, normalizers, inv)
    ent.modes = _build_modes(table.get("modes", {}), locators, where)
    when = table.get("expect_when")
    if when is not None:
        if not isinstance(when, dict) or set(when) != {"column", "equals"}:
            raise ConfigError(f"{where}.expect_when must be {{ column = ..., equals = ... }}")
        ent.expect_when = (str(when["column"]), str(when["equals"]))
    ent.expect_with = _str_list(table.get("expect_with", []), f"{where}.expect_with")
    return ent


def _build_modes(spec: Any, locators: Mapping[str, Locator], where: str) -> dict[str, tuple[str, dict[str, str]]]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}.modes must be a table of modes")
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for mode, table in spec.items():
        w = f"{where}.modes.{mode}"
        if not isinstance(table, dict) or table.get("live") not in locators:
            raise ConfigError(f"{w}.live must name one of the entity's tiers ({', '.join(locators)})")
        roles: dict[str, str] = {}
        for tier, role in table.items():
            if tier == "live":
                continue
            if tier not in locators:
                raise ConfigError(f"{w}: {tier!r} is not one of the entity's tiers")
            if role not in MODE_ROLES:
                raise ConfigError(f"{w}.{tier}: {role!r} is not one of {', '.join(MODE_ROLES)}")
            roles[tier] = str(role)
        out[str(mode)] = (str(table["live"]), roles)
    return out


def _build_locator(
    tier: str,
    spec: Mapping[str, Any],
    where: str,
    constants: Mapping[str, str],
    functions: Mapping[str, NameTransform],
    patterns: Mapping[str, str],
    presence: bool,
) -> Locator:
    kind = LOCATOR_KINDS[tier]
    unknown = set(spec) - kind.keys
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(kind.keys))})")
    role = spec.get("role", "required")
    if role not in ROLES:
        raise ConfigError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    codec_name = spec.get("codec", "raw")
    if codec_name not in CODEC_NAMES:
        raise ConfigError(f"{where}.codec: {codec_name!r} is not one of {', '.join(CODEC_NAMES)}")
    loc = kind(tier, role, get_codec(codec_name))

    def tpl(key: str) -> Template:
        text = spec.get(key)
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}.{key} must be a non-empty template string")
        return compile_template(text, constants=constants, functions=functions, patterns=patterns)

    loc.configure(spec, where, tpl, presence)
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
