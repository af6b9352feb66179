"""Key and path templates such as `{prefix}:instance:{id}` or `{id}/{key|fixFileName}.json`.

A template renders a name from variable values and parses a name back into them. A variable followed by a
literal may not contain that literal's first character (so parsing is unambiguous); the last variable takes
the rest of the name. A variable may carry a name transform (`{key|fixFileName}`): the transform is applied
when rendering, and the parsed text is then the transformed form (the transform must be idempotent).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from statekit.errors import ConfigError

NameTransform = Callable[[str], str]


def decode_all(raw: list[bytes]) -> list[str]:
    """Names as text (undecodable bytes kept as surrogates), decoded in one pass: joined by NUL, decoded and
    split again, unless a name holds a NUL itself. A NUL is ASCII, so it never joins an invalid sequence and
    the result is the same as decoding each name."""
    joined = b"\0".join(raw)
    if raw and joined.count(b"\0") == len(raw) - 1:
        return joined.decode("utf-8", "surrogateescape").split("\0")
    return [f.decode("utf-8", "surrogateescape") for f in raw]


def transform_all(fn: NameTransform, names: list[str]) -> list[str]:
    """fn applied to every name. A transform may offer a whole-list form as its `many` attribute (one pass of
    C string code instead of a Python call per name)."""
    many = getattr(fn, "many", None)
    return many(names) if many is not None else list(map(fn, names))


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([A-Za-z_][A-Za-z0-9_]*))?\}")


@dataclass(frozen=True)
class _Part:
    literal: str | None = None
    var: str | None = None
    transform: str | None = None


@dataclass
class Template:
    """A compiled template. `vars` are the variable names in order of appearance."""

    text: str
    parts: list[_Part]
    vars: list[str]
    transforms: dict[str, str]
    regex: re.Pattern[str]
    _functions: Mapping[str, NameTransform] = field(repr=False)
    _var_regex: Mapping[str, re.Pattern[str]] = field(repr=False, default_factory=dict)

    @property
    def literal_chars(self) -> int:
        """How many literal characters the template has (more means more specific)."""
        return sum(len(p.literal or "") for p in self.parts)

    @property
    def specificity(self) -> tuple[int, int]:
        """Sort key: fewer variables, then more literal text, comes first when templates compete for a name."""
        return (len(self.vars), -self.literal_chars)

    def render(self, values: Mapping[str, str]) -> str:
        """The name for these values; ValueError when a value cannot be represented."""
        out: list[str] = []
        for part in self.parts:
            if part.literal is not None:
                out.append(part.literal)
                continue
            assert part.var is not None
            value = values[part.var]
            if part.transform:
                value = self._functions[part.transform](value)
            if not self._var_regex[part.var].fullmatch(value):
                raise ValueError(f"template {self.text}: {{{part.var}}} cannot be {value!r} (would not parse back)")
            out.append(value)
        return "".join(out)

    def parse(self, name: str) -> dict[str, str] | None:
        """The variable values a name was rendered from, or None when the name does not fit."""
        m = self.regex.fullmatch(name)
        if m is None:
            return None
        return m.groupdict()

    def glob(self) -> str:
        """A Redis MATCH pattern covering every name the template can render."""
        out = []
        for part in self.parts:
            if part.literal is not None:
                out.append(re.sub(r"([*?\[\]\\])", r"\\\1", part.literal))
            elif not out or out[-1] != "*":
                out.append("*")
        return "".join(out)

    def literal_prefix(self) -> str:
        """The literal text before the first variable."""
        return self.parts[0].literal or "" if self.parts else ""


def _stop_char(parts: list[_Part], i: int) -> str | None:
    nxt = parts[i + 1] if i + 1 < len(parts) else None
    if nxt is None or nxt.literal is None:
        return None
    return nxt.literal[0]


def compile_template(
    text: str,
    *,
    constants: Mapping[str, str] | None = None,
    functions: Mapping[str, NameTransform] | None = None,
    patterns: Mapping[str, str] | None = None,
) -> Template:
    """Compile a template; `constants` fill variables known up front (e.g. `prefix`), `patterns` narrow a
    variable to a regular expression. ConfigError on a malformed template."""
    constants = constants or {}
    functions = functions or {}
    patterns = patterns or {}
    parts: list[_Part] = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.start() > pos:
            parts.append(_Part(literal=text[pos : m.start()]))
        name, transform = m.group(1), m.group(2)
        if name in constants and transform is None:
            parts.append(_Part(literal=constants[name]))
        else:
            if transform is not None and transform not in functions:
                raise ConfigError(f"template {text!r}: unknown name transform {transform!r}")
            parts.append(_Part(var=name, transform=transform))
        pos = m.end()
    if pos < len(text):
        parts.append(_Part(literal=text[pos:]))
    leftover = "".join(p.literal or "" for p in parts)
    if "{" in leftover or "}" in leftover:
        raise ConfigError(f"template {text!r}: unbalanced braces or a bad variable name")
    merged: list[_Part] = []
    for p in parts:
        if p.literal is not None and merged and merged[-1].literal is not None:
            merged[-1] = _Part(literal=(merged[-1].literal or "") + p.literal)
        elif p.literal != "":
            merged.append(p)
    names: list[str] = []
    regex: list[str] = []
    var_regex: dict[str, re.Pattern[str]] = {}
    for i, p in enumerate(merged):
        if p.literal is not None:
            regex.append(re.escape(p.literal))
            continue
        assert p.var is not None
        if p.var in names:
            raise ConfigError(f"template {text!r}: variable {{{p.var}}} appears twice")
        if i > 0 and merged[i - 1].var is not None:
            raise ConfigError(f"template {text!r}: two variables need a literal between them")
        names.append(p.var)
        stop = _stop_char(merged, i)
        default = f"[^{re.escape(stop)}]+" if stop is not None else ".+"
        regex.append(f"(?P<{p.var}>{patterns.get(p.var, default)})")
    try:
        compiled = re.compile("".join(regex), re.DOTALL)
        for i, p in enumerate(merged):
            if p.var is not None:
                stop = _stop_char(merged, i)
                default = f"[^{re.escape(stop)}]+" if stop is not None else ".+"
                var_regex[p.var] = re.compile(patterns.get(p.var, default), re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"template {text!r}: bad variable pattern: {exc}") from None
    transforms = {p.var: p.transform for p in merged if p.var is not None and p.transform is not None}
    return Template(text, merged, names, transforms, compiled, functions, var_regex)
