"""Every command statekit prints for the user to run next runs as printed: the repairs of `audit` (live, and
`--against ARCHIVE`), of `diff A B`, and the `statekit apply` that `reconcile --plan-out` prints. Each test
copies the printed command out of the output and runs it as a user would, in a terminal of its own (the
prompt answered "y"), from another directory, against real servers."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fixtures.evolution.generate import generate
from fixtures.evolution.harness import Outcome, invoke

PLACEHOLDERS = ("AUTHORITY", "ARCHIVE", " A ", "FILE", "AGE1")


def _recipient(tmp_path: Path) -> str:
    assert invoke("keygen", "-o", str(tmp_path / "id.txt")).code == 0
    text = (tmp_path / "id.txt").read_text()
    return next(ln.split(": ")[1] for ln in text.splitlines() if "public key" in ln)


def _conf(tmp_path: Path, body: str) -> Path:
    """A config file away from the working directory (so only --config finds it)."""
    conf = tmp_path / "conf" / "sk.toml"
    conf.parent.mkdir(exist_ok=True)
    conf.write_text(body)
    return conf


def _commands(out: str, prefix: str = "repair: ") -> list[str]:
    """The statekit commands printed after `prefix` (each from "statekit " to the end of its line)."""
    found = []
    for line in out.splitlines():
        _, sep, hint = line.partition(prefix)
        if sep and "statekit " in hint:
            found.append(hint[hint.index("statekit ") :])
    return list(dict.fromkeys(found))


def run_printed(command: str, cwd: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run a printed command line as typed into a terminal: a pty on stdin answers a prompt with "y"."""
    words = shlex.split(command)
    assert words[0] == "statekit", command
    master, slave = pty.openpty()
    try:
        os.write(master, b"y\n")
        proc = subprocess.run([sys.executable, "-m", "statekit", *words[1:]], stdin=slave, capture_output=True,
                              cwd=cwd, env={**os.environ, **(env or {})}, timeout=300, check=False)  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    return Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def _no_placeholder(out: str) -> None:
    for line in out.splitlines():
        if "repair: " in line and "ARCHIVE --tier" not in line:  # the live audit cannot know the archive
            assert not any(p in line for p in PLACEHOLDERS), line


# -- the live audit --------------------------------------------------------------------------------------


def test_audit_repairs_carry_the_audit_command_line(
    pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model, mode, places and config the audit was given only on its command line are in each repair
    (a password left out and said so); run as printed, each repair succeeds and the audit ends clean."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode="cache", history="redis", instances=3, keys_per_instance=3,
                   inject={"stale_creds": 1, "orphan_hash": 1})  # fmt: skip
    conf = _conf(tmp_path, f'[archive]\nrecipients = ["{_recipient(tmp_path)}"]\n')
    url = make_url(pg_url)
    password = url.password or "not-checked-by-trust"
    secret_url = url.set(password=password).render_as_string(hide_password=False)
    monkeypatch.chdir(tmp_path / "conf")
    given = ["--config", "sk.toml", "--profile", "evolution-api", "--mode", "cache", "--db-url", secret_url,
             "--redis-url", redis_url, "--files-root", os.path.relpath(root)]  # fmt: skip
    # what a user would copy before this fix: the bare command fails for want of a model
    assert invoke("reconcile", "--from", "db", "--to", "redis", "--entity", "creds").code == 2

    res = invoke("audit", *given, "--recheck-rounds", "0")
    assert res.code == 1, res.out + res.err
    assert password not in res.out + res.err
    assert "note: --db-url is printed without its password: set STATEKIT_DB_PASSWORD to run it" in res.out
    commands = _commands(res.out)
    assert len(commands) == 2, res.out  # the orphan hash and the stale creds
    for command in commands:
        for word in ("--profile evolution-api", "--mode cache", f"--redis-url {redis_url}", f"--files-root {root}",
                     f"--config {conf}", "--db-url " + url.set(password=None).render_as_string()):  # fmt: skip
            assert word in command, (word, command)
    _no_placeholder(res.out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"STATEKIT_DB_PASSWORD": password}
    [stale] = [c for c in commands if "--entity creds" in c]
    ran = run_printed(stale, elsewhere, env)
    assert ran.code == 0, (stale, ran.out, ran.err)
    assert "applied: +0 created  ~1 updated  -0 deleted" in ran.out, ran.out
    # Pruning the one orphan hash is measured against every instance hash the target holds (1 of 4), so the
    # printed command runs as it is, without --force.
    [orphan] = [c for c in commands if "--prune-orphans" in c]
    ran = run_printed(orphan, elsewhere, env)
    assert ran.code == 0, (orphan, ran.out, ran.err)
    assert "(25.0% of the existing redis instance records changed: 1 of 4)" in ran.out, ran.out
    assert "applied: +0 created  ~0 updated  -1 deleted" in ran.out, ran.out
    after = invoke("audit", *given, "--recheck-rounds", "0")
    assert after.code == 0, after.out + after.err
    assert gen.injected["stale_creds"][0] not in after.out

    # --json carries the same commands
    doc = invoke("audit", *given, "--recheck-rounds", "0", "--json")
    assert doc.code == 0 and doc.json()["findings"] == []


def test_repairs_from_a_configured_audit_stay_short(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """Everything in ./statekit.toml: the repair is the bare command, and it runs."""
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", history="redis", instances=3, keys_per_instance=2,
             inject={"stale_creds": 1})  # fmt: skip
    Path("statekit.toml").write_text(
        f'profile = "evolution-api"\n[profile_options]\nmode = "cache"\n[db]\nurl = "{pg_url}"\n'
        f'[redis]\nurl = "{redis_url}"\n[files]\nroot = "{root}"\n'
        f'[archive]\nrecipients = ["{_recipient(tmp_path)}"]\n'
    )
    res = invoke("audit", "--recheck-rounds", "0")
    assert _commands(res.out) == ["statekit reconcile --from db --to redis --entity creds"], res.out
    # one stale copy of three: within the default --max-change-ratio
    ran = run_printed(_commands(res.out)[0], tmp_path)
    assert ran.code == 0, ran.out + ran.err
    assert invoke("audit", "--recheck-rounds", "0").code == 0


def test_the_change_ratio_refusal_names_its_override(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """One instance: its one stale copy is 100 % of the target's records. Refused (exit 8), and the message
    says which flags let it through; the one it names works."""
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", instances=1, keys_per_instance=2, inject={"stale_creds": 1})
    Path("statekit.toml").write_text(
        f'profile = "evolution-api"\n[db]\nurl = "{pg_url}"\n[redis]\nurl = "{redis_url}"\n[files]\nroot = "{root}"\n'
    )
    args = ("reconcile", "--from", "db", "--to", "redis", "--entity", "creds", "--yes", "--no-encryption")
    res = invoke(*args)
    assert res.code == 8
    assert "100% of the redis creds records (1 of 1), over --max-change-ratio 0.5" in res.err
    assert "pass --force to override the limit (or --max-change-ratio 1)" in res.err
    assert invoke(*args, "--max-change-ratio", "1").code == 0


def test_the_right_direction_for_skipped_instances_runs_as_printed(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """reconcile in the direction that would write onto live copies lists the instances it skips with the
    right direction, which carries the command line's model and places."""
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="redis", history="cache", instances=3, keys_per_instance=2,
             inject={"stale_creds": 1})  # fmt: skip
    conf = _conf(tmp_path, f'[archive]\nrecipients = ["{_recipient(tmp_path)}"]\n')
    given = ["--config", str(conf), "--profile", "evolution-api", "--mode", "redis", "--db-url", pg_url,
             "--redis-url", redis_url, "--files-root", str(root)]  # fmt: skip
    res = invoke("reconcile", *given, "--from", "db", "--to", "redis", "--entity", "creds")
    assert res.code == 0, res.out + res.err
    [command] = _commands(res.out, "to repair the skipped ones: ")
    assert command.startswith(f"statekit reconcile --config {conf} --profile evolution-api --mode redis --db-url ")
    assert command.endswith("--from redis --to db --entity creds")
    # the same plan saved, then applied: apply's skipped instances name the right direction the same way
    saved = invoke("reconcile", *given, "--from", "db", "--to", "redis", "--entity", "creds", "--plan-out", "p.json")
    assert saved.code == 0, saved.out + saved.err
    applied = invoke("apply", "p.json", *given, "--yes", "--no-undo", "--json")
    assert applied.code == 0, applied.out + applied.err
    assert [x["command"] for x in json.loads(applied.out)["plan"]["skipped"]] == [command]
    ran = run_printed(command, tmp_path)
    assert ran.code == 0, ran.out + ran.err
    assert "applied: +0 created  ~1 updated  -0 deleted" in ran.out
    assert invoke("audit", *given, "--recheck-rounds", "0").code == 0


def test_printed_commands_are_built_from_words() -> None:
    """The printed commands are put together from the command line's options as shell words, not patched into
    a finished line: a path or a name with a space stays one word, a URL's password stays out, and without
    options the command is the bare one."""
    from statekit.audit.entities import build_model
    from statekit.audit.repairs import Given, repair_command

    given = Given(config_file="/etc/state kit/sk.toml", modes=("srv one=redis",),
                  db_url="postgresql://sk:s3cret@db.example/app", files_root="/srv/evo instances")  # fmt: skip
    carried = ["--config", "/etc/state kit/sk.toml", "--mode", "srv one=redis", "--db-url",
             "postgresql://sk@db.example/app", "--files-root", "/srv/evo instances"]  # fmt: skip
    line = given.reconcile("--from", "db", "--to", "redis", "--entity", "auth keys")
    assert shlex.split(line) == ["statekit", "reconcile", *carried, "--from", "db", "--to", "redis", "--entity",
                                 "auth keys"]  # fmt: skip
    assert "s3cret" not in line
    restore = ["statekit", "restore", "ARCHIVE", "--tier", "files"]
    assert shlex.split(given.restore("files")) == [*restore, "--config", "/etc/state kit/sk.toml", "--target",
                                                   "/srv/evo instances"]  # fmt: skip
    assert shlex.split(given.restore("db"))[-2:] == ["--target-url", "postgresql://sk@db.example/app"]
    assert Given().reconcile("--from", "db") == "statekit reconcile --from db"
    assert Given().restore("redis") == "statekit restore ARCHIVE --tier redis"

    model = build_model({"user": {"authority": "db",
                                    "db": {"table": "users", "key": "id", "value": "profile", "codec": "json"},
                                    "redis": {"key": "app:user:{id}", "codec": "json", "role": "cache"}}})  # fmt: skip
    ent = model.entities["user"]
    hint = repair_command("mismatch", ent, "redis", model, model, None, given)
    assert shlex.split(hint) == ["statekit", "reconcile", *carried, "--from", "db", "--to", "redis", "--entity", "user"]
    assert repair_command("orphan", ent, "redis", model, model, None, Given()) == (
        "statekit reconcile --from db --to redis --entity user --prune-orphans"
    )


# -- reconcile --plan-out, then apply --------------------------------------------------------------------


@pytest.mark.parametrize("override", ["--force", "--max-change-ratio"])
def test_the_printed_apply_command_applies_the_plan(override: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """A plan over the default change ratio, made with the model and places on the command line: the printed
    `statekit apply` names them, the undo key, --yes, and the override the plan needed (saying why)."""
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", instances=1, keys_per_instance=2, inject={"stale_creds": 1})
    recipient = _recipient(tmp_path)
    conf = _conf(tmp_path, "")
    given = ["--config", str(conf), "--profile", "evolution-api", "--mode", "cache", "--db-url", pg_url,
             "--redis-url", redis_url, "--files-root", str(root)]  # fmt: skip
    plan = ["reconcile", *given, "--from", "db", "--to", "redis", "--entity", "creds", "--plan-out", "p.json"]
    refused = invoke(*plan)
    assert refused.code == 8 and "--force" in refused.err and not Path("p.json").exists()
    extra = ["--force"] if override == "--force" else ["--max-change-ratio", "1"]
    made = invoke(*plan, *extra, "-r", recipient)
    assert made.code == 0, made.err
    [command] = _commands(made.out, "apply it with: ")
    assert command.startswith(f"statekit apply {tmp_path / 'p.json'} --config {conf} --profile evolution-api")
    assert command.endswith("--yes")
    assert f"-r {recipient}" in command
    if override == "--force":
        assert "over --max-change-ratio 0.5: --force overrides that limit" in made.out
        assert " --force " in command
    else:
        assert "--max-change-ratio 1 " in command and "--force" not in command
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = run_printed(command, elsewhere)
    assert ran.code == 0, ran.out + ran.err
    assert "applied: +0 created  ~1 updated  -0 deleted" in ran.out
    assert list(elsewhere.glob("undo-redis-*.statekit"))
    assert invoke("audit", *given, "--recheck-rounds", "0").code == 0


def test_a_malformed_plan_file_is_one_line_naming_it(tmp_path: Path) -> None:
    Path("statekit.toml").write_text('profile = "evolution-api"\n')
    schema = '"plan_schema": "statekit.reconcile-plan/v1"'
    cases = {
        "{}": "no plan_schema",
        "[]": "not a JSON object",
        "{": "not JSON",
        '{"plan_schema": "other/v9"}': "plan_schema is 'other/v9'",
        f'{{{schema}, "to": "redis"}}': '"from" is None, not a tier',
        f'{{{schema}, "from": "db", "to": "db"}}': "db -> db is not a direction reconcile rebuilds",
        f'{{{schema}, "from": "db", "to": "redis"}}': 'no "ops" list',
        f'{{{schema}, "from": "db", "to": "redis", "ops": [{{"op": "drop"}}]}}': "ops[0].op is 'drop'",
    }
    for text, problem in cases.items():
        Path("plan.json").write_text(text)
        res = invoke("apply", "plan.json", "--yes", "--no-encryption")
        assert res.code == 2, (text, res.err)
        assert res.err.startswith("Error: plan file plan.json is not a reconcile plan: "), res.err
        assert problem in res.err, (text, res.err)
        assert res.err.count("\n") == 1 and "None --to None" not in res.err


# -- two states: audit --against, diff -------------------------------------------------------------------


def _two_tier_damage(pg_url: str, redis_url: str, iid: str) -> None:
    """The instance's hash gone from Redis, its "Session" row's creds changed."""
    redis.Redis.from_url(redis_url).delete(f"evolution:instance:{iid}")
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text('UPDATE "Session" SET creds = \'"{}"\' WHERE "sessionId" = :i'), {"i": iid})
    engine.dispose()


@pytest.mark.parametrize("mode", ["cache", "files"])
def test_against_prints_the_restores_that_put_the_snapshot_back(
    mode: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode=mode, instances=3, keys_per_instance=3)
    recipient = _recipient(tmp_path)
    conf = _conf(tmp_path, f'profile = "evolution-api"\n[profile_options]\nmode = "{mode}"\n[archive]\n'
                           f'recipients = ["{recipient}"]\n[db]\nurl = "{pg_url}"\n[redis]\nurl = "{redis_url}"\n'
                           f'[files]\nroot = "{root}"\n')  # fmt: skip
    assert invoke("snapshot", "--config", str(conf), "--to", "a.statekit", "-q").code == 0
    iid = gen.ids[0]
    _two_tier_damage(pg_url, redis_url, iid)
    key_file = sorted((root / iid).glob("*.json"))[0] if mode == "files" else None
    if key_file is not None:
        key_file.unlink()
    res = invoke("audit", "--config", str(conf), "--against", "a.statekit", "-i", "id.txt")
    assert res.code == 1, res.out + res.err
    _no_placeholder(res.out)
    commands = _commands(res.out)
    assert commands, res.out
    archive, ident = tmp_path / "a.statekit", tmp_path / "id.txt"
    keys = f"--config {conf} -i {ident}"
    redis_restore = f"statekit restore {archive} --tier redis --match evolution:instance:{iid} {keys}"
    assert (redis_restore in commands) == (mode == "cache")  # files mode: Redis off, no instance hash
    assert f"statekit restore {archive} --tier db --tables Session --mode merge {keys}" in commands
    if key_file is not None:
        rel = key_file.relative_to(root)
        assert f"statekit restore {archive} --tier files --match {rel} {keys}" in commands
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in commands:
        ran = run_printed(command, elsewhere)
        assert ran.code == 0, (command, ran.out, ran.err)
    again = invoke("audit", "--config", str(conf), "--against", "a.statekit", "-i", "id.txt")
    assert again.code == 0, again.out + again.err
    assert key_file is None or key_file.exists()
    assert invoke("audit", "--config", str(conf), "--recheck-rounds", "0").code == 0


def test_an_orphan_against_a_snapshot_names_the_live_audit(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "instances"
    generate(pg_url, redis_url, root, mode="cache", instances=2, keys_per_instance=2)
    Path("statekit.toml").write_text(
        f'[db]\nurl = "{pg_url}"\n[redis]\nurl = "{redis_url}"\n[files]\nroot = "{root}"\n'
    )
    assert invoke("snapshot", "--to", "a.statekit", "--no-encryption", "-q").code == 0
    redis.Redis.from_url(redis_url).hset("evolution:instance:new-one", "creds", '"{}"')
    res = invoke("audit", "--profile", "evolution-api", "--against", "a.statekit", "--redis-url", redis_url)
    assert res.code == 1
    [command] = _commands(res.out)
    assert command == f"statekit audit --profile evolution-api --redis-url {redis_url}"
    ran = invoke(*shlex.split(command)[1:], "--recheck-rounds", "0")
    assert ran.code == 1 and "new-one" in ran.out  # the live audit finds the orphan and prints its repair
    assert "--prune-orphans" in ran.out


@pytest.mark.parametrize("model", [True, False])
def test_diff_prints_the_restore_of_a(model: bool, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """diff A B, with and without the entity model: what B lost or changed is put back from A by the printed
    commands (the live tiers then match A again)."""
    root = tmp_path / "instances"
    gen = generate(pg_url, redis_url, root, mode="cache", instances=3, keys_per_instance=3)
    Path("statekit.toml").write_text(
        f'[db]\nurl = "{pg_url}"\n[redis]\nurl = "{redis_url}"\n[files]\nroot = "{root}"\n'
    )
    assert invoke("snapshot", "--to", "a.statekit", "--no-encryption", "-q").code == 0
    _two_tier_damage(pg_url, redis_url, gen.ids[0])
    assert invoke("snapshot", "--to", "b.statekit", "--no-encryption", "-q").code == 0
    profile = ["--profile", "evolution-api"] if model else []
    res = invoke("diff", "a.statekit", "b.statekit", *profile)
    assert res.code == 1, res.out + res.err
    _no_placeholder(res.out)
    assert "to put A's copy back into the live redis tier: statekit restore " in res.out
    commands = _commands(res.out)
    assert {re.search(r"--tier (\w+)", c).group(1) for c in commands} == {"db", "redis"}  # type: ignore[union-attr]
    for command in commands:
        ran = run_printed(command, tmp_path)
        assert ran.code == 0, (command, ran.out, ran.err)
    assert invoke("snapshot", "--to", "c.statekit", "--no-encryption", "-q").code == 0
    same = invoke("diff", "a.statekit", "c.statekit", *profile)
    assert same.code == 0, same.out
