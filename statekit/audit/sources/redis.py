"""The live redis tier for the audit: SCAN per key template, then per batch of scopes one pipelined round
trip of packed commands parsed by hiredis (the redis tier's RespConnection)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from statekit.audit.entities import Entity, Locator, Model, RedisLocator
from statekit.audit.sources.records import (
    Record,
    RecordKey,
    TierData,
    Unparseable,
    connect_error_text,
    first_line,
    normalise,
    raw_vars,
)
from statekit.audit.templates import Template, decode_all, transform_all
from statekit.config import redact_url
from statekit.errors import ConfigError, TierError, TierUnavailable


def url_db(url: str | None) -> int | None:
    """The database an audit reads of an archive for the Redis URL `url`: the one it names, 0 when it names
    none, None without a URL (then an archive's first database)."""
    if not url:
        return None
    tail = url.split("?", 1)[0].rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() and url.count("/") > 2 else 0


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
        from urllib.parse import unquote, urlsplit

        password = unquote(urlsplit(url).password or "") or None
        raise TierUnavailable(f"redis {shown}: cannot connect: {connect_error_text(exc, password)}") from None
    return client


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
    def has_presence(self) -> bool:
        """A member is the key itself (no hash field), e.g. the instance hash as a presence record."""
        return any(loc.hash_field is None for _, loc in self.members)

    @property
    def hashed(self) -> bool:
        return bool(self.literal_fields or self.pattern_fields)

    @property
    def literal_only(self) -> bool:
        return bool(self.literal_fields) and not self.pattern_fields


class RedisReader:
    """Reads the redis locators of a model: SCAN per key template, then per batch one pipelined round trip
    of packed commands (HGETALL, HMGET when only literal fields are wanted, GET, or EXISTS)."""

    tier = RedisLocator.kind

    def __init__(self, client: Any, model: Model, *, keys_only: bool = False, scan_count: int = 1000) -> None:
        self.client = client
        self.model = model
        self.keys_only = keys_only
        self.scan_count = scan_count
        groups: dict[str, _KeyGroup] = {}
        for ent in model.entities.values():
            loc = ent.locators.get(self.tier)
            if loc is not None and loc.template is not None:
                groups.setdefault(loc.template.text, _KeyGroup(loc.template, [])).members.append((ent, loc))
        self.groups = sorted(groups.values(), key=lambda g: g.template.specificity)
        for g in self.groups:
            g.prepare()
        self.keys: dict[str, list[tuple[_KeyGroup, dict[str, str], bytes]]] = {}
        self.unparseable: list[Unparseable] = []
        self._resp: Any = None

    @classmethod
    def open(cls, url: str, model: Model, *, keys_only: bool = False) -> RedisReader:
        """A reader of the Redis database at this URL."""
        client = open_redis(url)
        client.statekit_url = url
        return cls(client, model, keys_only=keys_only)

    def _conn(self) -> Any:
        if self._resp is None:
            from statekit.tiers.redis.resp import RespConnection

            kw = self.client.connection_pool.connection_kwargs
            url = getattr(self.client, "statekit_url", None)
            self._resp = RespConnection(url) if url else RespConnection(
                f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
            )  # fmt: skip
        return self._resp

    def after_fork(self) -> None:
        """In a forked audit worker: open a connection of its own (the parent's stays the parent's)."""
        self._resp = None

    def close(self) -> None:
        """Close the connections."""
        if self._resp is not None:
            self._resp.close()
        self.client.close()

    def refresh(self, scopes: list[str]) -> None:
        """Re-derive the keys of these scopes (before a re-check) from the templates that need nothing but
        the scope."""
        for scope in scopes:
            entries = []
            for g in self.groups:
                ent = g.members[0][0]
                if set(g.template.vars) == {ent.scope_var} and ent.scope_var not in ent.normalizers:
                    try:
                        name = g.template.render({ent.scope_var: scope})
                    except ValueError:
                        continue
                    entries.append((g, {ent.scope_var: scope}, name.encode("utf-8", "surrogateescape")))
                else:
                    entries.extend(e for e in self.keys.get(scope, []) if e[0] is g)
            self.keys[scope] = entries

    def notes(self, model: Model, entity_counts: Mapping[tuple[str, str], int]) -> list[str]:
        """When the root entity's key template matches no key but the same shape exists under another prefix
        (`<other>:instance:<uuid>`), say so: the configured prefix is probably not the server's."""
        tier = self.tier
        root = next((e for e in model.entities.values() if e.parent is None and tier in e.locators), None)
        if root is None or entity_counts.get((root.name, tier)):
            return []
        tpl = root.locators[tier].template
        if tpl is None or not tpl.text.startswith("{") or tpl.text.count("{") < 2:
            return []
        middle = tpl.text[tpl.text.index("}") + 1 : tpl.text.index("{", 1)]
        if not middle:
            return []
        shape = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        others: dict[str, int] = {}
        for i, key in enumerate(self.client.scan_iter(match=f"*{middle}*", count=1000)):
            if i >= 100_000:
                break
            prefix, _, rest = key.decode("utf-8", "replace").partition(middle)
            if shape.fullmatch(rest):
                others[prefix] = others.get(prefix, 0) + 1
        if not others:
            return []
        lit = tpl.literal_prefix()
        ours = lit[: -len(middle)] if lit.endswith(middle) else lit
        shown = ", ".join(f"{p!r} ({n:,})" for p, n in sorted(others.items(), key=lambda x: -x[1])[:5])
        return [
            f"no {ours}{middle}<id> key in Redis, but {shown} use the same shape: is the prefix right? "
            "(set profile_options.prefix, Evolution's CACHE_REDIS_PREFIX_KEY, or profile_options.env_file)"
        ]

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
                        Unparseable(self.tier, group.members[0][0].name, None, name,
                                    f"key fits no template ({group.template.text})")
                    )  # fmt: skip
        return set(self.keys)

    def _scan(self, pattern: str) -> Iterator[bytes]:
        try:
            yield from self.client.scan_iter(match=pattern, count=self.scan_count)
        except Exception as exc:
            raise TierError(f"redis: SCAN failed ({type(exc).__name__}: {first_line(exc)})") from None

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
        out = TierData(self.tier)
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
                    Unparseable(self.tier, group.members[0][0].name, scope, name, f"unexpected type ({reply})")
                )
                continue
            if group.literal_only and isinstance(reply, list):
                present = [(f.encode(), v) for f, v in zip(group.literal_fields, reply) if v is not None]
                if not present and not group.has_presence:
                    continue
                # HMGET cannot tell a hash without these fields from a deleted key: the SCAN saw the key, so
                # a presence entity (the instance hash itself) still has its record
                self._records(out, group, values, scope, name, dict(present))
                continue
            if not reply:
                continue  # deleted since the SCAN
            self._records(out, group, values, scope, name, reply)
        return out

    def _direct(
        self,
        out: TierData,
        ent: Entity,
        literal: dict[str, tuple[Entity, Locator]],
        scope: str,
        name: str,
        fields: list[bytes],
        values: list[bytes] | None,
    ) -> list[tuple[bytes, bytes]]:
        """The common layout (one `{var}` field template plus literal fields) without a per-field Python loop;
        returns the literal fields (with their values) for the generic path."""
        lit: list[tuple[bytes, bytes]] = []
        lit_b = {k.encode("utf-8", "surrogateescape") for k in literal}
        if lit_b and not lit_b.isdisjoint(fields):
            mask = [f in lit_b for f in fields]
            lit = [(f, v) for f, v, m in zip(fields, values or repeat(b""), mask) if m]
            fields = [f for f, m in zip(fields, mask) if not m]
            if values is not None:
                values = [v for v, m in zip(values, mask) if not m]
        fnames = decode_all(fields)
        fvar = ent.vars[1]
        norm = ent.normalizers.get(fvar)
        idents = transform_all(norm, fnames) if norm else fnames
        stored: Iterable[bytes | None] = repeat(None) if self.keys_only or values is None else values
        tier = self.tier
        recs = [
            Record(v, (tier, name, n), None, False, None if i == n else {fvar: n})
            for v, n, i in zip(stored, fnames, idents)
        ]
        per = out.records.setdefault(ent.name, {}).setdefault(scope, {})
        fresh: dict[RecordKey, Record] = dict(
            zip([(i,) for i in reversed(idents)], reversed(recs))
        )  # the first of equal names wins
        if per:
            fresh.update(per)
        per.update(fresh)
        return lit

    def _records(
        self, out: TierData, group: _KeyGroup, values: dict[str, str], scope: str, name: str, reply: Any
    ) -> None:
        tier = self.tier
        for ent, loc in group.members:
            if loc.hash_field is None:
                _, rest = normalise(ent, values)
                stored = None if ent.presence or self.keys_only or not isinstance(reply, bytes) else reply
                out.add(ent.name, scope, rest, Record(stored, (tier, name)))
        if not group.hashed or not isinstance(reply, (list, dict)):
            return
        keys_only = self.keys_only
        fields: list[bytes]
        field_values: list[bytes] | None
        if isinstance(reply, dict):  # RESP3 map, or a hash from an archive
            fields, field_values = list(reply), list(reply.values())
        elif keys_only:  # HKEYS
            fields, field_values = reply, None
        else:  # RESP2 flat HGETALL reply
            fields, field_values = reply[::2], reply[1::2]
        literal = group.literal_fields
        patterns = group.pattern_fields
        records = out.records
        pairs: Iterable[tuple[bytes, bytes]]
        if len(patterns) == 1 and patterns[0][2]:
            pairs = self._direct(out, patterns[0][0], literal, scope, name, fields, field_values)
        else:
            pairs = zip(fields, repeat(b"") if field_values is None else field_values)
        for fraw, value in pairs:
            fname = fraw.decode("utf-8", "surrogateescape")
            hit = literal.get(fname)
            if hit is not None:
                ent, loc = hit
                out.add(ent.name, scope, (), Record(None if keys_only else value, (tier, name, fname)))
                continue
            for ent, loc, direct in patterns:
                assert loc.hash_field is not None
                if direct:
                    fvar = ent.vars[1]
                    norm = ent.normalizers.get(fvar)
                    ident = norm(fname) if norm else fname
                    rv = {fvar: fname} if ident != fname else None
                    per = records.setdefault(ent.name, {}).setdefault(scope, {})
                    per.setdefault((ident,), Record(None if keys_only else value, (tier, name, fname), None,
                                                    False, rv))  # fmt: skip
                    break
                fvalues = loc.hash_field.parse(fname)
                if fvalues is None:
                    continue
                _, rest = normalise(ent, {**values, **fvalues})
                rv = raw_vars(ent, fvalues)
                out.add(ent.name, scope, rest, Record(None if keys_only else value, (tier, name, fname),
                                                      raw_vars=rv))  # fmt: skip
                break
            else:
                out.unparseable.append(
                    Unparseable(tier, group.members[0][0].name, scope, f"{name} [{fname}]",
                                "hash field fits no template")
                )  # fmt: skip
