"""The live files tier for the audit: one scandir walk that names every record (symlinks never followed),
then file contents per batch of scopes, read on a few threads."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import Any

from statekit.audit.entities import Entity, FilesLocator, Locator, Model
from statekit.audit.sources.records import Record, RecordKey, TierData, Unparseable, normalise, raw_vars
from statekit.audit.templates import transform_all
from statekit.errors import TierError, TierUnavailable
from statekit.fsio import open_for_reading


class FilesReader:
    """Reads the files locators of a model: one scandir walk (symlinks never followed) that names every
    record, then file contents per batch of scopes."""

    tier = FilesLocator.kind

    def __init__(self, root: str, model: Model, *, keys_only: bool = False, check_root: bool = True) -> None:
        if check_root and not os.path.isdir(root):
            raise TierUnavailable(f"files: root {root} is not a directory")
        self.root = os.path.abspath(root)
        self.model = model
        self.keys_only = keys_only
        self.files: list[tuple[Entity, Locator]] = []
        self.dirs: list[tuple[Entity, Locator]] = []
        for ent in model.entities.values():
            loc = ent.locators.get(self.tier)
            if loc is not None:
                (self.dirs if loc.is_directory else self.files).append((ent, loc))
        self.files.sort(key=lambda m: m[1].template.specificity if m[1].template else (0, 0))
        self.found: dict[str, list[tuple[str, RecordKey, str, dict[str, str] | None]]] = {}
        self.unparseable: list[Unparseable] = []
        self._pool: Any = None
        # `{id}/` folders whose files are named when their batch loads (the walk only lists the root).
        self._pending: set[str] = set()
        self._rules: tuple[dict[str, tuple[Entity, str]], list[tuple[str, Entity, str, str]]] = ({}, [])

    def _scoped_rules(self) -> tuple[Any, dict[str, tuple[Entity, str]], list[tuple[str, Entity, str, str]], bool]:
        """Fast path for templates `{id}/<name>` (the usual layout): the scope is the directory, the rest is
        matched on the file name alone: literal names by dict lookup, `{var}<suffix>` by a suffix test."""
        if not self.files:
            return None, {}, [], False
        scope_var = self.files[0][0].scope_var
        scope_re: Any = None
        literal: dict[str, tuple[Entity, str]] = {}
        suffixed: list[tuple[str, Entity, str, str]] = []
        for ent, loc in self.files:
            t = loc.template
            assert t is not None
            p = t.parts
            if not (len(p) >= 2 and p[0].var == ent.scope_var == scope_var and (p[1].literal or "").startswith("/")):
                return None, {}, [], False
            first = p[1].literal or ""
            if first != "/" and ("/" in first[1:] or (len(p) > 2 and p[2].var is not None)):
                return None, {}, [], False
            rest = p[1:]
            text = "".join(x.literal or "" for x in rest)
            if all(x.literal is not None for x in rest) and "/" not in text[1:]:
                literal.setdefault(text[1:], (ent, ""))
            elif (len(rest) == 3 and rest[0].literal == "/" and rest[1].var is not None
                  and rest[2].literal is not None and "/" not in rest[2].literal
                  and t._var_regex[rest[1].var].pattern == ".+"):  # fmt: skip
                suffixed.append((rest[2].literal, ent, rest[1].var, t.text))
            else:
                return None, {}, [], False
            pattern = t._var_regex.get(ent.scope_var)
            if scope_re is None and pattern is not None:
                scope_re = pattern.fullmatch
        return scope_re, literal, suffixed, True

    @classmethod
    def open(cls, root: str, model: Model, *, keys_only: bool = False) -> FilesReader:
        """A reader of the files under this root."""
        return cls(root, model, keys_only=keys_only)

    def notes(self, model: Model, entity_counts: Mapping[tuple[str, str], int]) -> list[str]:
        """Nothing to add to the audit's header."""
        return []

    def refresh(self, scopes: list[str]) -> None:
        """Re-walk before a re-check (the whole root: the templates need not say where a scope's files are)."""
        self.list_scopes()

    def list_scopes(self) -> set[str]:
        """Walk the root, naming every record; returns the scopes present. In the usual `{id}/<name>` layout
        only the root is listed here: each `{id}/` folder is listed when its batch loads, so that work is
        spread over the batches (and over the audit's worker processes)."""
        self.found = {}
        self.unparseable = []
        self._pending = set()
        scope_match, literal, suffixed, fast = self._scoped_rules()
        self._rules = (literal, suffixed)
        files = [(ent, ent.name, loc.template.regex.fullmatch) for ent, loc in self.files if loc.template]
        found = self.found
        for rel, is_dir in _walk(self.root, top_level_fast=fast):
            if fast and is_dir and "/" not in rel:
                self._generic(rel, True, files)
                if scope_match is not None and scope_match(rel):
                    found.setdefault(rel, [])
                    self._pending.add(rel)
                else:
                    for sub, sub_is_dir in _walk(self.root, start=rel):
                        self._generic(sub, sub_is_dir, files)
                continue
            self._generic(rel, is_dir, files)
        return set(found)

    def _generic(self, rel: str, is_dir: bool, files: list[tuple[Entity, str, Any]]) -> None:
        found = self.found
        if is_dir:
            for ent, loc in self.dirs:
                assert loc.template is not None
                values = loc.template.parse(rel + "/")
                if values is not None:
                    scope, _ = normalise(ent, values)
                    found.setdefault(scope, []).append((ent.name, (), rel + "/", None))
            return
        for ent, name, match in files:
            m = match(rel)
            if m is None:
                continue
            values = m.groupdict()
            scope, rest = normalise(ent, values)
            found.setdefault(scope, []).append((name, rest, rel, raw_vars(ent, values)))
            return
        self.unparseable.append(self._unparseable(rel))

    def _list_scope_dir(self, scope: str, unparseable: list[Unparseable]) -> None:
        """Name the files of one `{id}/` directory (subdirectories go through the generic path); a folder
        removed since the root was listed holds nothing."""
        literal, suffixed = self._rules
        out = self.found.setdefault(scope, [])
        prefix = scope + "/"
        try:
            dir_fd = open_for_reading(os.path.join(self.root, scope), os.O_DIRECTORY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TierError(f"files: cannot list {scope}: {exc.strerror}") from None
        try:
            with os.scandir(dir_fd) as it:
                entries = list(it)
        finally:
            os.close(dir_fd)
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
        if len(names) != len(entries):
            for e in entries:
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".statekit-"):
                    for rel, is_dir in _walk(self.root, start=prefix + e.name):
                        if not is_dir:
                            unparseable.append(self._unparseable(rel))
        if ".statekit-" in "\0".join(names):  # one scan of the directory's names for our own temporary files
            names = [n for n in names if not (n.startswith(".statekit-") or n.endswith(".statekit-tmp"))]
        rest = names
        if literal:
            present = set(names)
            hits = [n for n in literal if n in present]
            if hits:
                out.extend([(literal[n][0].name, (), prefix + n, None) for n in hits])
                rest = [n for n in names if n not in literal]
        for suffix, ent, var, _text in suffixed:
            if not rest:
                break
            norm = ent.normalizers.get(var)
            name = ent.name
            matched, raws = _strip_suffix(rest, suffix)
            idents = transform_all(norm, raws) if norm is not None else raws
            out.extend(
                [(name, (i,), prefix + n, None if i == r else {var: r}) for n, r, i in zip(matched, raws, idents)]
            )
            if len(matched) != len(rest):
                taken = set(matched)
                rest = [n for n in rest if n not in taken]
            else:
                rest = []
        for n in rest:
            unparseable.append(self._unparseable(prefix + n))

    def _unparseable(self, rel: str) -> Unparseable:
        parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for ent, loc in self.dirs:
            assert loc.template is not None
            values = loc.template.parse(parent) if parent else None
            if values is not None:
                return Unparseable(self.tier, ent.name, normalise(ent, values)[0], rel, "file name fits no template")
        name = self.files[0][0].name if self.files else (self.dirs[0][0].name if self.dirs else "")
        return Unparseable(self.tier, name, None, rel, "path fits no template")

    def load(self, scopes: Iterable[str]) -> TierData:
        """Read the files of these scopes (contents unless keys-only); reads run on a few threads, since
        open/read/close release the GIL and the syscalls, not Python, are the cost."""
        out = TierData(self.tier)
        presence = {ent.name for ent in self.model.entities.values() if ent.presence}
        records = out.records
        tier = self.tier
        wanted = [sc for sc in scopes if sc in self.found]
        for sc in wanted:
            if sc in self._pending:
                self._pending.discard(sc)
                self._list_scope_dir(sc, out.unparseable)
        contents: Iterable[list[bytes | None] | None]
        if self.keys_only:
            contents = repeat(None, len(wanted))
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="statekit-files")
            contents = self._pool.map(lambda sc: self._read_scope(sc, presence), wanted)
        for scope, data in zip(wanted, contents):
            pers: dict[str, dict[RecordKey, Record]] = {}
            for (name, rest, rel, rv), stored in zip(self.found[scope], repeat(None) if data is None else data):
                if stored is None and data is not None and name not in presence:
                    continue  # vanished since the walk
                per = pers.get(name)
                if per is None:
                    per = pers[name] = records.setdefault(name, {}).setdefault(scope, {})
                if rest not in per:
                    per[rest] = Record(stored, (tier, rel), None, False, rv)
        return out

    def _read_scope(self, scope: str, presence: set[str]) -> list[bytes | None]:
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return [None if name in presence else _read_at(root_fd, rel) for name, _, rel, _ in self.found[scope]]
        finally:
            os.close(root_fd)

    def after_fork(self) -> None:
        """In a forked audit worker: the parent's reading threads are not there."""
        self._pool = None

    def close(self) -> None:
        """Stop the reading threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _read_at(root_fd: int, rel: str) -> bytes | None:
    """A file's bytes relative to the root (never through a symlink at the last component), None if gone."""
    try:
        fd = open_for_reading(rel, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TierError(f"files: cannot read {rel}: {exc.strerror}") from None
    try:
        chunks = []
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
            if len(data) < 1 << 16:
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
    finally:
        os.close(fd)


def _strip_suffix(names: list[str], suffix: str) -> tuple[list[str], list[str]]:
    """The names that end with suffix (and are longer than it), and those names without it. File names hold
    no NUL, so when every name qualifies (the usual `*.json` folder) this is one join, one replace, one split."""
    if not names:
        return [], []
    joined = "\0".join(names) + "\0"
    end = suffix + "\0"
    if joined.count(end) == len(names) and ("\0" + end) not in ("\0" + joined):
        return names, joined.replace(end, "\0")[:-1].split("\0")
    cut = len(suffix)
    matched = [n for n in names if n.endswith(suffix) and len(n) > cut]
    return matched, [n[:-cut] for n in matched]


def read_file(root: str, rel: str) -> bytes | None:
    """A file's bytes (never through a symlink), or None when it is gone."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _read_at(fd, rel)
    finally:
        os.close(fd)


def _walk(root: str, *, top_level_fast: bool = False, start: str = "") -> Iterator[tuple[str, bool]]:
    """(relative path, is_dir) for every directory and regular file under root, symlinks not followed.
    With top_level_fast the caller lists the top-level directories itself (only they are yielded)."""
    stack = [start]
    while stack:
        rel_dir = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel_dir) if rel_dir else root)
        except OSError as exc:
            raise TierError(f"files: cannot list {rel_dir or root}: {exc.strerror}") from None
        prefix = rel_dir + "/" if rel_dir else ""
        with it:
            for entry in it:
                name = entry.name
                if name.startswith(".statekit-") or name.endswith(".statekit-tmp"):
                    continue  # our own staging and temporary files
                rel = prefix + name
                if entry.is_dir(follow_symlinks=False):
                    yield rel, True
                    if not (top_level_fast and not rel_dir):
                        stack.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    yield rel, False
