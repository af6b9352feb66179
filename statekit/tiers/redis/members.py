"""The redis tier's member decoder: `redis/db<N>.<seq>.rec` members as whole keys, big keys reassembled from
their chunks (records.py describes the records)."""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass

from statekit.model import Member
from statekit.tiers.redis.records import (
    NO_EXPIRY,
    TAG_BEGIN,
    TAG_CHUNK,
    TAG_DUMP,
    TAG_END,
    iter_records,
    parse_member_db,
    read_member,
)

PREFIX = "redis/"


@dataclass
class RedisKey:
    """One archived key. A whole key has its DUMP `payload` (a string stored by value gets one built); a big
    key has `items`, its elements in archive order (a hash: field, value, field, value, ...)."""

    db: int
    key: bytes
    type: int
    expire_at: int = NO_EXPIRY
    payload: bytes | None = None
    items: list[bytes] | None = None

    @property
    def big(self) -> bool:
        """True for a key archived in chunks."""
        return self.items is not None


class RedisDecoder:
    """Decodes `redis/` members (see statekit.tiers.base.MemberDecoder). `dbs`: only these databases.

    A big key is yielded at its end record (its chunks may span members); one whose end record is missing
    is yielded by `finish`. Undo archives' records of absent keys are not keys and are not yielded."""

    prefix = PREFIX

    def __init__(self, dbs: Container[int] | None = None) -> None:
        self._dbs = dbs
        self._big: dict[tuple[int, bytes], RedisKey] = {}

    def feed(self, member: Member) -> Iterator[RedisKey]:
        db = parse_member_db(member.name)
        if db is None or (self._dbs is not None and db not in self._dbs):
            return
        header, body = read_member(member.stream, member.name)
        big = self._big
        for rec in iter_records(body, member.name):
            if rec.tag == TAG_DUMP:
                yield RedisKey(header.db, rec.key, rec.type, rec.expire_at, payload=rec.value)
            elif rec.tag == TAG_BEGIN:
                big[(header.db, rec.key)] = RedisKey(header.db, rec.key, rec.type, rec.expire_at, items=[])
            elif rec.tag == TAG_CHUNK:
                pending = big.get((header.db, rec.key))
                if pending is not None and pending.items is not None:
                    pending.items.extend(rec.items or [])
            elif rec.tag == TAG_END:
                done = big.pop((header.db, rec.key), None)
                if done is not None:
                    yield done

    def finish(self) -> Iterator[RedisKey]:
        pending = list(self._big.values())
        self._big.clear()
        yield from pending
