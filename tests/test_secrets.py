"""Secrets stay secret: every command runs with known secrets (a database password in the URL, a Redis
`requirepass`, a passphrase in STATEKIT_PASSPHRASE, recognisable key material in every tier), and none of them
appears in stdout, stderr, JSON logs, `--json` output, metrics files, sidecars or the archive's own snapshot.json
and MANIFEST.json. Archives and restored key files are 0600; passphrases are never taken from argv; a loose
identity file draws a warning; encryption is never skipped without --no-encryption."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from statekit.archive.keys import ScryptIdentity, generate_identity
from statekit.archive.reader import Archive
from tests.servers import RedisProcess, free_port
from tests.tools import age_decrypt, tar_extract, zstd_decompress

STATEKIT = str(Path(sys.executable).parent / "statekit")
TOKEN = secrets.token_hex(6)
DB_PASSWORD = f"dbpw-{TOKEN}-Zq9"
REDIS_PASSWORD = f"rpw-{TOKEN}-Xk7"
PASSPHRASE = f"pp-{TOKEN}-horse"
KEY_MATERIAL = f"KEYMATERIAL-{TOKEN}"
ROLE = f"sk_secret_{TOKEN}"
AGE_MAGIC = b"age-encryption.org/v1\n"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Transcript:
    """Everything the commands printed or wrote outside the archives' data members."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, text: str) -> None:
        self.texts[f"{len(self.texts):02d} {label}"] = text

    def leaks(self, needles: dict[str, str]) -> list[str]:
        return [f"{name} in {label}" for label, text in self.texts.items() for name, needle in needles.items()
                if needle in text]  # fmt: skip


def run_cli(log: Transcript, *args: str, env: dict[str, str] | None = None, code: int | None = 0,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run statekit, record its output in `log`, check the exit code (None: any)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_") or k.startswith("STATEKIT_TEST")}
    full.update(env or {})
    proc = subprocess.run([STATEKIT, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300)
    label = " ".join(a for a in args[:3])
    log.add(f"{label} stdout", proc.stdout)
    log.add(f"{label} stderr", proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    if code is not None:
        assert proc.returncode == code, f"statekit {' '.join(args)}: exit {proc.returncode}: {proc.stderr}"
    return proc


def extract(archive: Path, identity: Path, dest: Path) -> Path:
    """age -d | zstd -d | tar -x, with the standard tools, as a person would without statekit."""
    dest.mkdir(parents=True)
    head = archive.read_bytes()[:32]
    dec = age_decrypt(archive, identity) if head.startswith(AGE_MAGIC) else archive.read_bytes()
    plain = zstd_decompress(dec)
    tar = dest / "a.tar"
    tar.write_bytes(plain)
    tar_extract(tar, dest)
    tar.unlink()
    return dest


# -- servers with passwords -------------------------------------------------------------------------------------


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture
def secret_db(pg_url: str, pg_url2: str) -> Iterator[tuple[str, str]]:
    """(source, target) URLs that log in as a role with a known password; the role is dropped afterwards."""
    with _pg(pg_url) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{DB_PASSWORD}'")
    try:
        for url in (pg_url, pg_url2):
            with _pg(url) as conn:
                conn.execute(f"ALTER SCHEMA public OWNER TO {ROLE}")
                conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" OWNER TO {ROLE}')
        with _pg(pg_url) as conn:
            conn.execute('CREATE TABLE "Session" ("sessionId" text PRIMARY KEY, creds text NOT NULL)')
            for i in range(1, 4):
                creds = json.dumps(json.dumps({"noiseKey": f"{KEY_MATERIAL}-{i}", "registrationId": i}))
                conn.execute('INSERT INTO "Session" VALUES (%s, %s)', (f"inst{i}", creds))
            conn.execute(f'ALTER TABLE "Session" OWNER TO {ROLE}')
        yield (
            pg_url.replace("postgres@", f"{ROLE}:{DB_PASSWORD}@"),
            pg_url2.replace("postgres@", f"{ROLE}:{DB_PASSWORD}@"),
        )
    finally:
        for url in (pg_url, pg_url2):
            with _pg(url) as conn:
                conn.execute(f"REASSIGN OWNED BY {ROLE} TO postgres")
                conn.execute(f"DROP OWNED BY {ROLE}")
        with _pg(pg_url) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture
def secret_redis() -> Iterator[tuple[str, str]]:
    """(source, target) Redis servers of our own with `requirepass`."""
    servers = [RedisProcess(extra=["--requirepass", REDIS_PASSWORD]).start() for _ in range(2)]
    try:
        urls = [f"redis://:{REDIS_PASSWORD}@127.0.0.1:{s.port}/0" for s in servers]
        import redis

        client = redis.Redis.from_url(urls[0])
        for i in range(1, 4):
            client.hset(f"sk:instance:inst{i}", mapping={
                "creds": json.dumps(json.dumps({"noiseKey": f"{KEY_MATERIAL}-{i}", "registrationId": i}))})  # fmt: skip
        client.hset("sk:instance:inst2", "creds", json.dumps(json.dumps({"noiseKey": f"{KEY_MATERIAL}-changed"})))
        client.close()
        yield urls[0], urls[1]
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    ident = generate_identity()
    path = tmp_path / "keys" / "id.txt"
    path.parent.mkdir()
    path.write_text(ident.to_string() + "\n")
    path.chmod(0o600)
    return path, ident.recipient().to_string()


@pytest.fixture
def key_root(tmp_path: Path) -> Path:
    root = tmp_path / "instances"
    for i in range(1, 4):
        (root / f"inst{i}").mkdir(parents=True)
        creds = root / f"inst{i}" / "creds.json"
        creds.write_text(json.dumps({"noiseKey": f"{KEY_MATERIAL}-{i}", "registrationId": i}))
        creds.chmod(0o600)
    return root


ENTITY_CONFIG = """\
[entity.creds]
authority = "db"
patterns = { id = "[^:/]+" }
db = { table = "Session", key = "sessionId", value = "creds", codec = "json-string" }
redis = { key = "sk:instance:{id}", field = "creds", codec = "json-string" }
files = { path = "{id}/creds.json", codec = "json" }
"""


def test_no_secret_leaks_through_any_command(
    tmp_path: Path, keys: tuple[Path, str], secret_db: tuple[str, str], secret_redis: tuple[str, str], key_root: Path
) -> None:
    identity, recipient = keys
    db_url, db_url2 = secret_db
    redis_url, redis_url2 = secret_redis
    identity_secret = identity.read_text().strip()
    log = Transcript()
    repo = tmp_path / "repo"
    repo.mkdir()
    metrics = tmp_path / "metrics.prom"
    config = tmp_path / "statekit.toml"
    config.write_text(ENTITY_CONFIG)
    cfg = ["--config", str(config)]
    sources = ["--db-url", db_url, "--redis-url", redis_url, "--files-root", str(key_root)]

    # Snapshots: with a recipient (JSON logs, JSON result, metrics) and with a passphrase from the environment.
    snap = run_cli(log, "snapshot", *cfg, *sources, "--to", str(repo), "-r", recipient, "--name", "x", "--json",
                   "--log-format", "json", "-v", "--metrics-file", str(metrics))  # fmt: skip
    archive = Path(json.loads(snap.stdout)["path"])
    run_cli(log, "snapshot", *cfg, *sources, "--to", str(repo), "-r", recipient, "--name", "y", "-v")
    pp_archive = tmp_path / "pp.statekit"
    run_cli(log, "snapshot", *cfg, *sources, "--to", str(pp_archive), "--log-format", "json",
            env={"STATEKIT_PASSPHRASE": PASSPHRASE})  # fmt: skip
    log.add("metrics file", metrics.read_text())
    for sidecar in repo.glob("*.meta.json"):
        log.add(f"sidecar {sidecar.name}", sidecar.read_text())

    # Reading: inspect, verify, list, with an identity and with the passphrase (right and wrong).
    run_cli(log, "inspect", str(archive), "-i", str(identity), "--json")
    run_cli(log, "inspect", str(archive), "-i", str(identity), "--members", "-v")
    run_cli(log, "verify", str(archive), "-i", str(identity), "--log-format", "json", "-v")
    run_cli(log, "verify", str(pp_archive), env={"STATEKIT_PASSPHRASE": PASSPHRASE})
    run_cli(log, "verify", str(pp_archive), env={"STATEKIT_PASSPHRASE": PASSPHRASE + "-wrong"}, code=4)
    run_cli(log, "list", str(repo), "--json")

    # Restores: plans and real runs into the second database, the second Redis and a fresh directory.
    undo = tmp_path / "undo"
    undo.mkdir()
    restored = tmp_path / "restored"
    for tier, target in (("db", ["--target-url", db_url2]), ("redis", ["--target-url", redis_url2]),
                         ("files", ["--target", str(restored)])):  # fmt: skip
        run_cli(log, "restore", str(archive), "--tier", tier, *target, "-i", str(identity), "--dry-run", "--json")
        run_cli(log, "restore", str(archive), "--tier", tier, *target, "-i", str(identity), "--yes", "--undo-dir",
                str(undo), "--json", "--log-format", "json")  # fmt: skip
    undo_archives = sorted(undo.glob("*.statekit"))
    assert undo_archives, "restores wrote no undo archive"

    # Audit: the tiers disagree about inst2's creds; the finding must name the place, not print key material.
    for extra in ([], ["--json"], ["--jsonl"], ["--log-format", "json", "-v"]):
        found = run_cli(log, "audit", *cfg, *sources, *extra, code=None)
        assert found.returncode == 1 and "inst2" in found.stdout, f"the audit missed the planted drift: {found}"
    run_cli(log, "audit", *cfg, "--against", str(archive), "-i", str(identity), *sources, "--json", code=None)

    # Failures must not echo passwords either (the redacted URL names the server).
    wrong_redis = redis_url.replace(REDIS_PASSWORD, REDIS_PASSWORD + "-WRONG")
    bad = run_cli(log, "snapshot", "--redis-url", wrong_redis, "--to", str(tmp_path), "-r", recipient, code=None)
    assert bad.returncode in (5, 6), bad.stderr
    closed = make_url(db_url).set(port=free_port()).render_as_string(hide_password=False)
    bad = run_cli(log, "snapshot", "--db-url", closed, "--to", str(tmp_path), "-r", recipient, "--json", code=5)
    assert "127.0.0.1" in bad.stderr

    # What the archives say about themselves, read with the standard tools.
    for i, path in enumerate([archive, *undo_archives]):
        out = extract(path, identity, tmp_path / f"x{i}")
        for member in ("snapshot.json", "MANIFEST.json", "format.json", "README.txt"):
            log.add(f"{path.name}:{member}", (out / member).read_text())
    # `age` reads passphrases from a terminal only: open the passphrase archive with the library instead.
    pp_index = Archive(pp_archive, [ScryptIdentity(PASSPHRASE.encode())]).index()
    log.add("pp snapshot.json", json.dumps(pp_index.snapshot))
    log.add("pp MANIFEST.json", json.dumps(pp_index.manifest))

    leaks = log.leaks({"db password": DB_PASSWORD, "redis password": REDIS_PASSWORD, "passphrase": PASSPHRASE,
                       "key material": KEY_MATERIAL, "identity": identity_secret})  # fmt: skip
    assert leaks == [], f"secrets leaked: {leaks}"
    # The redacted forms are there: statekit does say which server it talked to.
    snapshot_json = json.loads((tmp_path / "x0" / "snapshot.json").read_text())
    assert "***" in json.dumps(snapshot_json) or ROLE in json.dumps(snapshot_json)

    # Files on disk: archives (also undo archives) and restored key files are 0600.
    for path in [*repo.glob("*.statekit"), pp_archive, *undo_archives]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} is {oct(path.stat().st_mode)}"
        assert path.read_bytes()[:22] == AGE_MAGIC, f"{path.name} is not encrypted"
    for path in restored.rglob("*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"restored {path} is {oct(path.stat().st_mode)}"


def test_passphrase_is_never_taken_from_argv(tmp_path: Path) -> None:
    log = Transcript()
    listing = run_cli(log, "--help").stdout.split("Commands:", 1)[1].split("EXIT STATUS", 1)[0]
    commands = re.findall(r"^  (\w+) ", listing, re.M)
    assert {"snapshot", "restore", "verify"} <= set(commands)
    for command in commands:
        help_text = run_cli(log, command, "--help").stdout
        for option in re.findall(r"--[\w-]*pass[\w-]*", help_text):
            assert option in ("--passphrase-file", "--ask-passphrase"), f"statekit {command} has {option}"
    proc = run_cli(log, "snapshot", "--passphrase", PASSPHRASE, "--to", str(tmp_path), code=2)
    assert PASSPHRASE not in proc.stderr


def test_loose_identity_file_draws_a_warning(tmp_path: Path, keys: tuple[Path, str], key_root: Path) -> None:
    identity, recipient = keys
    log = Transcript()
    archive = tmp_path / "a.statekit"
    run_cli(log, "snapshot", "--files-root", str(key_root), "--to", str(archive), "-r", recipient)
    identity.chmod(0o644)
    proc = run_cli(log, "verify", str(archive), "-i", str(identity))
    assert "chmod 600" in proc.stderr and str(identity) in proc.stderr
    identity.chmod(0o600)
    proc = run_cli(log, "verify", str(archive), "-i", str(identity))
    assert "chmod" not in proc.stderr


def test_encryption_is_never_skipped_silently(tmp_path: Path, keys: tuple[Path, str], key_root: Path) -> None:
    recipient = keys[1]
    log = Transcript()
    base = ["snapshot", "--files-root", str(key_root)]
    refused = run_cli(log, *base, "--to", str(tmp_path / "none.statekit"), code=8)
    assert "unencrypted" in refused.stderr
    assert not (tmp_path / "none.statekit").exists()
    config = tmp_path / "c.toml"
    config.write_text(f'[archive]\nrecipients = ["{recipient}"]\n')
    run_cli(log, *base, "--config", str(config), "--to", str(tmp_path / "cfg.statekit"))
    run_cli(log, *base, "--to", str(tmp_path / "env.statekit"), env={"STATEKIT_RECIPIENTS": recipient})
    run_cli(log, *base, "--to", str(tmp_path / "pp.statekit"), env={"STATEKIT_PASSPHRASE": PASSPHRASE})
    for name in ("cfg", "env", "pp"):
        assert (tmp_path / f"{name}.statekit").read_bytes()[:22] == AGE_MAGIC, name
    run_cli(log, *base, "--to", str(tmp_path / "plain.statekit"), "--no-encryption")
    assert (tmp_path / "plain.statekit").read_bytes()[:4] == ZSTD_MAGIC
    # An unencrypted archive says so where a person looks.
    proc = run_cli(log, "inspect", str(tmp_path / "plain.statekit"))
    assert "none" in proc.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0?password=PW", "redis://127.0.0.1:6379/0?password=***"),
        ("postgresql://h/db?sslmode=require&password=PW", "postgresql://h/db?sslmode=require&password=***"),
        ("rediss://u:PW@h/0?ssl_password=PW&ssl_ca_certs=/ca.pem", "rediss://u:***@h/0?ssl_password=***&ssl_ca_certs=/ca.pem"),
        ("redis://h/0", "redis://h/0"),
    ],
)  # fmt: skip
def test_passwords_in_a_url_query_are_redacted_too(url: str, shown: str) -> None:
    from statekit.config import redact_url

    assert redact_url(url) == shown


def test_redis_password_given_in_the_url_query_never_shows(tmp_path: Path) -> None:
    srv = RedisProcess(extra=["--requirepass", REDIS_PASSWORD]).start()
    try:
        log = Transcript()
        url = f"redis://127.0.0.1:{srv.port}/0?password={REDIS_PASSWORD}"
        env = {"STATEKIT_REDIS_URL": url}
        run_cli(log, "snapshot", "--tier", "redis", "--to", str(tmp_path / "a.statekit"), "--no-encryption", env=env)
        run_cli(log, "snapshot", "--tier", "redis", "--to", str(tmp_path / "b.statekit"), "--no-encryption",
                "--json", env=env)  # fmt: skip
        run_cli(log, "inspect", str(tmp_path / "a.statekit"), "--json")
        snap = Archive(tmp_path / "a.statekit").snapshot
        log.add("snapshot.json", json.dumps(snap))
        assert log.leaks({"redis password": REDIS_PASSWORD}) == []
        assert f"127.0.0.1:{srv.port}/0?password=***" in json.dumps(snap)
    finally:
        srv.stop()
