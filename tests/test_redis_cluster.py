"""Redis Cluster: snapshot from a real 3-primary cluster, restore across cluster sizes and to/from standalone."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.config import RedisConfig
from tests.redis_support import client, put_back, same_state, state, take
from tests.servers import RedisProcess, free_port
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def _cluster_tools() -> None:
    """A local cluster needs redis-server and redis-cli on PATH (skip, or fail under STATEKIT_REQUIRE_TOOLS=1)."""
    require_tool("redis-server", "redis-cli")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            port = port % 45000 + 10000
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def cluster_cmd(r: redis.Redis, *args: object) -> Any:
    """CLUSTER <args> on one node (redis-py's execute_command is not annotated)."""
    return r.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]


class Cluster:
    def __init__(self, n: int):
        self.nodes = [
            RedisProcess(
                port=_cluster_port(), extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            )
            for _ in range(n)
        ]

    def start(self) -> Cluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        if len(addrs) >= 3:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        else:  # redis-cli wants at least 3 primaries: assign slots and introduce the nodes by hand
            step = 16384 // len(self.nodes)
            for i, node in enumerate(self.nodes):
                r = redis.Redis(port=node.port)
                last = 16383 if i == len(self.nodes) - 1 else (i + 1) * step - 1
                cluster_cmd(r, "ADDSLOTSRANGE", i * step, last)
                cluster_cmd(r, "MEET", "127.0.0.1", self.nodes[0].port)
                r.close()
        deadline = time.monotonic() + 30
        for node in self.nodes:
            r = redis.Redis(port=node.port)
            while r.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not become ok")
                time.sleep(0.1)
            r.close()
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def flush(self) -> None:
        for node in self.nodes:
            redis.Redis(port=node.port).flushall()

    def state(self) -> dict[bytes, tuple[bytes, object, int]]:
        out = {}
        for node in self.nodes:
            out.update(state(f"redis://127.0.0.1:{node.port}/0"))
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster3() -> Iterator[Cluster]:
    c = Cluster(3).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def cluster2() -> Iterator[Cluster]:
    c = Cluster(2).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def standalone() -> Iterator[str]:
    """A private standalone server: tests running at the same time on the shared one cannot touch it."""
    server = RedisProcess().start()
    yield server.url
    server.stop()


def _fill(rc: redis.RedisCluster) -> None:
    for i in range(3000):
        rc.set(b"k:%d\xff" % i, b"v%d" % i)
    rc.hset(b"{tag}h", mapping={b"f%d" % i: b"x" for i in range(50)})
    rc.rpush(b"{tag}l", *[b"%d" % i for i in range(30_000)])  # big: chunked, rebuilt under a same-slot name
    rc.set(b"ttl", b"t", px=600_000)


def test_cluster_to_smaller_cluster_and_standalone(
    cluster3: Cluster, cluster2: Cluster, standalone: str, tmp_path: Path
) -> None:
    cluster3.flush()
    cluster2.flush()
    rc = cluster3.client()
    _fill(rc)
    rc.close()
    archive, summary = take(tmp_path / "c.statekit", RedisConfig(url=cluster3.url, big_key_elements=20_000))
    assert summary.details["mode"] == "cluster"
    assert summary.details["primaries"] == 3
    assert summary.counts["keys"] == 3003 and summary.counts["big_keys"] == 1

    rep = put_back(archive, cluster2.url)
    assert rep.counts["created"] == 3003 and rep.counts["failed"] == 0
    same_state(cluster3.state(), cluster2.state(), tol_ms=10_000)

    rep = put_back(archive, standalone)
    assert rep.counts["created"] == 3003
    same_state(cluster3.state(), state(standalone), tol_ms=10_000)

    # standalone -> cluster, with the existing keys replaced and MOVED followed by the router
    cluster2.flush()
    with client(standalone) as r:
        r.move(b"ttl", 5)  # a key in another db: mapped onto the cluster's only db below
    from_standalone, _ = take(tmp_path / "s.statekit", RedisConfig(url=standalone, dbs=[0, 5]))
    rc2 = cluster2.client()
    rc2.set(b"k:1\xff", b"old")
    rc2.close()
    rep = put_back(from_standalone, cluster2.url, db_map={5: 0}, undo_path=tmp_path / "undo.statekit")
    assert rep.counts["created"] == 3002 and rep.counts["replaced"] == 1
    same_state(cluster3.state(), cluster2.state(), tol_ms=10_000)


def test_router_follows_moved_and_ask(cluster2: Cluster) -> None:
    from statekit.tiers.redis.cluster import Router
    from statekit.tiers.redis.keyspace import key_slot
    from statekit.tiers.redis.resp import RespConnection, pack

    cluster2.flush()
    seed = RespConnection(cluster2.url)
    router = Router(seed, cluster=True)
    try:
        # MOVED: make the router believe node A owns every slot; keys of node B come back MOVED.
        node_a = router.node_of(b"x")
        router._slots = [node_a] * len(router._slots)
        keys = [b"moved:%d" % i for i in range(200)]
        replies = router.call(keys, [pack(b"SET", k, b"v") for k in keys])
        assert replies == [b"OK"] * 200
        rc = cluster2.client()
        assert all(rc.get(k) == b"v" for k in keys)

        # ASK: the slot of "ask-me" is migrating from its owner to the other node; the key exists on
        # neither, so the owner answers ASK and the router must retry on the other node with ASKING.
        key = b"ask-me"
        slot = key_slot(key)
        owner_port = router.node_of(key)[1]
        owner = next(n for n in cluster2.nodes if n.port == owner_port)
        other = next(n for n in cluster2.nodes if n.port != owner_port)
        r_owner, r_other = redis.Redis(port=owner.port), redis.Redis(port=other.port)
        owner_id = cluster_cmd(r_owner, "MYID").decode()
        other_id = cluster_cmd(r_other, "MYID").decode()
        cluster_cmd(r_other, "SETSLOT", slot, "IMPORTING", owner_id)
        cluster_cmd(r_owner, "SETSLOT", slot, "MIGRATING", other_id)
        assert router.call([key], [pack(b"SET", key, b"asked")]) == [b"OK"]
        assert cluster_cmd(r_owner, "COUNTKEYSINSLOT", slot) == 0
        assert cluster_cmd(r_other, "COUNTKEYSINSLOT", slot) == 1  # written via ASK
        for r in (r_owner, r_other):
            cluster_cmd(r, "SETSLOT", slot, "NODE", other_id)
        _wait_for_slot_owner(cluster2, slot, other.port)
        assert redis.RedisCluster(host="127.0.0.1", port=other.port).get(key) == b"asked"
        rc.close()
        r_owner.close()
        r_other.close()
    finally:
        router.close()
        seed.close()


def _wait_for_slot_owner(cluster: Cluster, slot: int, port: int, timeout: float = 60) -> None:
    """Wait until every node's CLUSTER SLOTS gives `slot` to the node on `port` (the timeout only turns a
    hang into a failure)."""

    def owners() -> set[int]:
        seen = set()
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as r:
                for start, end, primary, *_ in cluster_cmd(r, "SLOTS"):
                    if start <= slot <= end:
                        seen.add(int(primary[1]))
        return seen

    deadline = time.monotonic() + timeout
    while owners() != {port}:
        assert time.monotonic() < deadline, f"slot {slot} never settled on port {port}: {owners()}"
        time.sleep(0.05)


def test_every_type_from_standalone_into_three_primaries(cluster3: Cluster, standalone: str, tmp_path: Path) -> None:
    # The mixed keyspace of the round-trip test (binary names, empty and integer strings, every type, a stream
    # with a group and a pending entry, TTLs) plus big keys read in chunks, spread over three primaries.
    from tests.test_redis_roundtrip import _fill as fill_every_type

    cluster3.flush()
    with client(standalone) as r:
        r.flushall()
    fill_every_type(standalone)
    with client(standalone) as r:
        r.hset(b"bighash", mapping={b"f%d" % i: b"%d" % i for i in range(25_000)})
        r.sadd(b"bigset\xff", *[b"m%d" % i for i in range(25_000)])
        r.pexpire(b"bigset\xff", 900_000)
    archive, summary = take(tmp_path / "mixed.statekit", RedisConfig(url=standalone, big_key_elements=20_000))
    assert summary.counts["big_keys"] == 2
    rep = put_back(archive, cluster3.url)
    assert rep.counts["failed"] == 0 and rep.counts["created"] == summary.counts["keys"]
    restored = cluster3.state()
    same_state(state(standalone), restored, tol_ms=10_000)
    # the keys really are spread: every primary holds some
    assert all(redis.Redis(port=node.port).dbsize() > 0 for node in cluster3.nodes)
