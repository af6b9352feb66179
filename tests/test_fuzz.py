"""Property-based fuzzing of what statekit reads from outside: archives (mutations of a valid small archive) and
configuration (random TOML documents and environments). The only acceptable failures are StatekitError subclasses
(ConfigError for configuration); anything else, or a read that does not finish, is a bug. Bounded: about 30 s."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import signal
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.archive.keys import X25519Identity
from statekit.archive.reader import ArchiveReader
from statekit.archive.writer import ArchiveWriter
from statekit.config import _SECTIONS, apply_environment, config_from_mapping, load_config
from statekit.errors import ConfigError, StatekitError

# Fixed keys so hypothesis can replay a failing example exactly.
IDENTITY = X25519Identity(bytes(range(32)))
_SETTINGS = settings(
    max_examples=250,
    deadline=None,  # the per-example alarm below is the hang guard; CI machines vary too much for a deadline
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # no .hypothesis folder in the tree; failures print their reproducing example
)
_HANG_S = 5


class _Hang(Exception):
    pass


@contextmanager
def no_hang(seconds: int = _HANG_S) -> Iterator[None]:
    """Fail an example that runs longer than `seconds` (a reader that loops forever on hostile input)."""

    def alarm(signum: int, frame: object) -> None:
        raise _Hang(f"no result after {seconds}s: the reader hangs on this input")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _small_archive(encrypted: bool) -> bytes:
    out = io.BytesIO()
    writer = ArchiveWriter(out, recipients=[IDENTITY.recipient()] if encrypted else None, created_at=1.0,
                           snapshot_id="fuzz")  # fmt: skip
    writer.add("files/a/creds.json", b'{"key": "value"}' * 10, meta={"files": 1})
    writer.add("files/b.bin", bytes(range(256)) * 8, mode=0o640, meta={"files": 1})
    writer.add("db/public.t.schema.json", json.dumps({"columns": ["id"]}).encode())
    writer.add("redis/db0.records", b"\x00\x01" * 300, meta={"keys": 3})
    writer.finish({"kind": "snapshot", "tiers": [{"tier": "files"}]})
    return out.getvalue()


PLAIN = _small_archive(encrypted=False)
ENCRYPTED = _small_archive(encrypted=True)
TAR_STREAM = zstandard.ZstdDecompressor().decompressobj().decompress(PLAIN)


def read_everything(data: bytes) -> None:
    """What `statekit verify` does: open every layer, read every member, check the manifest at the end."""
    reader = ArchiveReader(io.BytesIO(data), [IDENTITY])
    for member in reader.members():
        while member.stream.read(4096):
            pass


def test_the_unmutated_archives_read() -> None:
    read_everything(PLAIN)
    read_everything(ENCRYPTED)
    with tarfile.open(fileobj=io.BytesIO(TAR_STREAM)) as tf:
        assert "MANIFEST.json" in tf.getnames()


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """A few random edits of `base`: flip, overwrite, insert, delete, truncate, duplicate a slice."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        if not data:
            data = bytearray(draw(st.binary(max_size=64)))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x30, 0x20, 0x0A, 0x2F, 0x2E]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=600))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 600))]
        elif kind == "truncate":
            del data[at:]
        else:
            n = draw(st.integers(1, 1024))
            data[at:at] = data[at : at + n]
    return bytes(data)


def _only_statekit_errors(data: bytes) -> None:
    with no_hang():
        try:
            read_everything(data)
        except StatekitError:
            pass


@_SETTINGS
@given(mutated(PLAIN))
def test_reader_on_mutated_unencrypted_archives(data: bytes) -> None:
    _only_statekit_errors(data)


@settings(_SETTINGS, max_examples=80)
@given(mutated(ENCRYPTED))
def test_reader_on_mutated_encrypted_archives(data: bytes) -> None:
    _only_statekit_errors(data)


@_SETTINGS
@given(mutated(TAR_STREAM))
def test_reader_on_mutated_tar_streams(tar_stream: bytes) -> None:
    """Edits inside the tar stream, recompressed so they get past the zstd checksums to the tar/manifest logic."""
    _only_statekit_errors(zstandard.ZstdCompressor(write_checksum=True).compress(tar_stream))


@settings(_SETTINGS, max_examples=100)
@given(st.binary(max_size=2048))
def test_reader_on_random_bytes(data: bytes) -> None:
    _only_statekit_errors(data)
    _only_statekit_errors(zstandard.ZstdCompressor().compress(data))


# -- configuration ----------------------------------------------------------------------------------------------

_KNOWN_KEYS = sorted({f"{s}.{f}" for s, cls in _SECTIONS.items() for f in cls.__dataclass_fields__})

_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
    st.times(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly the real sections and keys (so validation is reached), with wrong types, unknown keys and junk."""
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 9))
        if choice < 7:
            section, key = draw(st.sampled_from(_KNOWN_KEYS)).split(".")
            table = doc.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = draw(_values)
        elif choice == 7:
            doc[draw(st.sampled_from(["profile", "profile_options", "entity", *_SECTIONS]))] = draw(_values)
        else:
            doc[draw(st.text(min_size=1, max_size=10))] = draw(_values)
    return doc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string for what we generate
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(doc: dict[str, Any]) -> str:
    """Render a generated document as TOML text (inline tables; sections for the top-level tables)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines.extend(f"{json.dumps(sk)} = {_toml_value(sv)}" for sk, sv in v.items())
    return "\n".join(lines) + "\n"


@settings(_SETTINGS, max_examples=300)
@given(config_documents())
def test_config_from_mapping_gives_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    try:
        cfg = config_from_mapping(doc, "fuzz.toml")
    except ConfigError as exc:
        assert exc.exit_code == 2 and "fuzz.toml" in exc.message
        return
    assert type(cfg).__name__ == "Config"


@settings(_SETTINGS, max_examples=150)
@given(config_documents(), st.dictionaries(st.sampled_from(
    ["STATEKIT_DB_URL", "STATEKIT_DB_JOBS", "STATEKIT_REDIS_DBS", "STATEKIT_FILES_SKIP_UNREADABLE",
     "STATEKIT_REPOSITORY_LOCK_WAIT", "STATEKIT_ARCHIVE_RECIPIENTS", "STATEKIT_REPOSITORY_KEEP_DAILY",
     "STATEKIT_PROFILE"]), st.text(max_size=12), max_size=4))  # fmt: skip
def test_toml_text_and_environment(tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any],
                                   environ: dict[str, str]) -> None:  # fmt: skip
    """The whole loader: TOML text from a file (syntax errors included), then STATEKIT_* overrides."""
    path = tmp_path_factory.mktemp("cfg") / "statekit.toml"
    text = to_toml(doc)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        with no_hang():
            cfg = load_config(str(path), environ=environ)
    except ConfigError:
        return
    assert cfg.source == path
    apply_environment(cfg, {})  # idempotent on an empty environment


@settings(_SETTINGS, max_examples=150)
@given(st.text(max_size=300))
def test_random_text_as_config(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "statekit.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(str(path), environ={})
    except ConfigError:
        pass
