"""Live tier readers for the audit: what each tier holds for the entities of a model.

Each reader works in two passes so memory stays bounded: `list_scopes()` finds which scopes (e.g. instance ids)
the tier holds (db: one streamed SELECT per table through a server-side cursor; redis: SCAN per key template;
files: one os.scandir walk that never follows symlinks), then `load(scopes)` fetches the values of one batch
of scopes (redis: one pipelined round trip of HGETALL/GET; files: one read per file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from statekit.audit.entities import Entity, Locator, Model
from statekit.audit.templates import Template
from statekit.config import redact_url
from statekit.errors import ConfigError, TierError, TierUnavailable

RecordKey = tuple[str, ...]


class Record:
    """One record in one tier. `stored` is None in keys-only mode and for presence-only entities. `loc` is
    ("redis", key[, field]), ("files", relative path) or ("db", table, row description)."""

    __slots__ = ("extra", "loc", "null", "raw_vars", "stored")

    def __init__(
        self,
        stored: bytes | None,
        loc: tuple[str, ...],
        extra: dict[str, Any] | None = None,
        null: bool = False,
        raw_vars: dict[str, str] | None = None,
    ) -> None:
        self.stored = stored
        self.loc = loc
        self.extra = extra
        self.null = null  # db: the row exists but the value column is NULL
        self.raw_vars = raw_vars  # the name's own values where a name transform changed them

    @property
    def where(self) -> str:
        """The record's location for a person."""
        if self.loc[0] == "redis" and len(self.loc) > 2:
            return f"{self.loc[1]} [{self.loc[2]}]"
        return self.loc[-1] if self.loc[0] == "db" else self.loc[1]


@dataclass
class Unparseable:
    """A name in a tier that looks like it belongs to the model but fits none of its templates."""

    tier: str
    entity: str
    scope: str | None
    where: str
    detail: str


@dataclass
class TierData:
    """What one tier holds for a batch of scopes: entity → scope → rest-of-key → record."""

    tier: str
    records: dict[str, dict[str, dict[RecordKey, Record]]] = field(default_factory=dict)
    unparseable: list[Unparseable] = field(default_factory=list)

    def add(self, entity: str, scope: str, rest: RecordKey, rec: Record) -> None:
        """Store a record (the first one wins when two names map to the same record)."""
        self.records.setdefault(entity, {}).setdefault(scope, {}).setdefault(rest, rec)

    def scope_records(self, entity: str, scope: str) -> dict[RecordKey, Record] | None:
        """The entity's records of one scope, or None when the tier holds none."""
        return self.records.get(entity, {}).get(scope)

    def has_scope(self, scope: str) -> bool:
        """True when the tier holds anything at all for this scope."""
        return any(scope in per for per in self.records.values())


def _normalise(ent: Entity, values: dict[str, str]) -> tuple[str, RecordKey]:
    out = []
    for v in ent.vars:
        text = values.get(v, "")
        fn = ent.normalizers.get(v)
        out.append(fn(text) if fn else text)
    return out[0], tuple(out[1:])


def _raw_vars(ent: Entity, values: dict[str, str]) -> dict[str, str] | None:
    # Kept only when a transform changed a value, so reconcile can write the original name back.
    if not ent.normalizers:
        return None
    changed = {v: values[v] for v, fn in ent.normalizers.items() if v in values and fn(values[v]) != values[v]}
    return changed or None


# -- db ---------------------------------------------------------------------------------------------------


def open_engine(url: str) -> Any:
    """A SQLAlchemy engine for a URL (psycopg / pymysql drivers by default); TierUnavailable if unreachable."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"db url {shown}: not a valid database URL") from None
    drivers = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
    if "+" not in parsed.drivername and parsed.drivername in drivers:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{drivers[parsed.drivername]}")
    engine = sa.create_engine(parsed, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise TierUnavailable(f"db {shown}: cannot connect ({type(exc).__name__})") from None
    return engine


def _db_text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    import json

    # A JSON/JSONB column comes back parsed: store it as compact JSON text.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class DbReader:
    """Reads every db locator of a model with one streamed SELECT per entity (values kept in memory: the
    db side of an audit is the authority and is small next to the key material)."""

    tier = "db"

    def __init__(self, engine: Any, model: Model, *, keys_only: bool = False) -> None:
        self.engine = engine
        self.model = model
        self.keys_only = keys_only
        self.data = TierData("db")
        self.unparseable: list[Unparseable] = []

    def list_scopes(self) -> set[str]:
        """Stream every row once; returns the scopes present."""
        import sqlalchemy as sa

        self.data = TierData("db")
        scopes: set[str] = set()
        for ent in self.model.entities.values():
            loc = ent.locators.get("db")
            if loc is None:
                continue
            for scope, rest, rec in self._rows(ent, loc, sa):
                self.data.add(ent.name, scope, rest, rec)
                scopes.add(scope)
        return scopes

    def _rows(self, ent: Entity, loc: Locator, sa: Any) -> Iterator[tuple[str, RecordKey, Record]]:
        assert loc.table is not None
        cols = list(dict.fromkeys([*loc.key_columns, *([loc.value_column] if loc.value_column else []), *loc.columns]))
        table = sa.table(loc.table, *[sa.column(c) for c in cols], schema=loc.schema)
        stmt = sa.select(*[table.c[c] for c in cols])
        if loc.filter:
            stmt = stmt.where(sa.text(loc.filter))
        nkeys = len(loc.key_columns)
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=2000).execute(stmt)
                for row in result:
                    values = {ent.vars[i]: str(row[i]) for i in range(nkeys)}
                    scope, rest = _normalise(ent, values)
                    raw = row[nkeys] if loc.value_column else None
                    extra = {c: row[cols.index(c)] for c in loc.columns} if loc.columns else None
                    where = f'"{loc.table}" ' + ", ".join(f"{c}={row[i]}" for i, c in enumerate(loc.key_columns))
                    rec = Record(
                        None if raw is None or (self.keys_only and not ent.presence) else _db_text(raw),
                        ("db", loc.table, where),
                        extra,
                        null=loc.value_column is not None and raw is None,
                    )
                    yield scope, rest, rec
        except Exception as exc:
            if isinstance(exc, (TierError, TierUnavailable)):
                raise
            raise TierError(f'db: cannot read "{loc.table}" ({type(exc).__name__}: {_first_line(exc)})') from None

    def load(self, scopes: Iterable[str]) -> TierData:
        """The rows of these scopes (already in memory)."""
        wanted = set(scopes)
        out = TierData("db")
        for ent, per in self.data.records.items():
            for scope in wanted & per.keys():
                out.records.setdefault(ent, {})[scope] = per[scope]
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# -- redis ------------------------------------------------------------------------------------------------


@dataclass
class _KeyGroup:
    """Locators that share one Redis key template, with their hash fields sorted most specific first."""

    template: Template
    members: list[tuple[Entity, Locator]]
    literal_fields: dict[str, tuple[Entity, Locator]] = field(default_factory=dict)
    pattern_fields: list[tuple[Entity, Locator, bool]] = field(default_factory=list)

    def prepare(self) -> None:
        fields = sorted(
            ((e, loc) for e, loc in self.members if loc.hash_field is not None),
            key=lambda m: m[1].hash_field.specificity if m[1].hash_field else (0, 0),
        )
        for ent, loc in fields:
            assert loc.hash_field is not None
            if not loc.hash_field.vars:
                self.literal_fields.setdefault(loc.hash_field.text, (ent, loc))
            else:
                # A field that is one whole variable maps straight to the record key (no regex, no dict).
                direct = (
                    len(loc.hash_field.parts) == 1
                    and ent.vars[1:] == loc.hash_field.vars
                    and self.template.vars == [ent.scope_var]
                    and loc.hash_field.regex.pattern.endswith(">.+)")
                )
                self.pattern_fields.append((ent, loc, direct))

    @property
    def hashed(self) -> bool:
        return bool(self.literal_fields or self.pattern_fields)

    @property
    def literal_only(self) -> bool:
        return bool(self.literal_fields) and not self.pattern_fields


class RedisReader:
    """Reads the redis locators of a model: SCAN per key template, then per batch one pipelined round trip
    of packed commands (HGETALL, HMGET when only literal fields are wanted, GET, or EXISTS)."""

    tier = "redis"

    def __init__(self, client: Any, model: Model, *, keys_only: bool = False, scan_count: int = 1000) -> None:
        self.client = client
        self.model = model
        self.keys_only = keys_only
        self.scan_count = scan_count
        groups: dict[str, _KeyGroup] = {}
        for ent in model.entities.values():
            loc = ent.locators.get("redis")
            if loc is not None and loc.template is not None:
                groups.setdefault(loc.template.text, _KeyGroup(loc.template, [])).members.append((ent, loc))
        self.groups = sorted(groups.values(), key=lambda g: g.template.specificity)
        for g in self.groups:
            g.prepare()
        self.keys: dict[str, list[tuple[_KeyGroup, dict[str, str], bytes]]] = {}
        self.unparseable: list[Unparseable] = []
        self._resp: Any = None

    def _conn(self) -> Any:
        if self._resp is None:
            from statekit.tiers.redis.resp import RespConnection

            kw = self.client.connection_pool.connection_kwargs
            url = getattr(self.client, "statekit_url", None)
            self._resp = RespConnection(url) if url else RespConnection(
                f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
            )  # fmt: skip
        return self._resp

    def close(self) -> None:
        """Close the connections."""
        if self._resp is not None:
            self._resp.close()
        self.client.close()

    def list_scopes(self) -> set[str]:
        """SCAN every key template's pattern; returns the scopes present."""
        self.keys = {}
        self.unparseable = []
        seen: set[bytes] = set()
        for group in self.groups:
            for raw in self._scan(group.template.glob()):
                if raw in seen:
                    continue
                seen.add(raw)
                name = raw.decode("utf-8", "surrogateescape")
                for g in self.groups:
                    values = g.template.parse(name)
                    if values is None:
                        continue
                    ent0 = g.members[0][0]
                    scope = values.get(ent0.scope_var, "")
                    fn = ent0.normalizers.get(ent0.scope_var)
                    self.keys.setdefault(fn(scope) if fn else scope, []).append((g, values, raw))
                    break
                else:
                    self.unparseable.append(
                        Unparseable("redis", group.members[0][0].name, None, name,
                                    f"key fits no template ({group.template.text})")
                    )  # fmt: skip
        return set(self.keys)

    def _scan(self, pattern: str) -> Iterator[bytes]:
        try:
            yield from self.client.scan_iter(match=pattern, count=self.scan_count)
        except Exception as exc:
            raise TierError(f"redis: SCAN failed ({type(exc).__name__}: {_first_line(exc)})") from None

    def _command(self, group: _KeyGroup, raw: bytes) -> bytes:
        from statekit.tiers.redis.resp import pack

        if group.hashed:
            if group.literal_only:
                return pack(b"HMGET", raw, *[f.encode() for f in group.literal_fields])
            return pack(b"HKEYS" if self.keys_only else b"HGETALL", raw)
        if self.keys_only or all(ent.presence for ent, _ in group.members):
            return pack(b"EXISTS", raw)
        return pack(b"GET", raw)

    def load(self, scopes: Iterable[str]) -> TierData:
        """Fetch the keys of these scopes in one pipelined round trip and map them to records."""
        out = TierData("redis")
        work = [(scope, item) for scope in scopes for item in self.keys.get(scope, [])]
        if not work:
            return out
        conn = self._conn()
        conn.send(b"".join(self._command(g, raw) for _, (g, _, raw) in work))
        replies = conn.read(len(work))
        from statekit.tiers.redis.resp import ReplyError

        for (scope, (group, values, raw)), reply in zip(work, replies):
            name = raw.decode("utf-8", "surrogateescape")
            if isinstance(reply, ReplyError):
                # WRONGTYPE and the like: the key exists but not as the model expects.
                out.unparseable.append(
                    Unparseable("redis", group.members[0][0].name, scope, name, f"unexpected type ({reply})")
                )
                continue
            if group.literal_only and isinstance(reply, list):
                if all(v is None for v in reply):
                    continue
                reply = {f.encode(): v for f, v in zip(group.literal_fields, reply) if v is not None}
            if not reply:
                continue  # deleted since the SCAN
            self._records(out, group, values, scope, name, reply)
        return out

    def _records(
        self, out: TierData, group: _KeyGroup, values: dict[str, str], scope: str, name: str, reply: Any
    ) -> None:
        for ent, loc in group.members:
            if loc.hash_field is None:
                _, rest = _normalise(ent, values)
                stored = None if ent.presence or self.keys_only or not isinstance(reply, bytes) else reply
                out.add(ent.name, scope, rest, Record(stored, ("redis", name)))
        if not group.hashed or not isinstance(reply, (list, dict)):
            return
        keys_only = self.keys_only
        pairs: Iterable[tuple[bytes, bytes]]
        if isinstance(reply, dict):  # RESP3 map
            pairs = reply.items()
        elif keys_only:  # HKEYS
            pairs = ((f, b"") for f in reply)
        else:  # RESP2 flat HGETALL reply
            pairs = zip(reply[::2], reply[1::2])
        literal = group.literal_fields
        patterns = group.pattern_fields
        records = out.records
        for fraw, value in pairs:
            fname = fraw.decode("utf-8", "surrogateescape")
            hit = literal.get(fname)
            if hit is not None:
                ent, loc = hit
                out.add(ent.name, scope, (), Record(None if keys_only else value, ("redis", name, fname)))
                continue
            for ent, loc, direct in patterns:
                assert loc.hash_field is not None
                if direct:
                    fvar = ent.vars[1]
                    norm = ent.normalizers.get(fvar)
                    ident = norm(fname) if norm else fname
                    rv = {fvar: fname} if ident != fname else None
                    per = records.setdefault(ent.name, {}).setdefault(scope, {})
                    per.setdefault((ident,), Record(None if keys_only else value, ("redis", name, fname), None,
                                                    False, rv))  # fmt: skip
                    break
                fvalues = loc.hash_field.parse(fname)
                if fvalues is None:
                    continue
                _, rest = _normalise(ent, {**values, **fvalues})
                rv = _raw_vars(ent, fvalues)
                out.add(ent.name, scope, rest, Record(None if keys_only else value, ("redis", name, fname),
                                                      raw_vars=rv))  # fmt: skip
                break
            else:
                out.unparseable.append(
                    Unparseable("redis", group.members[0][0].name, scope, f"{name} [{fname}]",
                                "hash field fits no template")
                )  # fmt: skip


# -- files ------------------------------------------------------------------------------------------------


class FilesReader:
    """Reads the files locators of a model: one scandir walk (symlinks never followed) that names every
    record, then file contents per batch of scopes."""

    tier = "files"

    def __init__(self, root: str, model: Model, *, keys_only: bool = False, check_root: bool = True) -> None:
        if check_root and not os.path.isdir(root):
            raise TierUnavailable(f"files: root {root} is not a directory")
        self.root = os.path.abspath(root)
        self.model = model
        self.keys_only = keys_only
        self.files: list[tuple[Entity, Locator]] = []
        self.dirs: list[tuple[Entity, Locator]] = []
        for ent in model.entities.values():
            loc = ent.locators.get("files")
            if loc is not None:
                (self.dirs if loc.is_directory else self.files).append((ent, loc))
        self.files.sort(key=lambda m: m[1].template.specificity if m[1].template else (0, 0))
        self.found: dict[str, list[tuple[str, RecordKey, str, dict[str, str] | None]]] = {}
        self.unparseable: list[Unparseable] = []
        self._pool: Any = None

    def _scoped_rules(self) -> tuple[Any, dict[str, tuple[Entity, str]], list[tuple[str, Entity, str, str]], bool]:
        """Fast path for templates `{id}/<name>` (the usual layout): the scope is the directory, the rest is
        matched on the file name alone: literal names by dict lookup, `{var}<suffix>` by a suffix test."""
        if not self.files:
            return None, {}, [], False
        scope_var = self.files[0][0].scope_var
        scope_re: Any = None
        literal: dict[str, tuple[Entity, str]] = {}
        suffixed: list[tuple[str, Entity, str, str]] = []
        for ent, loc in self.files:
            t = loc.template
            assert t is not None
            p = t.parts
            if not (len(p) >= 2 and p[0].var == ent.scope_var == scope_var and (p[1].literal or "").startswith("/")):
                return None, {}, [], False
            first = p[1].literal or ""
            if first != "/" and ("/" in first[1:] or len(p) > 2 and p[2].var is not None):
                return None, {}, [], False
            rest = p[1:]
            text = "".join(x.literal or "" for x in rest)
            if all(x.literal is not None for x in rest) and "/" not in text[1:]:
                literal.setdefault(text[1:], (ent, ""))
            elif (len(rest) == 3 and rest[0].literal == "/" and rest[1].var is not None
                  and rest[2].literal is not None and "/" not in rest[2].literal
                  and t._var_regex[rest[1].var].pattern == ".+"):  # fmt: skip
                suffixed.append((rest[2].literal, ent, rest[1].var, t.text))
            else:
                return None, {}, [], False
            pattern = t._var_regex.get(ent.scope_var)
            if scope_re is None and pattern is not None:
                scope_re = pattern.fullmatch
        return scope_re, literal, suffixed, True

    def list_scopes(self) -> set[str]:
        """Walk the root once, naming every record; returns the scopes present."""
        self.found = {}
        self.unparseable = []
        scope_match, literal, suffixed, fast = self._scoped_rules()
        files = [(ent, ent.name, loc.template.regex.fullmatch) for ent, loc in self.files if loc.template]
        found = self.found
        for rel, is_dir in _walk(self.root, top_level_fast=fast):
            if fast and is_dir and "/" not in rel:
                self._generic(rel, True, files)
                if scope_match is not None and scope_match(rel):
                    self._list_scope_dir(rel, literal, suffixed)
                else:
                    for sub, sub_is_dir in _walk(self.root, start=rel):
                        self._generic(sub, sub_is_dir, files)
                continue
            self._generic(rel, is_dir, files)
        return set(found)

    def _generic(self, rel: str, is_dir: bool, files: list[tuple[Entity, str, Any]]) -> None:
        found = self.found
        if is_dir:
            for ent, loc in self.dirs:
                assert loc.template is not None
                values = loc.template.parse(rel + "/")
                if values is not None:
                    scope, _ = _normalise(ent, values)
                    found.setdefault(scope, []).append((ent.name, (), rel + "/", None))
            return
        for ent, name, match in files:
            m = match(rel)
            if m is None:
                continue
            values = m.groupdict()
            scope, rest = _normalise(ent, values)
            found.setdefault(scope, []).append((name, rest, rel, _raw_vars(ent, values)))
            return
        self.unparseable.append(self._unparseable(rel))

    def _list_scope_dir(
        self, scope: str, literal: dict[str, tuple[Entity, str]], suffixed: list[tuple[str, Entity, str, str]]
    ) -> None:
        """Name the files of one `{id}/` directory (subdirectories go through the generic path)."""
        out = self.found.setdefault(scope, [])
        prefix = scope + "/"
        try:
            it = os.scandir(os.path.join(self.root, scope))
        except OSError as exc:
            raise TierError(f"files: cannot list {scope}: {exc.strerror}") from None
        with it:
            entries = list(it)
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
        if len(names) != len(entries):
            for e in entries:
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".statekit-"):
                    for rel, is_dir in _walk(self.root, start=prefix + e.name):
                        if not is_dir:
                            self.unparseable.append(self._unparseable(rel))
        names = [n for n in names if not (n.startswith(".statekit-") or n.endswith(".statekit-tmp"))]
        rest = names
        if literal:
            rest = []
            for n in names:
                hit = literal.get(n)
                if hit is None:
                    rest.append(n)
                else:
                    out.append((hit[0].name, (), prefix + n, None))
        for suffix, ent, var, _text in suffixed:
            cut = len(suffix)
            norm = ent.normalizers.get(var)
            name = ent.name
            matched = [n for n in rest if n.endswith(suffix) and len(n) > cut]
            if norm is None:
                out.extend([(name, (n[:-cut],), prefix + n, None) for n in matched])
            else:
                for n in matched:
                    raw = n[:-cut]
                    ident = norm(raw)
                    out.append((name, (ident,), prefix + n, None if ident == raw else {var: raw}))
            if len(matched) != len(rest):
                taken = set(matched)
                rest = [n for n in rest if n not in taken]
            else:
                rest = []
        for n in rest:
            self.unparseable.append(self._unparseable(prefix + n))

    def _unparseable(self, rel: str) -> Unparseable:
        parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for ent, loc in self.dirs:
            assert loc.template is not None
            values = loc.template.parse(parent) if parent else None
            if values is not None:
                return Unparseable("files", ent.name, _normalise(ent, values)[0], rel, "file name fits no template")
        name = self.files[0][0].name if self.files else (self.dirs[0][0].name if self.dirs else "")
        return Unparseable("files", name, None, rel, "path fits no template")

    def load(self, scopes: Iterable[str]) -> TierData:
        """Read the files of these scopes (contents unless keys-only); reads run on a few threads, since
        open/read/close release the GIL and the syscalls, not Python, are the cost."""
        out = TierData("files")
        presence = {ent.name for ent in self.model.entities.values() if ent.presence}
        records = out.records
        wanted = [sc for sc in scopes if sc in self.found]
        if self.keys_only:
            contents: Iterable[list[bytes | None] | None] = (None for _ in wanted)
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="statekit-files")
            contents = self._pool.map(lambda sc: self._read_scope(sc, presence), wanted)
        for scope, data in zip(wanted, contents):
            for i, (name, rest, rel, rv) in enumerate(self.found[scope]):
                stored = data[i] if data is not None else None
                if data is not None and stored is None and name not in presence:
                    continue  # vanished since the walk
                per = records.setdefault(name, {}).setdefault(scope, {})
                if rest not in per:
                    per[rest] = Record(stored, ("files", rel), None, False, rv)
        return out

    def _read_scope(self, scope: str, presence: set[str]) -> list[bytes | None]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return [None if name in presence else _read_at(root_fd, rel) for name, _, rel, _ in self.found[scope]]
        finally:
            os.close(root_fd)

    def close(self) -> None:
        """Stop the reading threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_at(root_fd: int, rel: str) -> bytes | None:
    """A file's bytes relative to the root (never through a symlink at the last component), None if gone."""
    try:
        fd = os.open(rel, _READ_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TierError(f"files: cannot read {rel}: {exc.strerror}") from None
    try:
        chunks = []
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
            if len(data) < 1 << 16:
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
    finally:
        os.close(fd)


def read_file(root: str, rel: str) -> bytes | None:
    """A file's bytes (never through a symlink), or None when it is gone."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _read_at(fd, rel)
    finally:
        os.close(fd)


def _walk(root: str, *, top_level_fast: bool = False, start: str = "") -> Iterator[tuple[str, bool]]:
    """(relative path, is_dir) for every directory and regular file under root, symlinks not followed.
    With top_level_fast the caller lists the top-level directories itself (only they are yielded)."""
    stack = [start]
    while stack:
        rel_dir = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel_dir) if rel_dir else root)
        except OSError as exc:
            raise TierError(f"files: cannot list {rel_dir or root}: {exc.strerror}") from None
        prefix = rel_dir + "/" if rel_dir else ""
        with it:
            for entry in it:
                name = entry.name
                if name.startswith(".statekit-") or name.endswith(".statekit-tmp"):
                    continue  # our own staging and temporary files
                rel = prefix + name
                if entry.is_dir(follow_symlinks=False):
                    yield rel, True
                    if not (top_level_fast and not rel_dir):
                        stack.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    yield rel, False


# -- re-reading suspects and opening the live tiers -------------------------------------------------------


def refresh_db(reader: DbReader, scopes: list[str]) -> None:
    """Re-read the db side (it is small and already streamed once)."""
    reader.list_scopes()


def refresh_redis(reader: RedisReader, scopes: list[str]) -> None:
    """Re-derive the keys of these scopes from the templates that need nothing but the scope."""
    for scope in scopes:
        entries = []
        for g in reader.groups:
            ent = g.members[0][0]
            if set(g.template.vars) == {ent.scope_var} and ent.scope_var not in ent.normalizers:
                try:
                    name = g.template.render({ent.scope_var: scope})
                except ValueError:
                    continue
                entries.append((g, {ent.scope_var: scope}, name.encode("utf-8", "surrogateescape")))
            else:
                entries.extend(e for e in reader.keys.get(scope, []) if e[0] is g)
        reader.keys[scope] = entries


def refresh_files(reader: FilesReader, scopes: list[str]) -> None:
    """Re-walk the directories of these scopes (the whole root when the templates do not say where)."""
    reader.list_scopes()


@dataclass
class LiveTiers:
    """The live readers of one audit and how to re-read suspects."""

    sources: dict[str, Any]
    skipped: list[str]

    def refresh(self, scopes: list[str]) -> None:
        """Re-list the given scopes in every tier (before a re-check round)."""
        for tier, src in self.sources.items():
            {"db": refresh_db, "redis": refresh_redis, "files": refresh_files}[tier](src, scopes)

    def close(self) -> None:
        """Release connections."""
        for src in self.sources.values():
            if isinstance(src, DbReader):
                src.engine.dispose()
            elif isinstance(src, (RedisReader, FilesReader)):
                src.close()


def open_redis(url: str) -> Any:
    """A redis-py client for a URL (bytes replies); TierUnavailable when the server does not answer."""
    import redis

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=60)
        client.ping()
    except ValueError:
        raise ConfigError(f"redis url {shown}: not a valid Redis URL") from None
    except Exception as exc:
        raise TierUnavailable(f"redis {shown}: cannot connect ({type(exc).__name__})") from None
    return client


def open_live(
    model: Model,
    *,
    db_url: str | None,
    redis_url: str | None,
    files_root: str | None,
    keys_only: bool = False,
    tiers: Iterable[str] | None = None,
) -> LiveTiers:
    """Readers for every tier the model uses and the configuration names; the rest are listed as skipped."""
    used = {t for ent in model.entities.values() for t in ent.locators}
    if tiers is not None:
        used &= set(tiers)
    sources: dict[str, Any] = {}
    skipped: list[str] = []
    if "db" in used:
        if db_url:
            sources["db"] = DbReader(open_engine(db_url), model, keys_only=keys_only)
        else:
            skipped.append("db")
    if "redis" in used:
        if redis_url:
            client = open_redis(redis_url)
            client.statekit_url = redis_url
            sources["redis"] = RedisReader(client, model, keys_only=keys_only)
        else:
            skipped.append("redis")
    if "files" in used:
        if files_root:
            sources["files"] = FilesReader(files_root, model, keys_only=keys_only)
        else:
            skipped.append("files")
    return LiveTiers(sources, skipped)
