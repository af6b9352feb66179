"""Redis Cluster: finding the primaries and routing pipelined commands to the node that owns each key.

A `Router` gives standalone servers and clusters one interface: `send` a batch of keys with one packed
command each, later `wait` for its replies in the same order. On a cluster the batch is split per node by hash slot;
MOVED (the slot lives elsewhere now: update the map) and ASK (the slot is migrating: ask once with ASKING)
replies are followed on separate connections so they never mix with replies still in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from statekit.errors import TierError
from statekit.tiers.redis.keyspace import SLOTS, key_slot
from statekit.tiers.redis.resp import ReplyError, RespConnection

_MAX_REDIRECTS = 8

Node = tuple[str, int]


def slot_table(conn: RespConnection) -> list[tuple[int, int, Node]]:
    """(first slot, last slot, primary) ranges from CLUSTER SLOTS (works on 6.2 and 7.x)."""
    out = []
    for entry in conn.call(b"CLUSTER", b"SLOTS"):
        start, end, primary = entry[0], entry[1], entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        out.append((int(start), int(end), (host or "127.0.0.1", int(primary[1]))))
    return out


def primaries(conn: RespConnection) -> list[Node]:
    """The primary nodes that own slots, in a stable order."""
    return sorted({node for _, _, node in slot_table(conn)})


@dataclass
class Pending:
    """A batch written by Router.send whose replies have not been read yet."""

    groups: list[tuple[RespConnection, list[int]]]
    cmds: Sequence[bytes]


class Router:
    """Sends pipelined commands to one standalone database or to the owners of their slots in a cluster."""

    def __init__(self, seed: RespConnection, *, cluster: bool, db: int = 0):
        self.cluster = cluster
        self.db = db
        self._seed = seed
        self._conns: dict[Node, RespConnection] = {}
        self._side: dict[Node, RespConnection] = {}
        self._slots: list[Node | None] = [None] * SLOTS
        if cluster:
            self.refresh()
            self.single: RespConnection | None = None
        else:
            self.single = seed.other_db(db)

    def refresh(self) -> None:
        """Reload the slot map from the cluster."""
        source = next(iter(self._conns.values()), self._seed)
        for start, end, node in slot_table(source):
            for s in range(start, end + 1):
                self._slots[s] = node

    def nodes(self) -> list[RespConnection]:
        """One connection per primary (standalone: the one connection)."""
        if self.single is not None:
            return [self.single]
        return [self._conn(n) for n in sorted({n for n in self._slots if n is not None})]

    def _conn(self, node: Node) -> RespConnection:
        conn = self._conns.get(node)
        if conn is None:
            conn = self._conns[node] = self._seed.sibling(node[0], node[1])
        return conn

    def _side_conn(self, node: Node) -> RespConnection:
        conn = self._side.get(node)
        if conn is None:
            conn = self._side[node] = self._seed.sibling(node[0], node[1], self.db)
        return conn

    def node_of(self, key: bytes) -> Node:
        """The primary that owns `key` according to the current map."""
        node = self._slots[key_slot(key)]
        if node is None:
            raise TierError(f"redis cluster: slot {key_slot(key)} is not served by any node")
        return node

    def send(self, keys: Sequence[bytes], cmds: Sequence[bytes]) -> Pending:
        """Write a batch (cmds[i] is one packed command on keys[i]); returns a handle for `wait`."""
        if self.single is not None:
            if cmds:
                self.single.send(b"".join(cmds))
            return Pending([(self.single, [])], cmds)
        by_node: dict[Node, list[int]] = {}
        for i, key in enumerate(keys):
            by_node.setdefault(self.node_of(key), []).append(i)
        groups = []
        for node, idxs in by_node.items():
            conn = self._conn(node)
            conn.send(b"".join([cmds[i] for i in idxs]))
            groups.append((conn, idxs))
        return Pending(groups, cmds)

    def wait(self, pending: Pending) -> list[Any]:
        """The replies of a batch, in the order it was sent (MOVED and ASK already followed)."""
        if self.single is not None:
            return self.single.read(len(pending.cmds))
        replies: list[Any] = [None] * len(pending.cmds)
        for conn, idxs in pending.groups:
            for i, r in zip(idxs, conn.read(len(idxs))):
                replies[i] = r
        for i, r in enumerate(replies):
            if isinstance(r, ReplyError):
                text = str(r)
                if text.startswith(("MOVED ", "ASK ")):
                    replies[i] = self._redirect(pending.cmds[i], text)
        return replies

    def call(self, keys: Sequence[bytes], cmds: Sequence[bytes]) -> list[Any]:
        """send + wait."""
        return self.wait(self.send(keys, cmds))

    def _redirect(self, cmd: bytes, text: str) -> Any:
        for _ in range(_MAX_REDIRECTS):
            kind, _slot, where = text.split(" ", 2)
            host, _, port = where.rpartition(":")
            node = (host or "127.0.0.1", int(port))
            conn = self._side_conn(node)
            if kind == "MOVED":
                self.refresh()
                conn.send(cmd)
                reply = conn.read_one()
            else:
                conn.send(b"*1\r\n$6\r\nASKING\r\n" + cmd)
                reply = conn.read(2)[1]
            if not (isinstance(reply, ReplyError) and str(reply).startswith(("MOVED ", "ASK "))):
                return reply
            text = str(reply)
        raise TierError("redis cluster: too many MOVED/ASK redirects (is the cluster resharding?)")

    def close(self) -> None:
        """Close every connection this router opened."""
        for conn in [*self._conns.values(), *self._side.values()]:
            conn.close()
        if self.single is not None:
            self.single.close()
