"""What every command shares: the click group, common options, output in human or JSON form, progress on a
TTY, and the one place where a StatekitError becomes a one-line message and an exit code."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from statekit import __version__, textfmt
from statekit.config import Config, load_config
from statekit.errors import EXIT_CODES, StatekitError
from statekit.model import Progress, ProgressWithTotals, no_progress

JSON_SCHEMA = "statekit.cli/v1"
F = TypeVar("F", bound=Callable[..., Any])


def exit_status_epilog(extra: Iterable[tuple[int, str]] = ()) -> str:
    """The EXIT STATUS section every command's --help ends with."""
    rows = sorted({**dict(EXIT_CODES), **dict(extra)}.items())
    lines = ["\b", "EXIT STATUS"] + [f"  {code:<4} {text}" for code, text in rows]
    return "\n".join(lines)


@dataclass
class App:
    """Per-invocation state: output mode and the loaded configuration."""

    command: str = ""
    config_file: str | None = None
    json: bool = False
    jsonl: bool = False
    quiet: bool = False
    verbose: int = 0
    log_format: str = "text"
    warnings: list[str] = field(default_factory=list)
    _config: Config | None = None
    _live: _TtyProgress | None = None
    started: float = field(default_factory=time.time)

    def config(self) -> Config:
        """The configuration (file, then STATEKIT_* environment), loaded once."""
        if self._config is None:
            self._config = load_config(self.config_file)
        return self._config

    @property
    def interactive(self) -> bool:
        """Progress bars and prompts only when a person is watching (and stderr is not a JSON log)."""
        return not self.json and not self.quiet and self.log_format != "json" and _isatty(sys.stderr)

    def info(self, message: str) -> None:
        """A line for a person (suppressed by -q and --json)."""
        if not self.quiet and not self.json:
            click.echo(_shown_lines(message))

    def detail(self, message: str) -> None:
        """A line shown with -v only."""
        if self.verbose and not self.json:
            self.stderr(message)

    def stderr(self, message: str, level: str = "info") -> None:
        """A line for stderr: plain text, or a JSON log line with --log-format json."""
        if self.log_format == "json":
            _log_json(level, message)
        else:
            click.echo(_shown_lines(message), err=True)

    def warn(self, message: str) -> None:
        """A warning: on stderr (or as a JSON log line), and kept for the --json result."""
        self.warnings.append(message)
        if self.log_format == "json":
            _log_json("warning", message)
        elif not self.quiet:
            click.echo(f"warning: {_shown_lines(message)}", err=True)

    def result(self, doc: dict[str, Any], human: str | Iterable[str] | None) -> None:
        """Print the command's result: one JSON document with --json, else the human text."""
        self._end_progress()
        if self.json:
            out = {"schema": JSON_SCHEMA, "command": self.command, "ok": True, **doc}
            if self.warnings and "warnings" not in out:
                out["warnings"] = self.warnings
            click.echo(json.dumps(out, indent=2, default=str))
            return
        if human is None or self.quiet:
            return
        # Results quote names, keys and fields an archive or a tier holds: shown through textfmt.printable, each
        # item of a list of lines whole (a line break inside one is the archive's, not the command's).
        if isinstance(human, str):
            click.echo(_shown_lines(human))
        else:
            for line in human:
                click.echo(textfmt.printable(line))

    def progress(self) -> Progress:
        """A progress callback: a live line per tier on a TTY, nothing otherwise."""
        if not self.interactive:
            return no_progress
        self._live = _TtyProgress()
        return self._live

    def _end_progress(self) -> None:
        if self._live is not None:
            self._live.close()
            self._live = None


_RATE_AFTER = 0.2  # seconds into a tier before its rate is shown


class _TtyProgress(ProgressWithTotals):
    """One self-overwriting stderr line per tier: items (of the total when known), bytes, rate, ETA. Redraws
    are throttled, but a tier's line always ends on its final counts."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = 0.0
        self.tier = ""
        self.totals: dict[str, int] = {}
        self._latest: tuple[int, int] = (0, 0)
        self._stale = False

    def set_total(self, tier: str, total: int) -> None:
        self.totals[tier] = total

    def close(self) -> None:
        """End the live line so that what follows starts on a line of its own."""
        if self.tier:
            self._finish()
            self.tier = ""

    def _finish(self) -> None:
        if self._stale:
            self._draw(time.monotonic(), *self._latest)
        sys.stderr.write("\n")
        sys.stderr.flush()

    def __call__(self, tier: str, items: int, nbytes: int) -> None:
        now = time.monotonic()
        if tier != self.tier:
            if self.tier:
                self._finish()
            self.tier = tier
            self.start = now
            self.last = 0.0
        self._latest = (items, nbytes)
        if now - self.last < 0.1:
            self._stale = True
            return
        self._draw(now, items, nbytes)

    def _draw(self, now: float, items: int, nbytes: int) -> None:
        self.last = now
        self._stale = False
        elapsed = max(now - self.start, 1e-6)
        rate = items / elapsed if elapsed >= _RATE_AFTER else 0.0  # no rate from the first instants
        total = self.totals.get(self.tier)
        done = f"{textfmt.count(items):>10}" + (f"/{textfmt.count(total)}" if total else "")
        speed = f"{textfmt.count(rate):>9}/s" if rate else " " * 11
        line = f"  {self.tier:<6} {done} items  {human_bytes(nbytes):>9}  {speed}"
        if total and rate > 0 and items < total:
            line += f"  ETA {_eta((total - items) / rate)}"
        sys.stderr.write("\r" + line + "\033[K")
        sys.stderr.flush()


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def human_bytes(n: float) -> str:
    """Bytes in binary units (statekit.textfmt.size)."""
    return textfmt.size(n)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _log_json(level: str, message: str, **extra: Any) -> None:
    """One JSON object per stderr line: with --log-format json, nothing else is written to stderr."""
    sys.stderr.write(json.dumps({"ts": time.time(), "level": level, "message": message, **extra}) + "\n")
    sys.stderr.flush()


class _StderrLog(logging.Handler):
    """Library log records and Python warnings on stderr, in statekit's own form: JSON lines with --log-format
    json (then nothing else reaches stderr), else `warning: …` lines. In text mode a library's records (a
    driver noting that it ignored a second error while cleaning up after the first) show with -v only: the
    one `Error:` line already says what failed. -q leaves only errors."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.name == "py.warnings":  # "file:line: Category: text\n  source line" → the text only
                message = message.strip().splitlines()[0].split(": ", 2)[-1] if message.strip() else message
            if self.app.log_format == "json":
                line = json.dumps({"ts": record.created, "level": record.levelname.lower(), "message": message})
            elif self.app.quiet or (record.name != "py.warnings" and not self.app.verbose):
                return
            else:
                line = f"{record.levelname.lower()}: {message}"
            sys.stderr.write(line + "\n")  # the stream of the moment (click's test runner swaps it)
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _stderr_logging(app: App) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_StderrLog(app)]
    root.setLevel(logging.INFO if app.verbose else logging.WARNING)
    logging.captureWarnings(True)


def _json_log_requested(args: list[str]) -> bool:
    """--log-format json anywhere on the command line (so that even a usage error is a JSON line)."""
    for i, arg in enumerate(args):
        if arg == "--log-format=json" or (arg == "--log-format" and args[i + 1 : i + 2] == ["json"]):
            return True
    return False


def common_options(func: F) -> F:
    """--config, --json, -q, -v and --log-format on every command."""

    @click.option(
        "--config",
        "config_file",
        metavar="FILE",
        help="Config file (default: $STATEKIT_CONFIG, ./statekit.toml).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document (errors too).")
    @click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
    @click.option("-v", "--verbose", count=True, help="More detail on stderr.")
    @click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        help="Warnings and log lines as text (default) or JSON lines on stderr.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        config_file: str | None,
        as_json: bool,
        quiet: bool,
        verbose: int,
        log_format: str | None,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        app: App = ctx.ensure_object(App)
        app.command = ctx.info_name or ""
        app.config_file = config_file or app.config_file
        app.json = app.json or as_json
        app.quiet = app.quiet or quiet
        app.verbose = max(app.verbose, verbose)
        app.log_format = log_format or app.log_format
        _stderr_logging(app)
        return func(app, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# The module that defines each command. A command's module is imported only when that command runs (or for
# the command list), so `statekit audit` does not pay for the archive and repository code at start-up.
COMMAND_MODULES = {
    "apply": "audit_cmd",
    "audit": "audit_cmd",
    "diff": "audit_cmd",
    "doctor": "audit_cmd",
    "init": "keys_cmd",
    "inspect": "archive_cmd",
    "keygen": "keys_cmd",
    "list": "repo_cmd",
    "prune": "repo_cmd",
    "reconcile": "audit_cmd",
    "restore": "restore_cmd",
    "snapshot": "snapshot_cmd",
    "unlock": "repo_cmd",
    "verify": "archive_cmd",
}


class _OutputClosed(Exception):
    """The reader of stdout went away (`statekit … | head -1`): the command's output was cut, nothing failed."""


class _LazyGroup(click.Group):
    """The root group: commands are registered by their modules, imported on first use."""

    def invoke(self, ctx: click.Context) -> Any:
        # click turns any EPIPE into sys.exit(1), the drift code. Only a closed stdout is the reader's choice;
        # a broken pipe to a server that no tier translated is a bug, reported as one.
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if _stdout_closed():
                raise _OutputClosed() from None
            raise RuntimeError(f"broken pipe: {exc}") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(f"statekit.cli.{module}")
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=exit_status_epilog(),
)
@click.version_option(__version__, prog_name="statekit")
def cli() -> None:
    """statekit backs up, audits and repairs application state spread over a SQL database, Redis and key
    files: one encrypted archive for all three tiers, restores planned before they are applied, and an
    audit that says exactly where the tiers disagree."""


def confirm(app: App, question: str, yes: bool) -> bool:
    """True with --yes; on a TTY ask; without a TTY (cron) refuse. The question is shown as the App's lines are
    (it names archives and targets)."""
    if yes:
        return True
    if not _isatty(sys.stdin):
        return False
    return click.confirm(_shown_lines(question), default=False, err=True)


# click 8.2 renamed NoArgsIsHelp to NoArgsIsHelpError; accept either so the help text is not reported as an error.
_NO_ARGS_IS_HELP: type[Exception] = getattr(
    click.exceptions, "NoArgsIsHelpError", getattr(click.exceptions, "NoArgsIsHelp", click.exceptions.UsageError)
)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code; errors become one line on stderr (or JSON with --json)."""
    args = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in args
    json_log = _json_log_requested(args)
    try:
        rv = cli.main(args=args, prog_name="statekit", standalone_mode=False)
    except StatekitError as exc:
        return _report_error(exc.kind, exc.message, exc.exit_code, wants_json, json_log)
    except _NO_ARGS_IS_HELP as exc:
        ctx = getattr(exc, "ctx", None)
        click.echo(ctx.get_help() if ctx else str(exc))
        return 2
    except click.exceptions.UsageError as exc:
        return _report_error("usage", exc.format_message().replace("\n", " "), 2, wants_json, json_log)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return _report_error("interrupted", "interrupted", 130, wants_json, json_log)
    except click.ClickException as exc:
        return _report_error("usage", exc.format_message(), 2, wants_json, json_log)
    except KeyboardInterrupt:
        return _report_error("interrupted", "interrupted", 130, wants_json, json_log)
    except _OutputClosed:
        _discard_stdout()
        return 0
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("STATEKIT_DEBUG"):
            raise
        return _report_error(
            "internal",
            f"internal error: {type(exc).__name__}: {exc} (set STATEKIT_DEBUG=1 for a traceback)",
            19,
            wants_json,
            json_log,
        )
    # in non-standalone mode click returns ctx.exit(N)'s code instead of raising
    return rv if isinstance(rv, int) else 0


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (tests capture it): nothing will flush to a pipe


def _report_error(kind: str, message: str, code: int, wants_json: bool, json_log: bool = False) -> int:
    message = " ".join(message.split())
    if wants_json:
        doc = {"schema": JSON_SCHEMA, "ok": False, "error": {"kind": kind, "message": message, "exit_code": code}}
        click.echo(json.dumps(doc, indent=2))
    if json_log:
        _log_json("error", message, kind=kind, exit_code=code)
        return code
    if _isatty(sys.stderr):
        sys.stderr.write("\r\033[K")  # replace a live progress line, if one was being drawn
    click.echo(f"Error: {textfmt.printable(message)}", err=True)
    return code


def _shown_lines(message: str) -> str:
    # A message may quote what an archive holds: each of its lines is shown with control characters escaped
    # (textfmt.printable), the line breaks it was written with kept.
    return "\n".join(textfmt.printable(line) for line in message.split("\n"))


@contextmanager
def sigterm_raises(make: Callable[[], BaseException]) -> Iterator[None]:
    """While the block runs, SIGTERM (systemd stop, Kubernetes eviction) raises `make()` in the main thread, so
    the command unwinds as it does on Ctrl-C: locks released, temporary files removed, exit 130."""

    def handler(signum: int, frame: object) -> None:
        raise make()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
