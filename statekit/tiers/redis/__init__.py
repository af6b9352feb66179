"""The redis tier: snapshot keys of a Redis server or Cluster into archive members, and restore them.

Member format: docs/FORMAT.md ("redis members") (records.py). Wire: resp.py. Cross-version payloads: portable.py.
"""

from __future__ import annotations

from statekit.tiers.redis.restore import plan_redis_restore, restore_redis
from statekit.tiers.redis.snapshot import snapshot_redis

__all__ = ["plan_redis_restore", "restore_redis", "snapshot_redis"]
