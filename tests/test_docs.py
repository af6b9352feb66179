"""The commands in README.md and docs/*.md run as written, against the test servers.

Markers in the Markdown (the info string after the opening fence):

- ```` ```sh runnable ```` — a shell block the test runs with `bash -euo pipefail`, in order, in one temp
  folder per document (later blocks see what earlier ones made). `statekit` is on PATH, as after `pip install`.
- ```` ```toml file=PATH ```` — a configuration the following blocks use: the test writes it to PATH after
  putting in the test servers' URLs (for `url = …` lines) and the recipient of the identity made so far (for
  `age1…`). So the configuration shown must be valid, and the commands must work with it.
- ```` ```cron ```` — a crontab: `NAME=value` lines are its environment, every other line a job whose command
  runs through `/bin/sh` with cron's environment (HOME, SHELL, `PATH=/usr/bin:/bin`), not the test's.

A run cannot touch the machine: absolute paths under /etc, /var, /evolution and /root are moved into the
temp folder, `/usr/local/bin/statekit` is the statekit under test, and `s3://BUCKET/…` goes to a bucket of
a SeaweedFS server of the test's own (the AWS variables shown get its credentials). Every other ```sh block
must be listed in NOT_RUN with the reason it cannot run here, so a new command cannot slip in untested.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.servers import S3_ACCESS_KEY as ACCESS_KEY
from tests.servers import S3_BUCKET as BUCKET
from tests.servers import S3_SECRET_KEY as SECRET_KEY

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
STATEKIT = str(BIN / "statekit")

# Shell blocks that are not run, each with the reason: only what needs a network install or another system.
NOT_RUN = {
    "make demo": "`make install` plus scripts/demo.py, which test_demo_script runs; `make test` is this suite",
    "pip install .": "installs into the current environment; the suite runs in what `make install` made",
    "make install": "the test suite itself runs inside what this made",
    "age -d -i identity.txt": "reading by hand: tests/test_standard_tools.py runs the same pipeline",
    "node_exporter": "another program's command line",
    "systemctl": "needs systemd",
    "kubectl": "needs a Kubernetes cluster",
    "docker compose": "needs the Evolution API images",
    "statekit reconcile --profile evolution-api": "needs Evolution state in redis mode: "
    "test_reconcile_evolution.py::test_every_mode_change_migrates_without_a_new_qr_code runs them as printed",
    "cd /opt/evolution": "the host's crontab for docker compose: test_compose_service runs the service's command",
}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
_SYSTEM_PATH = re.compile(r"(?<![\w./~$-])/(etc|var|evolution)/")
_ROOT_HOME = re.compile(r"(?<![\w./~$-])/root/")


@dataclass
class Block:
    doc: Path
    info: str
    text: str
    line: int

    @property
    def kind(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def words(self) -> list[str]:
        return self.info.split()[1:]


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    return [
        Block(doc, m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in _FENCE.finditer(text)
    ]


def _cron_jobs(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [ln.split(None, 5)[5] for ln in lines if not re.match(r"[A-Z_][A-Z0-9_]*=", ln) and len(ln.split()) > 5]


def _is_runnable(b: Block) -> bool:
    if b.kind == "cron":
        return not any(job.startswith(tuple(NOT_RUN)) for job in _cron_jobs(b.text))
    return (b.kind == "sh" and "runnable" in b.words) or any(w.startswith("file=") for w in b.words)


@dataclass
class Session:
    """One document's run: a temp folder standing in for the machine, and the servers it talks to."""

    root: Path
    urls: dict[str, str]
    s3: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"docs-{uuid.uuid4().hex[:8]}")

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def localize(self, text: str) -> str:
        # the statekit under test goes in last: a clone under /root or /var must not be moved by the other rules
        text = text.replace("/usr/local/bin/statekit", "\0statekit\0")
        text = _ROOT_HOME.sub(f"{self.home}/", text)
        text = _SYSTEM_PATH.sub(lambda m: f"{self.root}/{m.group(1)}/", text)
        text = re.sub(r"s3://[a-z0-9.-]+/", f"s3://{BUCKET}/{self.prefix}/", text)
        return text.replace("\0statekit\0", STATEKIT)

    def recipient(self) -> str | None:
        for name in ("statekit-identity.txt", "identity.txt"):
            for folder in (self.home, self.work):
                path = folder / name
                if path.exists():
                    return next(w for w in path.read_text().split() if w.startswith("age1"))
        return None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEKIT_", "AWS_"))}
        env.update(HOME=str(self.home), PATH=f"{BIN}:/usr/bin:/bin", **self.s3)
        return env

    def write_config(self, block: Block) -> None:
        [target] = [w.removeprefix("file=") for w in block.words if w.startswith("file=")]
        text = self.localize(block.text)
        recipient = self.recipient()
        assert recipient, f"{block.doc.name}:{block.line}: a configuration before any identity was made"
        text = text.replace("age1…", recipient)
        for section, url in self.urls.items():
            text = re.sub(rf"(\[{section}\][^\[]*?\nurl\s*=\s*)\"[^\"]*\"", rf'\1"{url}"', text, flags=re.S)
        path = Path(os.path.expanduser(self.localize(target).replace("~", str(self.home), 1)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def run_sh(self, block: Block) -> None:
        script = self.localize(block.text)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.work, env=self.env(),
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        where = f"{block.doc.name}:{block.line}"
        assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{script}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stdout + proc.stderr, where

    def run_cron(self, block: Block, times: int = 1) -> None:
        env = {"HOME": str(self.home), "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin", "LOGNAME": "root"}
        jobs: list[str] = []
        for line in self.localize(block.text).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, eq, value = line.partition("=")
            if eq and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                env[name] = self.s3.get(name, value)
                continue
            fields = line.split(None, 5)
            assert len(fields) == 6, f"{block.doc.name}:{block.line}: not a crontab line: {line}"
            jobs.append(fields[5])
        if any("s3://" in job for job in jobs):
            env.update(self.s3)  # the endpoint of the test's own S3 server (AWS needs none)
        for _ in range(times):
            for job in jobs:
                proc = subprocess.run(["/bin/sh", "-c", job], env=env, cwd=self.home, capture_output=True, text=True,
                                      timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
                assert proc.returncode == 0, f"{block.doc.name}:{block.line}: {job}\n{proc.stdout}\n{proc.stderr}"
                assert proc.stdout == "" and proc.stderr == "", f"a quiet cron job mails nothing: {proc.stderr}"


def _seed(root: Path, pg_url: str, redis_url: str) -> None:
    """A little state in every tier: the docs' commands must have something to back up."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "Instance" (id text PRIMARY KEY, name text)')
        conn.exec_driver_sql("""INSERT INTO "Instance" VALUES ('a1', 'alpha'), ('b2', 'beta')""")
    engine.dispose()
    with redis.Redis.from_url(redis_url) as r:
        r.hset("evolution:instance:a1", mapping={"creds": json.dumps({"noiseKey": "k"})})
    for inst in ("a1", "b2"):
        folder = root / "evolution" / "instances" / inst
        folder.mkdir(parents=True)
        (folder / "creds.json").write_text(json.dumps({"me": inst}))


def _session(tmp_path: Path, pg_url: str, redis_url: str) -> Session:
    s = Session(tmp_path, {"db": pg_url, "redis": redis_url})
    s.home.mkdir()
    s.work.mkdir()
    _seed(tmp_path, pg_url, redis_url)
    return s


def test_every_shell_block_is_run_or_says_why_not() -> None:
    for doc in DOCS:
        for b in blocks(doc):
            if b.kind in ("sh", "bash", "shell", "console") and not _is_runnable(b):
                first = next((ln for ln in b.text.splitlines() if ln.strip() and not ln.startswith("#")), "")
                assert any(first.strip().startswith(k) for k in NOT_RUN), (
                    f"{doc.name}:{b.line}: a shell block that no test runs; mark it ```sh runnable or list "
                    f"why it cannot run in NOT_RUN: {first!r}"
                )


@pytest.mark.parametrize("doc", [d for d in DOCS if any(_is_runnable(b) for b in blocks(d))], ids=lambda d: d.name)
def test_runnable_blocks(
    doc: Path, tmp_path: Path, pg_url: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    session = _session(tmp_path, pg_url, redis_url)
    todo = [b for b in blocks(doc) if _is_runnable(b)]
    if any("s3://" in b.text for b in todo):
        endpoint = request.getfixturevalue("s3_server").url
        session.s3 = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                      "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}  # fmt: skip
    for b in todo:
        if any(w.startswith("file=") for w in b.words):
            session.write_config(b)
        elif b.kind == "cron":
            session.run_cron(b)
        else:
            session.run_sh(b)


def test_readme_cron_line_twice_on_a_new_path_leaves_two_archives(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """The first night creates the repository, the second adds to it; `list` shows both."""
    session = _session(tmp_path, pg_url, redis_url)
    readme = blocks(REPO / "README.md")
    [cron] = [b for b in readme if b.kind == "cron"]
    assert "/var/backups/statekit" in cron.text and not (tmp_path / "var").exists()
    subprocess.run([STATEKIT, "keygen", "-o", str(session.home / "statekit-identity.txt")], check=True,
                   capture_output=True)  # fmt: skip
    [config] = [b for b in readme if any(w.startswith("file=") for w in b.words)]
    session.write_config(config)
    session.run_cron(cron, times=2)
    repo = tmp_path / "var" / "backups" / "statekit"
    assert repo.is_dir() and oct(repo.stat().st_mode & 0o777) == "0o700"
    listed = subprocess.run([STATEKIT, "list", str(repo), "--json"], capture_output=True, text=True, check=True)
    archives = json.loads(listed.stdout)["archives"]
    assert len(archives) == 2, listed.stdout
    assert all(set(a["tiers"]) == {"db", "redis", "files"} for a in archives), archives


# -- the Kubernetes CronJob and the docker compose service of docs/OPERATIONS.md ------------------------------------


def _yaml_block(heading: str) -> str:
    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    section = text[text.index(heading) :]
    return next(b.text for b in blocks_of(section) if b.kind == "yaml")


def blocks_of(text: str) -> list[Block]:
    return [Block(REPO / "docs" / "OPERATIONS.md", m.group(1).strip(), m.group(2), 0) for m in _FENCE.finditer(text)]


def _statekit_part(shell: str) -> list[str]:
    """The statekit command of `pip install … && exec statekit …` (the install is what the image lacks)."""
    install, sep, rest = shell.partition("&&")
    assert sep and install.strip().startswith("pip install") and "statekit" in install, shell
    argv = shlex.split(rest.strip())
    assert argv[:2] == ["exec", "statekit"], argv
    return argv[2:]


def test_kubernetes_cronjob_runs_as_written(
    tmp_path: Path, pg_url: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    """The CronJob's command, environment and mounts, with its secret, Redis and volume pointed at the test's."""
    import yaml

    endpoint = request.getfixturevalue("s3_server").url

    job = yaml.safe_load(_yaml_block("## Kubernetes CronJob"))
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"].startswith("python:"), "a published Python image, no image of our own"
    session = _session(tmp_path, pg_url, redis_url)
    subprocess.run([STATEKIT, "keygen", "-o", str(session.work / "identity.txt")], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEKIT_", "AWS_"))}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"]).replace("age1…", session.recipient() or "")
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert item["name"] == "STATEKIT_DB_URL" and ref["name"], item  # the database secret
            env[item["name"]] = pg_url
    assert env["STATEKIT_REDIS_URL"].startswith("redis://")
    env["STATEKIT_REDIS_URL"] = redis_url
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    instances = mounts[env["STATEKIT_FILES_ROOT"]]
    volume = next(v for v in pod["volumes"] if v["name"] == instances["name"])
    assert instances.get("readOnly") and "persistentVolumeClaim" in volume, "the instances volume, read-only"
    env["STATEKIT_FILES_ROOT"] = str(tmp_path / "evolution" / "instances")
    assert [e["secretRef"]["name"] for e in container["envFrom"]]  # AWS keys from a secret
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_ENDPOINT_URL_S3=endpoint)
    assert container["command"] == ["sh", "-c"]
    argv = [session.localize(a) for a in _statekit_part(container["args"][0])]
    proc = subprocess.run([STATEKIT, *argv], env=env, capture_output=True, text=True, timeout=300, cwd=session.work)
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(line) for line in proc.stderr.splitlines()), "--log-format json: every stderr line JSON"
    repo = next(a for a in argv if a.startswith("s3://"))
    listed = subprocess.run([STATEKIT, "list", repo, "--json"], env=env, capture_output=True, text=True, check=True)
    [archive] = json.loads(listed.stdout)["archives"]
    assert archive["name"] == "evolution" and set(archive["tiers"]) == {"db", "redis", "files"}


def test_compose_service_runs_as_written(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """The service beside Evolution API's compose file: its environment (filled in from .env as compose does),
    its volumes and its command, with the service names pointed at the test servers."""
    import yaml
    from sqlalchemy.engine import make_url

    [service] = yaml.safe_load("services:\n" + _yaml_block("## docker compose"))["services"].values()
    assert service["image"].startswith("python:") and "evolution-net" in service["networks"]
    assert "evolution_instances:/evolution/instances:ro" in service["volumes"]
    assert {"redis", "evolution-postgres"} <= set(service["depends_on"])
    session = _session(tmp_path, pg_url, redis_url)
    subprocess.run([STATEKIT, "keygen", "-o", str(session.work / "identity.txt")], check=True, capture_output=True)
    pg, rd = make_url(pg_url), redis_url.removeprefix("redis://")
    dotenv = {"POSTGRES_USERNAME": pg.username or "", "POSTGRES_PASSWORD": pg.password or "",
              "POSTGRES_DATABASE": pg.database or ""}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEKIT_", "AWS_"))}
    for name, value in service["environment"].items():
        value = re.sub(r"\$\{(\w+)\}", lambda m: dotenv[m.group(1)], str(value))
        value = value.replace("evolution-postgres:5432", f"{pg.host}:{pg.port or 5432}")
        value = re.sub(r"evolution-redis:6379/\d+", rd, value)
        env[name] = value.replace("age1…", session.recipient() or "")
    env["STATEKIT_FILES_ROOT"] = str(tmp_path / "evolution" / "instances")
    entry = service["entrypoint"]
    assert entry[:2] == ["sh", "-c"] and entry[2].endswith('exec statekit "$$@"')
    _statekit_part(entry[2].replace('"$$@"', ""))  # the install, then statekit with the service's command
    backups = session.work / "backups"
    argv = [a.replace("/backups", str(backups)) for a in service["command"]]
    for _ in range(2):
        proc = subprocess.run([STATEKIT, *argv], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr
    assert len(list((backups / "statekit").glob("evolution-*.statekit"))) == 2


def test_demo_script(tmp_path: Path) -> None:
    """What `make demo` runs once the venv is there: the whole story on private servers, ending well."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_")} | {"TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_make_bench_empties_no_redis_it_was_not_given() -> None:
    """`make bench` (bench/run.py): the audit benchmark flushes the Redis database it is handed, so without a
    Redis URL set on purpose it gets none and starts a private redis-server; a URL given is passed on."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("statekit_bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    env = run.bench_env({"PATH": "/usr/bin"})
    assert "STATEKIT_BENCH_REDIS_URL" not in env and "STATEKIT_TEST_REDIS_URL" not in env
    assert env["STATEKIT_BENCH_PG_URL"].startswith("postgresql")
    env = run.bench_env({"STATEKIT_TEST_REDIS_URL": "redis://127.0.0.1:6390/3"})
    assert env["STATEKIT_BENCH_REDIS_URL"] == "redis://127.0.0.1:6390/3"
    env = run.bench_env({"STATEKIT_TEST_REDIS_URL": "redis://a:1/0", "STATEKIT_BENCH_REDIS_URL": "redis://b:2/5"})
    assert env["STATEKIT_BENCH_REDIS_URL"] == "redis://b:2/5"


def test_evolution_demo_without_a_redis_url_runs_on_its_own_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python fixtures/evolution/demo.py` empties the Redis database it runs on: without --redis-url it is a
    private redis-server, up while the story runs and stopped afterwards, never a server found on a port."""
    import redis

    from fixtures.evolution import demo as demo_module

    seen: list[str] = []
    up: list[bool] = []

    def story(workdir: Path, redis_url: str, **kw: object) -> bool:
        seen.append(redis_url)
        try:
            up.append(bool(redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()))
        except redis.exceptions.ConnectionError:
            up.append(False)
        return True

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_module, "demo", story)
    assert demo_module.main(["--workdir", str(tmp_path / "w")]) == 0
    assert len(seen) == 1 and up == [True]
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(seen[0], socket_connect_timeout=2).ping()
    assert demo_module.main(["--workdir", str(tmp_path / "w"), "--redis-url", "redis://127.0.0.1:1/9"]) == 0
    assert seen[1] == "redis://127.0.0.1:1/9" and up[1] is False  # used as given: nothing started for it
