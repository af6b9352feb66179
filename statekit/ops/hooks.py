"""Pre- and post-hook commands: run through the shell, with a timeout, in their own process group.

A hook learns about the run from its environment (STATEKIT_HOOK, STATEKIT_RESULT, STATEKIT_ARCHIVE, …).
Its output is captured; the last lines of it are shown only when it fails, so a cron run stays quiet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from statekit.errors import HookFailed

DEFAULT_TIMEOUT_S = 300.0
_TAIL_BYTES = 2000


@dataclass
class HookResult:
    """How a hook ended."""

    which: str
    returncode: int
    duration_s: float
    output_tail: str


def _tail(data: bytes | None) -> str:
    text = (data or b"")[-_TAIL_BYTES:].decode("utf-8", "replace").strip()
    return " | ".join(line for line in text.splitlines()[-3:] if line.strip())


def run_hook(
    which: str, command: str, *, timeout: float = DEFAULT_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> HookResult:
    """Run `command` with /bin/sh; raise HookFailed if it exits non-zero, is killed or times out."""
    full_env = {**os.environ, "STATEKIT_HOOK": which, **(env or {})}
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # so a timeout can stop the whole pipeline, not just the shell
        )
    except OSError as exc:
        raise HookFailed(f"{which}-hook could not start: {exc.strerror}") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        raise HookFailed(f"{which}-hook timed out after {timeout:g}s and was stopped" + _suffix(_tail(out))) from None
    except BaseException:
        _kill_group(proc)
        raise
    result = HookResult(which, proc.returncode, time.monotonic() - started, _tail(out))
    if proc.returncode != 0:
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
        raise HookFailed(f"{which}-hook {how}" + _suffix(result.output_tail))
    return result


def _suffix(tail: str) -> str:
    return f": {tail}" if tail else ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
